"""Tests for kwp.verify: client IPs, plain tokens, signatures, providers, signing.

Signed requests come from the providers' own reference code where it exists
(stripe, slack_sdk, standardwebhooks, svix) and from published test vectors.
"""

import base64
import hashlib
import hmac
import ipaddress
import json
import time
from datetime import datetime, timezone

import pytest
import slack_sdk.signature
import standardwebhooks
import stripe
import svix.webhooks
from hypothesis import given, settings, strategies as st

from kwp.config import Channel
from kwp.templates import compile_template
from kwp.verify import (
    PRESETS,
    REFUSED,
    NotSigned,
    Scheme,
    client_ip,
    delivery_id,
    ip_allowed,
    meta_handshake,
    plain_ok,
    scheme_for,
    sign,
    sign_forward,
    signature_ok,
    slack_url_verification,
)

NOW = 1_700_000_000.0
BODY = b'{"id": "evt_1", "hello": "world"}'


def channel(**kwargs) -> Channel:
    return Channel(name="c", token="read-token", **kwargs)


def nets(*cidrs: str):
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def hex_hmac(secret: str | bytes, message: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def test_pure_module_without_twisted() -> None:
    import subprocess
    import sys

    code = "import sys, kwp.verify; assert not any(m.startswith(('twisted', 'klein')) for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- client_ip ---------------------------------------------------------------

PROXIES = nets("10.0.0.0/8", "2001:db8:ffff::/48")


def test_untrusted_peer_ignores_forwarding_headers() -> None:
    headers = {"x-forwarded-for": "140.82.112.1", "x-real-ip": "140.82.112.2"}
    assert client_ip("203.0.113.9", headers, PROXIES) == "203.0.113.9"
    assert client_ip("203.0.113.9", headers, ()) == "203.0.113.9"


def test_trusted_peer_uses_forwarded_for() -> None:
    assert client_ip("10.0.0.1", {"x-forwarded-for": "198.51.100.7"}, PROXIES) == "198.51.100.7"


def test_chain_of_trusted_proxies() -> None:
    headers = {"x-forwarded-for": "198.51.100.7, 10.0.0.2,10.0.0.3"}
    assert client_ip("10.0.0.4", headers, PROXIES) == "198.51.100.7"


def test_client_prepended_entries_are_ignored() -> None:
    headers = {"x-forwarded-for": "140.82.112.1, 10.9.9.9, 198.51.100.7, 10.0.0.3"}
    assert client_ip("10.0.0.4", headers, PROXIES) == "198.51.100.7"


@pytest.mark.parametrize(
    "forwarded, expected",
    [
        ("198.51.100.7, garbage", "10.0.0.4"),
        ("198.51.100.7, unknown, 10.0.0.3", "10.0.0.3"),
        ("198.51.100.7,", "10.0.0.4"),
        ("198.51.100.7, , 10.0.0.3", "10.0.0.3"),
        ("", "10.0.0.4"),
        ("198.51.100.7:notaport", "10.0.0.4"),
        ("[2001:db8::1", "10.0.0.4"),
        ("example.com", "10.0.0.4"),
        ("garbage, 198.51.100.7", "198.51.100.7"),
    ],
)
def test_malformed_forwarded_for_stops_at_the_last_trusted_hop(forwarded: str, expected: str) -> None:
    headers = {"x-forwarded-for": forwarded, "x-real-ip": "140.82.112.1"}
    assert client_ip("10.0.0.4", headers, PROXIES) == expected


def test_malformed_entry_never_grants_access() -> None:
    allowed = nets("140.82.112.0/20")
    for forwarded in ("140.82.112.1 garbage", "140.82.112.1, junk", "junk"):
        headers = {"x-forwarded-for": forwarded, "x-real-ip": "140.82.112.1"}
        assert not ip_allowed(client_ip("10.0.0.4", headers, PROXIES), allowed)


def test_all_trusted_falls_back_to_real_ip_then_left_most_hop() -> None:
    forwarded = {"x-forwarded-for": "10.0.0.2, 10.0.0.3"}
    assert client_ip("10.0.0.4", forwarded, PROXIES) == "10.0.0.2"
    assert client_ip("10.0.0.4", {**forwarded, "x-real-ip": "198.51.100.7"}, PROXIES) == "198.51.100.7"


def test_real_ip_without_forwarded_for() -> None:
    assert client_ip("10.0.0.4", {"x-real-ip": "198.51.100.7"}, PROXIES) == "198.51.100.7"
    assert client_ip("10.0.0.4", {"x-real-ip": "nonsense"}, PROXIES) == "10.0.0.4"
    assert client_ip("10.0.0.4", {}, PROXIES) == "10.0.0.4"


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("198.51.100.7:5678", "198.51.100.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("  198.51.100.7  ", "198.51.100.7"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("[::ffff:198.51.100.7]:80", "198.51.100.7"),
    ],
)
def test_forwarded_entry_forms(entry: str, expected: str) -> None:
    assert client_ip("10.0.0.1", {"x-forwarded-for": entry}, PROXIES) == expected


