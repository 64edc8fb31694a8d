from __future__ import annotations

import ipaddress

import pytest

from kwp.config import (
    DEFAULT_BODY_LIMIT,
    Channel,
    ConfigError,
    Forward,
    Server,
    load_config,
    parse_config,
    redacted,
    unsafe_settings,
)


def errors_of(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "c.yml")
    return info.value.errors


def channel(**keys):
    return {"name": "ch", "api-read-token": "tok", **keys}


def test_minimal_channel_defaults():
    config = parse_config({"channels": [channel()]})
    ch = config.channel("ch")
    assert ch.token == "tok" and ch.secrets == () and ch.secret_type == "plain"
    assert config.body_limit(ch) == DEFAULT_BODY_LIMIT
    assert config.server.admin_token is None and config.server.metrics is False
    assert config.channel("other") is None


def test_unset_keys_take_the_dataclass_defaults():
    config = parse_config({"channels": [channel(forward={"url": "http://x"})]})
    assert config.server == Server()
    assert config.channel("ch") == Channel("ch", "tok", forward=Forward("http://x"))


def test_rust_project_channel_loads_unchanged(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(
        """
channels:
  - name: github
    token: ghi789
    webhook-secret: mysecret
    secret-header: X-Hub-Signature-256
    max-body-size: 524288
    note: "GitHub"
  - name: telegram
    api-read-token: abc
    webhook-secret: tg
    secret-header: X-Telegram-Bot-Api-Secret-Token
    secret-type: plain
    monitoring-metrics: false
  - name: signed
    api-read-token: def
    webhook-secret: s
    secret-header: X-Hub-Signature-256
    secret-type: hmac-sha256
    secret-extract-template: '{{ raw | replace(from="sha256=", to="") }}'
    secret-sign-template: "sha256={{ signature }}"
"""
    )
    config = load_config(str(path))
    gh = config.channel("github")
    assert (gh.token, gh.secrets, gh.secret_header, gh.max_body_size, gh.note) == (
        "ghi789", ("mysecret",), "X-Hub-Signature-256", 524288, "GitHub")
    assert config.channel("telegram").monitoring_metrics is False
    signed = config.channel("signed")
    assert signed.extract_template.render(raw="sha256=ab") == "ab"
    assert signed.sign_template.render(signature="ff") == "sha256=ff"


def test_derived_values_leave_equality_alone():
    data = {"channels": [channel(provider="github", **{"webhook-secret": "s", "secret-header": "X-Sig"})]}
    used, fresh = parse_config(data), parse_config(data)
    assert used.largest_body_limit == DEFAULT_BODY_LIMIT
    assert used == fresh and hash(used.channel("ch")) == hash(fresh.channel("ch"))


def test_secret_list_and_networks():
    config = parse_config(
        {
            "server": {"trusted-proxies": ["127.0.0.1", "10.0.0.0/8"], "ignored-headers": ["X-Trace"]},
            "channels": [channel(**{"webhook-secret": ["a", "b"], "secret-header": "X-S",
                                    "allowed-ips": ["192.0.2.0/24", "2001:db8::1"]})],
        }
    )
    assert config.channel("ch").secrets == ("a", "b")
    assert ipaddress.ip_address("192.0.2.9") in config.channel("ch").allowed_ips[0]
    assert config.server.ignored_headers == {"x-trace"}


def test_unknown_keys_suggest_the_closest():
    errors = errors_of({"servr": {}, "channels": [channel(**{"webhook-secrt": "x"})]})
    assert "c.yml: key 'servr': unknown key (did you mean 'server'?)" in errors
    assert any("channels[0] (ch): key 'webhook-secrt'" in e and "did you mean 'webhook-secret'" in e
               for e in errors)


def test_every_error_is_reported_with_its_place():
    errors = errors_of(
        {
            "server": {"default-body-limit": 0, "admin-token": "tok"},
            "channels": [
                {"name": "bad/name", "api-read-token": "x"},
                {"api-read-token": "y"},
                channel(**{"max-body-size": 200 * 1024 * 1024}),
                channel(**{"allowed-ips": ["300.1.1.1/8"]}),
                channel(name="c2", **{"secret-type": "md5"}),
            ],
        }
    )
    text = "\n".join(errors)
    assert "server: key 'default-body-limit': must be between 1 and 104857600, got 0" in text
    assert "channels[0] (bad/name): key 'name'" in text
    assert "channels[1]: key 'name': is required" in text
    assert "key 'max-body-size'" in text
    assert "'300.1.1.1/8' is not an IP address or CIDR range" in text
    assert "key 'secret-type': must be one of plain, hmac-sha256" in text
    assert "duplicate channel name" in text
    assert "the same token is used by channel 'ch'" in text
    assert "the same token is used as server.admin-token" in text


def test_verification_settings_that_would_check_less_than_they_seem():
    assert any("'secret-header'" in e for e in errors_of({"channels": [channel(**{"webhook-secret": "s"})]}))
    assert any("'webhook-secret'" in e for e in errors_of({"channels": [channel(**{"secret-header": "X"})]}))
    assert any("is required with provider 'stripe'" in e
               for e in errors_of({"channels": [channel(provider="stripe")]}))
    assert any("'verify-token'" in e
               for e in errors_of({"channels": [channel(provider="meta", **{"webhook-secret": "s"})]}))
    assert any("decided by provider" in e for e in errors_of(
        {"channels": [channel(provider="github", **{"webhook-secret": "s", "secret-type": "hmac-sha256"})]}))
    assert any("only used with secret-type 'hmac-sha256'" in e for e in errors_of(
        {"channels": [channel(**{"webhook-secret": "s", "secret-header": "X",
                                 "secret-extract-template": "{{ raw }}"})]}))


@pytest.mark.parametrize(
    "keys",
    [{"provider": "telegram"}, {"secret-header": "X-Telegram-Bot-Api-Secret-Token"}],
    ids=["provider", "secret-header"],
)
def test_a_telegram_secret_has_only_the_characters_telegram_allows(keys):
    for good in ("a", "A-z_09", "x" * 256):
        parse_config({"channels": [channel(**keys, **{"webhook-secret": good})]})
    for bad, which in (("has space", "the secret"), ("x" * 257, "the secret"), (["ok", "p\u00e4ss"], "secret 2"),
                       ("semi;colon", "the secret")):
        errors = errors_of({"channels": [channel(**keys, **{"webhook-secret": bad})]})
        assert errors == [f"c.yml: channels[0] (ch): key 'webhook-secret': {which} is not a Telegram secret token: "
                          "1 to 256 of A-Z a-z 0-9 _ -"]
    # Another plain header takes any secret.
    parse_config({"channels": [channel(**{"secret-header": "X-Token", "webhook-secret": "has space"})]})


def test_bad_templates_are_config_errors():
    base = {"webhook-secret": "s", "secret-header": "X", "secret-type": "hmac-sha256"}
    errors = errors_of({"channels": [channel(**base, **{"secret-extract-template": "{{ raw | explode }}"})]})
    assert any("invalid template" in e for e in errors)
    errors = errors_of({"channels": [channel(**base, **{"secret-sign-template": "{{ raw }}"})]})
    assert any("unknown variable 'raw'" in e for e in errors)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(str(tmp_path / "missing.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("channels: [\n  - name: x\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_config(str(bad))
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(str(empty))


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, "a: " + "{x: " * 3000 + "1" + "}" * 3000])
def test_deeply_nested_yaml_is_a_config_error(tmp_path, text):
    deep = tmp_path / "deep.yml"
    deep.write_text(text)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(str(deep))


def test_redaction_hides_every_secret():
    config = parse_config(
        {
            "server": {"admin-token": "ADMIN", "metrics-token": "METRICS"},
            "channels": [
                channel(**{"api-read-token": "RT1", "webhook-secret": ["S1", "S2"], "secret-header": "X-S"}),
                {"name": "m", "token": "T2", "provider": "meta", "webhook-secret": "S3", "verify-token": "V"},
            ],
        }
    )
    text = repr(redacted(config))
    for secret in ("ADMIN", "METRICS", "RT1", "S1", "S2", "T2", "S3", "'V'"):
        assert secret not in text
    assert redacted(config)["channels"][0]["secret-header"] == "X-S"


CONSUMERS = [
    {"name": "ci", "token": "ci-token", "filter": "headers.\"x-github-event\" == 'push'"},
    {"name": "chat", "forward": {"url": "http://chat.internal/hook"}, "max-queue": 10},
    {"name": "audit"},
]


def test_consumers_of_a_channel():
    config = parse_config({"channels": [channel(consumers=CONSUMERS, **{"max-queue": 5})]})
    ch = config.channel("ch")
    assert ch.named_consumers and [c.name for c in ch.consumers] == ["ci", "chat", "audit"]
    ci, chat, audit = ch.consumers
    assert ci.token == "ci-token" and ci.forward is None and ci.filter.source == CONSUMERS[0]["filter"]
    assert chat.forward == Forward(url="http://chat.internal/hook") and chat.max_queue == 10
    assert audit.max_queue == 5 and audit.filter is None and audit.token is None
    assert ch.consumer("chat") is chat and ch.consumer("default") is None


def test_a_channel_without_consumers_has_one_implicit_default():
    config = parse_config({"channels": [channel(forward={"url": "http://x"}, **{"max-queue": 7})]})
    ch = config.channel("ch")
    assert not ch.named_consumers
    [default] = ch.consumers
    assert (default.name, default.forward, default.max_queue, default.token) == ("default", ch.forward, 7, None)


def test_consumer_errors_name_channel_and_consumer():
    errors = errors_of(
        {
            "server": {"admin-token": "admin"},
            "channels": [
                channel(
                    forward={"url": "http://x"},
                    consumers=[
                        {"name": "ci", "filter": "body.action == "},
                        {"name": "ci", "token": "tok"},
                        {"name": "bad name", "token": "admin"},
                        {"name": "both", "token": "t2", "forward": {"url": "http://y"}},
                        {"name": "x", "colour": "red"},
                    ],
                ),
                channel(name="two", **{"api-read-token": "t2"}, consumers=[]),
            ],
        }
    )
    text = "\n".join(errors)
    assert "channels[0] (ch): key 'forward': a channel with consumers forwards through them" in text
    assert "channels[0] (ch): consumers[0] (ci): key 'filter': invalid JMESPath expression" in text
    assert "consumers[1] (ci): key 'name': duplicate consumer name" in text
    assert "consumer 'ci': key 'token': the same token is used by channel 'ch'" in text
    assert "consumers[2] (bad name): key 'name'" in text
    assert "consumer 'bad name': key 'token': the same token is used as server.admin-token" in text
    assert "consumers[3] (both): key 'token': a push consumer (forward) is not pulled" in text
    assert "consumers[4] (x): key 'colour': unknown key" in text
    assert "channel 'two': key 'api-read-token': the same token is used by consumer 'both' of channel 'ch'" in text
    assert "channels[1] (two): key 'consumers': must be a non-empty list" in text


def test_retention_keys():
    config = parse_config(
        {
            "server": {"retention-hours": 1.5, "history-max": 10},
            "channels": [channel(**{"retention-hours": 0}), channel(name="b", **{"api-read-token": "b"})],
        }
    )
    assert (config.server.retention_hours, config.server.history_max) == (1.5, 10)
    assert config.channel("ch").retention_hours == 0 and config.channel("b").retention_hours is None
    assert parse_config({"channels": [channel()]}).server.retention_hours == 72
    assert any("must be a number of hours" in e for e in errors_of({"channels": [channel(**{"retention-hours": -1})]}))


def test_metrics_token_and_long_poll_cap():
    assert (Server().metrics_token, Server().max_waiters_per_token) == (None, 100)
    server = parse_config(
        {"server": {"metrics-token": "m", "max-waiters-per-token": 5}, "channels": [channel()]}
    ).server
    assert (server.metrics_token, server.max_waiters_per_token) == ("m", 5)
    errors = errors_of(
        {"server": {"admin-token": "a", "metrics-token": "a", "max-waiters-per-token": 0}, "channels": [channel()]}
    )
    assert "c.yml: server: key 'max-waiters-per-token': must be at least 1, got 0" in errors
    assert "c.yml: server: key 'metrics-token': the same token is used as admin-token" in errors
    errors = errors_of({"server": {"metrics-token": "tok"}, "channels": [channel()]})
    assert "c.yml: channel 'ch': key 'api-read-token': the same token is used as server.metrics-token" in errors


def test_unsafe_settings_name_every_placeholder_and_every_unverified_channel():
    config = parse_config({
        "server": {"admin-token": "real-admin"},
        "channels": [
            {"name": "m", "token": "Change-Me-1", "provider": "meta", "webhook-secret": ["ok", "x-change-me"],
             "verify-token": "change-me", "forward": {"url": "http://t/", "sign-header": "X-S",
                                                      "sign-secret": "change-me-sign"}},
            {"name": "office", "token": "t2", "allowed-ips": ["10.0.0.0/8"]},
            {"name": "safe", "token": "t3", "webhook-secret": "s", "secret-header": "X-S"},
        ],
    }, "c.yml")
    suffix = "is still a 'change-me' placeholder: set a secret of your own"
    assert unsafe_settings(config) == [
        f"c.yml: channel 'm': key 'api-read-token' {suffix}",
        f"c.yml: channel 'm': key 'webhook-secret' {suffix}",
        f"c.yml: channel 'm': key 'verify-token' {suffix}",
        f"c.yml: channel 'm': forward: key 'sign-secret' {suffix}",
        "c.yml: channel 'office': no webhook-secret, nothing is verified: any client in its allowed-ips can post to it",
    ]


def test_lease_seconds():
    assert parse_config({"channels": [channel()]}).server.lease_seconds == 10
    assert parse_config({"server": {"lease-seconds": 3}, "channels": [channel()]}).server.lease_seconds == 3.0
    assert any("must be at least 1" in e for e in errors_of({"server": {"lease-seconds": 0.5}, "channels": [channel()]}))


def test_a_standard_webhooks_secret_must_be_base64():
    ok = {"name": "sw", "token": "t", "provider": "standard-webhooks", "webhook-secret": ["whsec_c2VjcmV0", "c2VjcmV0"]}
    assert parse_config({"channels": [ok]}).channel("sw").secrets == ("whsec_c2VjcmV0", "c2VjcmV0")
    bad = {**ok, "webhook-secret": ["whsec_c2VjcmV0", "not base64!"]}
    assert errors_of({"channels": [bad]}) == [
        "c.yml: channels[0] (sw): key 'webhook-secret': secret 2 is not a Standard Webhooks secret: 'whsec_' and base64"
    ]