def test_ipv6_and_mapped_peers() -> None:
    assert client_ip("2001:db8:ffff::1", {"x-forwarded-for": "2001:db8::7"}, PROXIES) == "2001:db8::7"
    assert client_ip("::ffff:10.0.0.4", {"x-forwarded-for": "198.51.100.7"}, PROXIES) == "198.51.100.7"
    assert client_ip("::ffff:203.0.113.9", {"x-forwarded-for": "198.51.100.7"}, PROXIES) == "203.0.113.9"


def test_peer_that_is_not_an_ip_is_returned_as_is_and_matches_nothing() -> None:
    assert client_ip("unix-socket", {"x-forwarded-for": "198.51.100.7"}, PROXIES) == "unix-socket"
    assert not ip_allowed("unix-socket", nets("0.0.0.0/0", "::/0"))


def test_ip_allowed() -> None:
    github = nets("140.82.112.0/20", "2a0a:a440::/29")
    assert ip_allowed("140.82.112.1", github)
    assert ip_allowed("::ffff:140.82.112.1", github)
    assert ip_allowed("2a0a:a440::1", github)
    assert not ip_allowed("140.82.128.1", github)
    assert not ip_allowed("2001:db8::1", github)
    assert not ip_allowed("140.82.112.1", ())
    assert not ip_allowed("", github)
    assert not ip_allowed("not an ip", github)
    assert ip_allowed("::ffff:1.2.3.4", nets("1.2.3.0/24"))


@settings(max_examples=300)
@given(peer=st.text(max_size=40), forwarded=st.text(max_size=80), real=st.text(max_size=40))
def test_client_ip_never_raises(peer: str, forwarded: str, real: str) -> None:
    result = client_ip(peer, {"x-forwarded-for": forwarded, "x-real-ip": real}, PROXIES)
    assert isinstance(result, str)
    ip_allowed(result, PROXIES)


@given(forwarded=st.lists(st.ip_addresses(), max_size=5).map(lambda ips: ", ".join(map(str, ips))))
def test_untrusted_peer_is_always_the_client(forwarded: str) -> None:
    assert client_ip("203.0.113.9", {"x-forwarded-for": forwarded}, PROXIES) == "203.0.113.9"


# --- scheme_for --------------------------------------------------------------


def test_scheme_without_verification() -> None:
    assert scheme_for(channel()) == Scheme("none")
    assert not scheme_for(channel()).plain and not scheme_for(channel()).signed


def test_scheme_plain_and_hmac() -> None:
    plain = scheme_for(channel(secrets=("s",), secret_header="X-Token"))
    assert (plain.kind, plain.header, plain.plain, plain.signed) == ("plain", "X-Token", True, False)
    signed = scheme_for(channel(secrets=("s",), secret_header="X-Sig", secret_type="hmac-sha256"))
    assert (signed.kind, signed.header, signed.plain, signed.signed) == ("hmac", "X-Sig", False, True)
    assert signed.delivery_header is None and signed.delivery_field is None


@pytest.mark.parametrize(
    "provider, header, delivery_header, delivery_field, tolerance",
    [
        ("github", "X-Hub-Signature-256", "X-GitHub-Delivery", None, None),
        ("gitlab", "X-Gitlab-Token", "X-Gitlab-Event-UUID", None, None),
        ("telegram", "X-Telegram-Bot-Api-Secret-Token", None, "update_id", None),
        ("stripe", "Stripe-Signature", None, "id", 300),
        ("slack", "X-Slack-Signature", None, "event_id", 300),
        ("shopify", "X-Shopify-Hmac-Sha256", "X-Shopify-Webhook-Id", None, None),
        ("standard-webhooks", "webhook-signature", "webhook-id", None, 300),
        ("meta", "X-Hub-Signature-256", None, None, None),
    ],
)
def test_provider_presets(provider, header, delivery_header, delivery_field, tolerance) -> None:
    scheme = scheme_for(channel(provider=provider, secrets=("s",)))
    assert scheme.kind == provider
    assert (scheme.header, scheme.delivery_header, scheme.delivery_field, scheme.tolerance) == (
        header,
        delivery_header,
        delivery_field,
        tolerance,
    )
    assert scheme.plain == (provider in ("gitlab", "telegram"))
    assert scheme.signed == (provider not in ("gitlab", "telegram"))


def test_every_config_provider_has_a_preset() -> None:
    from kwp.config import PROVIDERS

    assert set(PRESETS) == set(PROVIDERS)


def test_secret_header_overrides_the_preset_header() -> None:
    scheme = scheme_for(channel(provider="gitlab", secrets=("s",), secret_header="X-Renamed-Token"))
    assert (scheme.kind, scheme.header, scheme.delivery_header) == ("gitlab", "X-Renamed-Token", "X-Gitlab-Event-UUID")


def test_provider_wins_over_secret_type() -> None:
    scheme = scheme_for(channel(provider="github", secrets=("s",), secret_type="plain"))
    assert scheme.kind == "github"


def test_a_scheme_is_computed_once_per_combination_of_its_keys() -> None:
    # Asked for by every check of every request.
    renamed = dict(provider="gitlab", secret_header="X-Renamed-Token")
    assert scheme_for(channel(secrets=("a",), **renamed)) is scheme_for(channel(secrets=("b",), **renamed))
    hmac_keys = dict(secret_header="X-Sig", secret_type="hmac-sha256")
    assert scheme_for(channel(secrets=("a",), **hmac_keys)) is scheme_for(channel(secrets=("b",), **hmac_keys))


# --- plain_ok ----------------------------------------------------------------


def test_plain_nothing_to_check() -> None:
    assert plain_ok(channel(), {})
    assert plain_ok(channel(provider="gitlab"), {})
    assert plain_ok(channel(secrets=("s",), secret_header="X-Sig", secret_type="hmac-sha256"), {})
    assert plain_ok(channel(provider="github", secrets=("s",)), {})


def test_plain_token() -> None:
    c = channel(secrets=("right",), secret_header="X-Token")
    assert plain_ok(c, {"x-token": "right"})
    assert not plain_ok(c, {"x-token": "wrong"})
    assert not plain_ok(c, {"x-token": "right "})
    assert not plain_ok(c, {"x-token": ""})
    assert not plain_ok(c, {"x-token": "RIGHT"})
    assert not plain_ok(c, {})
    assert not plain_ok(c, {"x-other": "right"})


def test_plain_rotation_any_secret_verifies() -> None:
    c = channel(secrets=("new", "old"), secret_header="X-Token")
    assert plain_ok(c, {"x-token": "new"})
    assert plain_ok(c, {"x-token": "old"})
    assert not plain_ok(c, {"x-token": "older"})


def test_plain_providers() -> None:
    gitlab = channel(provider="gitlab", secrets=("glt",))
    assert plain_ok(gitlab, {"x-gitlab-token": "glt"})
    assert not plain_ok(gitlab, {"x-gitlab-token": "nope"})
    assert not plain_ok(gitlab, {})
    telegram = channel(provider="telegram", secrets=("tg-secret_1",))
    assert plain_ok(telegram, {"x-telegram-bot-api-secret-token": "tg-secret_1"})
    assert not plain_ok(telegram, {"x-telegram-bot-api-secret-token": "x"})
    renamed = channel(provider="gitlab", secrets=("glt",), secret_header="X-Renamed")
    assert plain_ok(renamed, {"x-renamed": "glt"})
    assert not plain_ok(renamed, {"x-gitlab-token": "glt"})
    assert signature_ok(gitlab, {}, BODY, NOW)
    assert signature_ok(telegram, {}, BODY, NOW)


@given(value=st.text(st.characters(blacklist_categories=())))
def test_plain_never_raises(value: str) -> None:
    c = channel(secrets=("right", "sécret"), secret_header="X-Token")
    assert plain_ok(c, {"x-token": value}) == (value in ("right", "sécret"))


# --- hmac-sha256 -------------------------------------------------------------

GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def hmac_channel(*secrets: str, **kwargs) -> Channel:
    return channel(secrets=secrets, secret_header="X-Signature", secret_type="hmac-sha256", **kwargs)


def test_hmac_bare_hex_matches_github_vector() -> None:
    c = hmac_channel(GITHUB_SECRET)
    assert signature_ok(c, {"x-signature": GITHUB_SIGNATURE}, GITHUB_BODY, NOW)
    assert signature_ok(c, {"x-signature": GITHUB_SIGNATURE.upper()}, GITHUB_BODY, NOW)
    assert not signature_ok(c, {"x-signature": GITHUB_SIGNATURE}, GITHUB_BODY + b" ", NOW)
    assert not signature_ok(c, {"x-signature": "sha256=" + GITHUB_SIGNATURE}, GITHUB_BODY, NOW)
    assert not signature_ok(c, {}, GITHUB_BODY, NOW)
    assert not signature_ok(c, {"x-signature": ""}, GITHUB_BODY, NOW)
    assert not signature_ok(hmac_channel("wrong"), {"x-signature": GITHUB_SIGNATURE}, GITHUB_BODY, NOW)


def test_hmac_extract_template() -> None:
    extract = compile_template('{{ raw | replace(from="sha256=", to="") }}')
    c = hmac_channel(GITHUB_SECRET, extract_template=extract)
    assert signature_ok(c, {"x-signature": "sha256=" + GITHUB_SIGNATURE}, GITHUB_BODY, NOW)
    assert signature_ok(c, {"x-signature": GITHUB_SIGNATURE}, GITHUB_BODY, NOW)
    assert not signature_ok(c, {"x-signature": "sha256=" + "0" * 64}, GITHUB_BODY, NOW)


def test_hmac_extract_template_that_fails_to_render_refuses() -> None:
    c = hmac_channel(GITHUB_SECRET, extract_template=compile_template('{{ raw | split(pat=",") }}'))
    assert not signature_ok(c, {"x-signature": GITHUB_SIGNATURE}, GITHUB_BODY, NOW)


def test_hmac_rotation() -> None:
    c = hmac_channel("new-secret", GITHUB_SECRET)
    assert signature_ok(c, {"x-signature": GITHUB_SIGNATURE}, GITHUB_BODY, NOW)
    assert signature_ok(c, {"x-signature": hex_hmac("new-secret", GITHUB_BODY)}, GITHUB_BODY, NOW)


def test_hmac_without_secret_refuses() -> None:
    c = channel(secret_header="X-Signature", secret_type="hmac-sha256")
    assert not signature_ok(c, {"x-signature": hex_hmac("", BODY)}, BODY, NOW)


def test_unsigned_channels_pass_signature_check() -> None:
    assert signature_ok(channel(), {}, BODY, NOW)
    assert signature_ok(channel(secrets=("s",), secret_header="X-Token"), {}, BODY, NOW)


# --- github / meta -----------------------------------------------------------


@pytest.mark.parametrize("provider", ["github", "meta"])
def test_sha256_prefixed_providers(provider: str) -> None:
    c = channel(provider=provider, secrets=(GITHUB_SECRET,))
    good = {"x-hub-signature-256": "sha256=" + GITHUB_SIGNATURE}
    assert signature_ok(c, good, GITHUB_BODY, NOW)
    assert signature_ok(c, {"x-hub-signature-256": "sha256=" + GITHUB_SIGNATURE.upper()}, GITHUB_BODY, NOW)
    assert not signature_ok(c, good, b"Hello, World?", NOW)
    assert not signature_ok(c, {"x-hub-signature-256": GITHUB_SIGNATURE}, GITHUB_BODY, NOW)
    assert not signature_ok(c, {"x-hub-signature-256": "sha1=" + GITHUB_SIGNATURE}, GITHUB_BODY, NOW)
    assert not signature_ok(c, {"x-hub-signature-256": "sha256=" + GITHUB_SIGNATURE[:-1]}, GITHUB_BODY, NOW)
    assert not signature_ok(c, {"x-hub-signature": "sha256=" + GITHUB_SIGNATURE}, GITHUB_BODY, NOW)
    assert not signature_ok(c, {}, GITHUB_BODY, NOW)
    assert not signature_ok(channel(provider=provider, secrets=("other",)), good, GITHUB_BODY, NOW)
    assert signature_ok(channel(provider=provider, secrets=("other", GITHUB_SECRET)), good, GITHUB_BODY, NOW)
    assert not signature_ok(channel(provider=provider), good, GITHUB_BODY, NOW)


def test_meta_app_secret() -> None:
    c = channel(provider="meta", secrets=("app-secret",), verify_token="vt")
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    headers = {"x-hub-signature-256": "sha256=" + hex_hmac("app-secret", body)}
    assert signature_ok(c, headers, body, NOW)


def test_provider_header_override_is_used_for_signatures() -> None:
    c = channel(provider="github", secrets=(GITHUB_SECRET,), secret_header="X-Forwarded-Signature")
    assert signature_ok(c, {"x-forwarded-signature": "sha256=" + GITHUB_SIGNATURE}, GITHUB_BODY, NOW)
    assert not signature_ok(c, {"x-hub-signature-256": "sha256=" + GITHUB_SIGNATURE}, GITHUB_BODY, NOW)


# --- shopify -----------------------------------------------------------------


def shopify_signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def test_shopify() -> None:
    c = channel(provider="shopify", secrets=("shpss_old", "shpss_new"))
    for secret in ("shpss_old", "shpss_new"):
        assert signature_ok(c, {"x-shopify-hmac-sha256": shopify_signature(secret, BODY)}, BODY, NOW)
    good = {"x-shopify-hmac-sha256": shopify_signature("shpss_old", BODY)}
    assert not signature_ok(c, good, BODY + b"\n", NOW)
    assert not signature_ok(c, {"x-shopify-hmac-sha256": shopify_signature("other", BODY)}, BODY, NOW)
    assert not signature_ok(c, {"x-shopify-hmac-sha256": hex_hmac("shpss_old", BODY)}, BODY, NOW)
    assert not signature_ok(c, {"x-shopify-hmac-sha256": ""}, BODY, NOW)
    assert not signature_ok(c, {}, BODY, NOW)


# --- stripe ------------------------------------------------------------------

STRIPE_SECRET = "whsec_test_secret"


def stripe_header(secret: str, body: bytes, timestamp: float) -> str:
    return stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=int(timestamp))


def stripe_ok(c: Channel, header: str, body: bytes = BODY, now: float = NOW) -> bool:
    return signature_ok(c, {"stripe-signature": header}, body, now)


def test_stripe_reference_signature() -> None:
    c = channel(provider="stripe", secrets=(STRIPE_SECRET,))
    header = stripe_header(STRIPE_SECRET, BODY, NOW)
    assert stripe_ok(c, header)
    assert not stripe_ok(c, header, body=BODY.replace(b"world", b"World"))
    assert not stripe_ok(channel(provider="stripe", secrets=("whsec_other",)), header)
    assert stripe_ok(channel(provider="stripe", secrets=("whsec_other", STRIPE_SECRET)), header)


def test_stripe_tolerance_both_ways() -> None:
    c = channel(provider="stripe", secrets=(STRIPE_SECRET,))
    for skew in (-300, 0, 300):
        assert stripe_ok(c, stripe_header(STRIPE_SECRET, BODY, NOW + skew))
    for skew in (-301, 301, -86400):
        assert not stripe_ok(c, stripe_header(STRIPE_SECRET, BODY, NOW + skew))


def test_stripe_several_signatures_and_schemes() -> None:
    c = channel(provider="stripe", secrets=(STRIPE_SECRET,))
    t = int(NOW)
    good = hex_hmac(STRIPE_SECRET, f"{t}.".encode() + BODY)
    assert stripe_ok(c, f"t={t},v1={'0' * 64},v1={good},v0={'1' * 64}")
    assert stripe_ok(c, f"t={t}, v1={good}")
    assert not stripe_ok(c, f"t={t},v0={good}")
    assert not stripe_ok(c, f"v1={good}")
    assert not stripe_ok(c, f"t=,v1={good}")
    assert not stripe_ok(c, f"t=abc,v1={good}")
    assert not stripe_ok(c, f"t={t}.5,v1={good}")
    assert not stripe_ok(c, f"t={t}")
    assert not stripe_ok(c, "")
    assert not stripe_ok(c, ",,,")
    assert not signature_ok(c, {}, BODY, NOW)


def test_stripe_construct_event_accepts_what_sign_produces() -> None:
    c = channel(provider="stripe", secrets=(STRIPE_SECRET, "whsec_old"))
    body = json.dumps({"id": "evt_123", "object": "event", "type": "ping"}).encode()
    now = time.time()
    signed = sign(c, body, now)
    assert signed.header_name == "Stripe-Signature"
    assert signed.header_value == f"t={int(now)},v1={signed.signature}"
    event = stripe.Webhook.construct_event(body, signed.header_value, STRIPE_SECRET)
    assert event.id == "evt_123"
    assert stripe_ok(c, signed.header_value, body=body, now=now)


# --- slack -------------------------------------------------------------------

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def slack_headers(secret: str, body: bytes, timestamp: str) -> dict[str, str]:
    verifier = slack_sdk.signature.SignatureVerifier(secret)
    return {
        "x-slack-request-timestamp": timestamp,
        "x-slack-signature": verifier.generate_signature(timestamp=timestamp, body=body),
    }


def test_slack_reference_signature() -> None:
    c = channel(provider="slack", secrets=(SLACK_SECRET,))
    headers = slack_headers(SLACK_SECRET, BODY, str(int(NOW)))
    assert signature_ok(c, headers, BODY, NOW)
    assert not signature_ok(c, headers, BODY + b" ", NOW)
    assert not signature_ok(channel(provider="slack", secrets=("other",)), headers, BODY, NOW)
    assert signature_ok(channel(provider="slack", secrets=("other", SLACK_SECRET)), headers, BODY, NOW)


def test_slack_tolerance_both_ways() -> None:
    c = channel(provider="slack", secrets=(SLACK_SECRET,))
    for skew in (-300, 300):
        assert signature_ok(c, slack_headers(SLACK_SECRET, BODY, str(int(NOW) + skew)), BODY, NOW)
    for skew in (-301, 301):
        assert not signature_ok(c, slack_headers(SLACK_SECRET, BODY, str(int(NOW) + skew)), BODY, NOW)


def test_slack_malformed_headers() -> None:
    c = channel(provider="slack", secrets=(SLACK_SECRET,))
    good = slack_headers(SLACK_SECRET, BODY, str(int(NOW)))
    signature = good["x-slack-signature"]
    assert not signature_ok(c, {"x-slack-signature": signature}, BODY, NOW)
    assert not signature_ok(c, {"x-slack-request-timestamp": good["x-slack-request-timestamp"]}, BODY, NOW)
    assert not signature_ok(c, {**good, "x-slack-request-timestamp": "soon"}, BODY, NOW)
    assert not signature_ok(c, {**good, "x-slack-request-timestamp": "-1"}, BODY, NOW)
    assert not signature_ok(c, {**good, "x-slack-signature": signature.replace("v0=", "v1=")}, BODY, NOW)
    assert not signature_ok(c, {**good, "x-slack-signature": signature[3:]}, BODY, NOW)


def test_slack_verifier_accepts_what_sign_produces() -> None:
    c = channel(provider="slack", secrets=(SLACK_SECRET, "old"))
    now = time.time()
    signed = sign(c, BODY, now)
    assert (signed.header_name, signed.header_value) == ("X-Slack-Signature", "v0=" + signed.signature)
    assert signed.headers == {
        "X-Slack-Signature": signed.header_value,
        "X-Slack-Request-Timestamp": str(int(now)),
    }
    assert slack_sdk.signature.SignatureVerifier(SLACK_SECRET).is_valid_request(BODY, dict(signed.headers))
    lowered = {k.lower(): v for k, v in signed.headers.items()}
    assert signature_ok(c, lowered, BODY, now)


# --- standard webhooks -------------------------------------------------------

SW_KEY = base64.b64encode(b"standard-webhooks-test-key-32byt").decode()
SW_SECRET = "whsec_" + SW_KEY


def sw_headers(secret: str, body: bytes, timestamp: float, msg_id: str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W") -> dict:
    when = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp)), "webhook-signature": signature}


def test_standard_webhooks_reference_signature() -> None:
    c = channel(provider="standard-webhooks", secrets=(SW_SECRET,))
    headers = sw_headers(SW_SECRET, BODY, NOW)
    assert signature_ok(c, headers, BODY, NOW)
    assert signature_ok(channel(provider="standard-webhooks", secrets=(SW_KEY,)), headers, BODY, NOW)
    assert not signature_ok(c, headers, BODY + b" ", NOW)
    assert not signature_ok(c, {**headers, "webhook-id": "msg_other"}, BODY, NOW)
    other = "whsec_" + base64.b64encode(b"another key").decode()
    assert not signature_ok(channel(provider="standard-webhooks", secrets=(other,)), headers, BODY, NOW)
    assert signature_ok(channel(provider="standard-webhooks", secrets=(other, SW_SECRET)), headers, BODY, NOW)


def test_standard_webhooks_several_signatures() -> None:
    c = channel(provider="standard-webhooks", secrets=(SW_SECRET,))
    headers = sw_headers(SW_SECRET, BODY, NOW)
    good = headers["webhook-signature"]
    wrong = "v1," + base64.b64encode(b"x" * 32).decode()
    assert signature_ok(c, {**headers, "webhook-signature": f"{wrong} {good}"}, BODY, NOW)
    assert signature_ok(c, {**headers, "webhook-signature": f"v1a,{good[3:]} {good}"}, BODY, NOW)
    assert not signature_ok(c, {**headers, "webhook-signature": f"{wrong} v1a,{good[3:]}"}, BODY, NOW)
    assert not signature_ok(c, {**headers, "webhook-signature": "v2," + good[3:]}, BODY, NOW)
    assert not signature_ok(c, {**headers, "webhook-signature": "v1,!!!notbase64"}, BODY, NOW)
    assert not signature_ok(c, {**headers, "webhook-signature": good[3:]}, BODY, NOW)


def svix_headers(secret: str, body: bytes, timestamp: float, msg_id: str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W") -> dict:
    """The headers Svix (and Clerk, Resend) send, signed by the svix library."""
    when = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    signature = svix.webhooks.Webhook(secret).sign(msg_id, when, body.decode())
    return {"svix-id": msg_id, "svix-timestamp": str(int(timestamp)), "svix-signature": signature}


def test_standard_webhooks_in_svix_spelling() -> None:
    c = channel(provider="standard-webhooks", secrets=(SW_SECRET,))
    headers = svix_headers(SW_SECRET, BODY, NOW)
    assert signature_ok(c, headers, BODY, NOW)
    assert not signature_ok(c, headers, BODY + b" ", NOW)
    assert not signature_ok(c, {**headers, "svix-id": "msg_other"}, BODY, NOW)
    assert not signature_ok(c, headers, BODY, NOW + 301)
    for name in headers:
        assert not signature_ok(c, {k: v for k, v in headers.items() if k != name}, BODY, NOW)
    # The Standard Webhooks spelling wins when both are there.
    assert not signature_ok(c, {**headers, "webhook-id": "msg_other"}, BODY, NOW)


def test_standard_webhooks_tolerance_and_missing_headers() -> None:
    c = channel(provider="standard-webhooks", secrets=(SW_SECRET,))
    for skew in (-300, 300):
        assert signature_ok(c, sw_headers(SW_SECRET, BODY, NOW + skew), BODY, NOW)
    for skew in (-301, 301):
        assert not signature_ok(c, sw_headers(SW_SECRET, BODY, NOW + skew), BODY, NOW)
    headers = sw_headers(SW_SECRET, BODY, NOW)
    for name in headers:
        assert not signature_ok(c, {k: v for k, v in headers.items() if k != name}, BODY, NOW)
    assert not signature_ok(c, {**headers, "webhook-timestamp": headers["webhook-timestamp"] + ".0"}, BODY, NOW)


def test_standard_webhooks_undecodable_secret_refuses() -> None:
    c = channel(provider="standard-webhooks", secrets=("whsec_é",))
    headers = sw_headers(SW_SECRET, BODY, NOW)
    assert not signature_ok(c, headers, BODY, NOW)
    with pytest.raises(NotSigned):
        sign(c, BODY, NOW)


def test_standard_webhooks_library_accepts_what_sign_produces() -> None:
    c = channel(provider="standard-webhooks", secrets=(SW_SECRET, "whsec_b2xk"))
    now = time.time()
    signed = sign(c, BODY, now)
    assert signed.header_name == "webhook-signature"
    assert signed.header_value == "v1," + signed.signature
    assert set(signed.headers) == {"webhook-signature", "webhook-id", "webhook-timestamp"}
    assert signed.headers["webhook-timestamp"] == str(int(now))
    standardwebhooks.Webhook(SW_SECRET).verify(BODY, dict(signed.headers))
    assert signature_ok(c, dict(signed.headers), BODY, now)


def test_standard_webhooks_message_id() -> None:
    c = channel(provider="standard-webhooks", secrets=(SW_SECRET,))
    first = sign(c, BODY, NOW)
    assert first.headers["webhook-id"] == sign(c, BODY, NOW).headers["webhook-id"]
    assert first.headers["webhook-id"].startswith("msg_")
    assert first.headers["webhook-id"] != sign(c, BODY, NOW + 1).headers["webhook-id"]
    assert first.headers["webhook-id"] != sign(c, BODY + b" ", NOW).headers["webhook-id"]
    chosen = sign(c, BODY, NOW, msg_id="msg_chosen")
    assert chosen.headers["webhook-id"] == "msg_chosen"
    assert signature_ok(c, dict(chosen.headers), BODY, NOW)


# --- fuzzing: malformed input is False, never an exception ------------------

SIGNED_CHANNELS = [
    hmac_channel("s", extract_template=compile_template('{{ raw | split(pat="=") | last | trim }}')),
    channel(provider="github", secrets=("s",)),
    channel(provider="meta", secrets=("s",)),
    channel(provider="shopify", secrets=("s",)),
    channel(provider="stripe", secrets=("s",)),
    channel(provider="slack", secrets=("s",)),
    channel(provider="standard-webhooks", secrets=(SW_SECRET, "not base64 é")),
]

HEADER_NAMES = [
    "x-signature",
    "x-hub-signature-256",
    "x-shopify-hmac-sha256",
    "stripe-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
]

header_values = st.one_of(
    st.text(max_size=120),
    st.text(st.characters(blacklist_categories=()), max_size=20),
    st.from_regex(r"(t=[0-9]{0,12}|v1=[0-9a-f]{0,64}|v0=[0-9a-f]{64}|,| )*", fullmatch=True),
    st.from_regex(r"(v1,[A-Za-z0-9+/=]{0,50} ?)*", fullmatch=True),
    st.from_regex(r"sha256=[0-9a-fA-F]{60,66}", fullmatch=True),
)


@settings(max_examples=400)
@given(
    index=st.integers(0, len(SIGNED_CHANNELS) - 1),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_values),
    body=st.binary(max_size=64),
    now=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
)
def test_signature_ok_never_raises(index: int, headers: dict, body: bytes, now: float) -> None:
    assert signature_ok(SIGNED_CHANNELS[index], headers, body, now) is False


@given(body=st.binary(max_size=256), skew=st.integers(-300, 300))
def test_sign_then_verify_round_trip(body: bytes, skew: int) -> None:
    for c in SIGNED_CHANNELS:
        signed = sign(c, body, NOW)
        headers = {name.lower(): value for name, value in signed.headers.items()}
        if c.extract_template is not None:
            headers["x-signature"] = "sha256=" + headers["x-signature"]
        assert signature_ok(c, headers, body, NOW + skew), c.provider


# --- delivery ids ------------------------------------------------------------


def test_delivery_ids_from_headers() -> None:
    cases = {
        "github": ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        "gitlab": ("x-gitlab-event-uuid", "13792a34-cac6-4fda-95a8-c58e00a3954e"),
        "shopify": ("x-shopify-webhook-id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
        "standard-webhooks": ("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
    }
    for provider, (header, value) in cases.items():
        c = channel(provider=provider, secrets=("s",))
        assert delivery_id(c, {header: value}, {"id": "ignored"}) == value
        assert delivery_id(c, {}, {"id": "ignored"}) is None
        assert delivery_id(c, {header: ""}, None) is None
        assert delivery_id(c, {header: "x" * 257}, None) is None


def test_standard_webhooks_delivery_id_in_either_spelling() -> None:
    c = channel(provider="standard-webhooks", secrets=("s",))
    assert delivery_id(c, {"svix-id": "msg_1"}, None) == "msg_1"
    assert delivery_id(c, {"webhook-id": "msg_1"}, None) == "msg_1"
    assert delivery_id(c, {"webhook-id": "msg_1", "svix-id": "msg_2"}, None) == "msg_1"
    assert delivery_id(channel(provider="github", secrets=("s",)), {"svix-id": "msg_1"}, None) is None


def test_github_delivery_ids_are_per_hook() -> None:
    c = channel(provider="github", secrets=("s",))
    guid = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    first = delivery_id(c, {"x-github-delivery": guid, "x-github-hook-id": "101"}, None)
    second = delivery_id(c, {"x-github-delivery": guid, "x-github-hook-id": "202"}, None)
    assert first != second
    assert first == delivery_id(c, {"x-github-delivery": guid, "x-github-hook-id": "101"}, None)
    assert delivery_id(c, {"x-github-hook-id": "101"}, None) is None
    assert delivery_id(c, {"x-github-delivery": guid, "x-github-hook-id": "9" * 300}, None) is None


def test_delivery_ids_from_body() -> None:
    telegram = channel(provider="telegram", secrets=("s",))
    assert delivery_id(telegram, {}, {"update_id": 123456789, "message": {}}) == "123456789"
    assert delivery_id(telegram, {}, {"update_id": True}) is None
    assert delivery_id(telegram, {}, [1, 2]) is None
    stripe_channel = channel(provider="stripe", secrets=("s",))
    assert delivery_id(stripe_channel, {}, {"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event"}) == (
        "evt_1NG8Du2eZvKYlo2CUI79vXWy"
    )
    assert delivery_id(stripe_channel, {"x-github-delivery": "x"}, {"object": "event"}) is None
    slack = channel(provider="slack", secrets=("s",))
    assert delivery_id(slack, {}, {"type": "event_callback", "event_id": "Ev0PV52K21"}) == "Ev0PV52K21"
    assert delivery_id(slack, {}, {"type": "url_verification", "challenge": "c"}) is None
    assert delivery_id(slack, {}, {"event_id": {"nested": 1}}) is None


def test_no_delivery_id_for_meta_and_plain_channels() -> None:
    headers = {"x-github-delivery": "d", "webhook-id": "w"}
    assert delivery_id(channel(provider="meta", secrets=("s",)), headers, {"id": "x"}) is None
    assert delivery_id(channel(), headers, {"id": "x"}) is None
    assert delivery_id(hmac_channel("s"), headers, {"id": "x"}) is None


# --- sign --------------------------------------------------------------------


def test_sign_hmac_bare_and_templated() -> None:
    signed = sign(hmac_channel(GITHUB_SECRET, "old"), GITHUB_BODY, NOW)
    assert signed == (GITHUB_SIGNATURE, "X-Signature", GITHUB_SIGNATURE, {"X-Signature": GITHUB_SIGNATURE})
    templated = hmac_channel(GITHUB_SECRET, sign_template=compile_template("sha256={{ signature }}"))
    signature, name, value, _ = sign(templated, GITHUB_BODY, NOW)
    assert (signature, name, value) == (GITHUB_SIGNATURE, "X-Signature", "sha256=" + GITHUB_SIGNATURE)


def test_sign_uses_the_first_secret() -> None:
    signed = sign(hmac_channel("first", GITHUB_SECRET), GITHUB_BODY, NOW)
    assert signed.signature == hex_hmac("first", GITHUB_BODY) != GITHUB_SIGNATURE


@pytest.mark.parametrize("provider", ["github", "meta"])
def test_sign_github_and_meta(provider: str) -> None:
    signed = sign(channel(provider=provider, secrets=(GITHUB_SECRET,)), GITHUB_BODY, NOW)
    assert signed[:3] == (GITHUB_SIGNATURE, "X-Hub-Signature-256", "sha256=" + GITHUB_SIGNATURE)


def test_sign_shopify() -> None:
    expected = shopify_signature("shpss", BODY)
    signed = sign(channel(provider="shopify", secrets=("shpss",)), BODY, NOW)
    assert signed[:3] == (expected, "X-Shopify-Hmac-Sha256", expected)


def test_sign_stripe_header_format() -> None:
    signed = sign(channel(provider="stripe", secrets=(STRIPE_SECRET,)), BODY, NOW)
    assert signed.header_value == stripe_header(STRIPE_SECRET, BODY, NOW)


@pytest.mark.parametrize(
    "c",
    [
        channel(),
        channel(secrets=("s",), secret_header="X-Token"),
        channel(provider="gitlab", secrets=("s",)),
        channel(provider="telegram", secrets=("s",)),
        channel(provider="github"),
        channel(secret_header="X-Sig", secret_type="hmac-sha256"),
    ],
)
def test_sign_refuses_channels_without_hmac(c: Channel) -> None:
    with pytest.raises(NotSigned) as info:
        sign(c, BODY, NOW)
    assert isinstance(info.value, ValueError)


def test_errors_never_show_secrets() -> None:
    c = channel(provider="standard-webhooks", secrets=("whsec_é-super-secret",))
    with pytest.raises(NotSigned) as info:
        sign(c, BODY, NOW)
    assert "super-secret" not in str(info.value)
    assert "super-secret" not in repr(scheme_for(c))


# --- sign_forward ------------------------------------------------------------


def test_sign_forward() -> None:
    assert sign_forward(None, GITHUB_SECRET, GITHUB_BODY) == GITHUB_SIGNATURE
    template = compile_template("sha256={{ signature }}")
    assert sign_forward(template, GITHUB_SECRET, GITHUB_BODY) == "sha256=" + GITHUB_SIGNATURE
    upper = compile_template("{{ signature | upper }}")
    assert sign_forward(upper, GITHUB_SECRET, GITHUB_BODY) == GITHUB_SIGNATURE.upper()


# --- handshakes --------------------------------------------------------------


def test_meta_handshake() -> None:
    c = channel(provider="meta", secrets=("app",), verify_token="my-verify-token")
    args = {"hub.mode": "subscribe", "hub.verify_token": "my-verify-token", "hub.challenge": "1158201444"}
    assert meta_handshake(c, args) == "1158201444"
    assert meta_handshake(c, {**args, "hub.verify_token": "wrong"}) is REFUSED
    assert meta_handshake(c, {k: v for k, v in args.items() if k != "hub.verify_token"}) is REFUSED
    assert meta_handshake(c, {k: v for k, v in args.items() if k != "hub.challenge"}) is REFUSED
    assert meta_handshake(c, {**args, "hub.mode": "unsubscribe"}) is REFUSED
    assert meta_handshake(channel(provider="meta", secrets=("app",)), args) is REFUSED
    assert meta_handshake(c, {}) is None
    assert meta_handshake(c, {"limit": "10", "wait": "5"}) is None
    assert meta_handshake(channel(provider="github", verify_token="my-verify-token"), args) is None
    assert repr(REFUSED) == "REFUSED"


def test_slack_url_verification() -> None:
    c = channel(provider="slack", secrets=(SLACK_SECRET,))
    body = {"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}
    assert slack_url_verification(c, body) == body["challenge"]
    assert slack_url_verification(c, {**body, "type": "event_callback"}) is None
    assert slack_url_verification(c, {**body, "challenge": 5}) is None
    assert slack_url_verification(c, {"type": "url_verification"}) is None
    assert slack_url_verification(c, [body]) is None
    assert slack_url_verification(channel(provider="github", secrets=("s",)), body) is None
