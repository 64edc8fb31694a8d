"""Verification through the HTTP layer: providers signed by their own
libraries (svix for the Svix spelling of Standard Webhooks), IP allowlists behind proxies, dedup, handshakes, /sign, /test-send."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest_twisted
import slack_sdk.signature
import standardwebhooks
import stripe
import svix.webhooks
import treq

from tests.support import assert_error, body_json, until

STRIPE_SECRET = "whsec_test_stripe"
SW_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-key-0123456789").decode()

CONFIG = {
    "server": {"admin-token": "admin", "trusted-proxies": ["127.0.0.1/32"]},
    "channels": [
        {"name": "gh", "token": "t-gh", "provider": "github", "webhook-secret": ["new-secret", "old-secret"]},
        {"name": "stripe", "token": "t-stripe", "provider": "stripe", "webhook-secret": STRIPE_SECRET},
        {"name": "slack", "token": "t-slack", "provider": "slack", "webhook-secret": "slack-secret"},
        {"name": "shopify", "token": "t-shop", "provider": "shopify", "webhook-secret": "shop-secret"},
        {"name": "sw", "token": "t-sw", "provider": "standard-webhooks", "webhook-secret": SW_SECRET},
        {"name": "meta", "token": "t-meta", "provider": "meta", "webhook-secret": "app-secret",
         "verify-token": "hub-token"},
        {"name": "tg", "token": "t-tg", "provider": "telegram", "webhook-secret": "tg-secret"},
        {"name": "rust-hmac", "token": "t-rh", "webhook-secret": "rh-secret",
         "secret-header": "X-Hub-Signature-256", "secret-type": "hmac-sha256",
         "secret-extract-template": '{{ raw | replace(from="sha256=", to="") }}',
         "secret-sign-template": "sha256={{ signature }}"},
        {"name": "office", "token": "t-office", "allowed-ips": ["10.0.0.0/8", "2001:db8::/32"]},
    ],
}


def github_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def stored(kwp, channel):
    return await kwp.storage.list(channel, 100, 0)


@pytest_twisted.ensureDeferred
async def test_github_rotation_tampering_and_dedup(local_kwp):
    kwp = local_kwp(CONFIG)
    body = json.dumps({"action": "opened"}).encode()
    for secret in ("new-secret", "old-secret"):
        response = await kwp.post("gh", body, {"X-Hub-Signature-256": github_signature(secret, body),
                                               "X-GitHub-Delivery": f"d-{secret}"})
        assert response.code == 200
    tampered = await kwp.post("gh", body + b" ", {"X-Hub-Signature-256": github_signature("new-secret", body)})
    failure = await assert_error(tampered, 401, "unauthorized")
    assert "new-secret" not in json.dumps(failure)
    await assert_error(await kwp.post("gh", body), 401, "unauthorized")
    assert len(await stored(kwp, "gh")) == 2

    # A redelivery is answered 200 and not stored again, even once pulled.
    await kwp.get("/api/webhook/gh", "t-gh")

    async def pulled():
        return await stored(kwp, "gh") == []

    await until(pulled, what="the pulled webhooks deleted")
    again = await kwp.post("gh", body, {"X-Hub-Signature-256": github_signature("new-secret", body),
                                        "X-GitHub-Delivery": "d-new-secret"})
    assert again.code == 200
    assert (await body_json(again))["status"] == "duplicate"
    assert await stored(kwp, "gh") == []


@pytest_twisted.ensureDeferred
async def test_two_github_hooks_sharing_a_delivery_are_both_stored(local_kwp):
    kwp = local_kwp(CONFIG)
    body = json.dumps({"action": "opened"}).encode()
    guid = "72d3162e-cc78-11e3-81ab-4c9367dc0958"

    async def send(hook_id):
        headers = {"X-Hub-Signature-256": github_signature("new-secret", body), "X-GitHub-Delivery": guid,
                   "X-GitHub-Hook-ID": hook_id}
        return await body_json(await kwp.post("gh", body, headers))

    assert (await send("101"))["status"] == "ok"
    assert (await send("202"))["status"] == "ok"
    assert (await send("101"))["status"] == "duplicate"
    assert (await send("202"))["status"] == "duplicate"
    assert len(await stored(kwp, "gh")) == 2


@pytest_twisted.ensureDeferred
async def test_stripe_signed_by_stripe_library(local_kwp):
    kwp = local_kwp(CONFIG)
    body = json.dumps({"id": "evt_1", "type": "charge.succeeded"})
    header = stripe.WebhookSignature.generate_signature_header(body, STRIPE_SECRET, timestamp=int(time.time()))
    assert (await kwp.post("stripe", body.encode(), {"Stripe-Signature": header})).code == 200
    stale = stripe.WebhookSignature.generate_signature_header(body, STRIPE_SECRET, timestamp=int(time.time()) - 400)
    await assert_error(await kwp.post("stripe", body.encode(), {"Stripe-Signature": stale}), 401, "unauthorized")
    future = stripe.WebhookSignature.generate_signature_header(body, STRIPE_SECRET, timestamp=int(time.time()) + 400)
    await assert_error(await kwp.post("stripe", body.encode(), {"Stripe-Signature": future}), 401, "unauthorized")
    # Replayed within the tolerance: same event id, stored once.
    assert (await body_json(await kwp.post("stripe", body.encode(), {"Stripe-Signature": header})))["status"] == (
        "duplicate"
    )
    assert len(await stored(kwp, "stripe")) == 1


@pytest_twisted.ensureDeferred
async def test_slack_signed_by_slack_sdk_and_url_verification(local_kwp):
    kwp = local_kwp(CONFIG)
    verifier = slack_sdk.signature.SignatureVerifier("slack-secret")

    async def send(payload, secret_verifier=verifier, timestamp=None):
        body = json.dumps(payload)
        ts = str(timestamp or int(time.time()))
        headers = {"X-Slack-Request-Timestamp": ts,
                   "X-Slack-Signature": secret_verifier.generate_signature(timestamp=ts, body=body)}
        return await kwp.post("slack", body.encode(), headers)

    challenge = await send({"type": "url_verification", "challenge": "c-123", "token": "x"})
    assert await body_json(challenge) == {"challenge": "c-123"}
    assert (await send({"type": "event_callback", "event_id": "Ev1"})).code == 200
    await assert_error(await send({"type": "event_callback", "event_id": "Ev2"},
                                  slack_sdk.signature.SignatureVerifier("wrong")), 401, "unauthorized")
    await assert_error(await send({"type": "event_callback", "event_id": "Ev3"}, timestamp=int(time.time()) - 600),
                       401, "unauthorized")
    forged_challenge = json.dumps({"type": "url_verification", "challenge": "c"}).encode()
    await assert_error(await kwp.post("slack", forged_challenge), 401, "unauthorized")
    assert len(await stored(kwp, "slack")) == 1


@pytest_twisted.ensureDeferred
async def test_standard_webhooks_signed_by_reference_library(local_kwp):
    kwp = local_kwp(CONFIG)
    body = json.dumps({"type": "invoice.paid"})
    now = datetime.now(tz=timezone.utc)
    signature = standardwebhooks.Webhook(SW_SECRET).sign("msg_1", now, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
    assert (await kwp.post("sw", body.encode(), headers)).code == 200
    assert (await body_json(await kwp.post("sw", body.encode(), headers)))["status"] == "duplicate"
    tampered = dict(headers, **{"webhook-id": "msg_2"})
    await assert_error(await kwp.post("sw", body.encode(), tampered), 401, "unauthorized")
    assert len(await stored(kwp, "sw")) == 1


@pytest_twisted.ensureDeferred
async def test_standard_webhooks_in_svix_spelling_signed_by_svix(local_kwp):
    kwp = local_kwp(CONFIG)
    body = json.dumps({"type": "user.created"})
    now = datetime.now(tz=timezone.utc)
    signature = svix.webhooks.Webhook(SW_SECRET).sign("msg_svix", now, body)
    headers = {"svix-id": "msg_svix", "svix-timestamp": str(int(now.timestamp())), "svix-signature": signature}
    assert await body_json(await kwp.post("sw", body.encode(), headers)) == {"status": "ok", "id": 1}
    assert (await body_json(await kwp.post("sw", body.encode(), headers)))["status"] == "duplicate"
    # The same message in the Standard Webhooks spelling is the same delivery.
    standard = standardwebhooks.Webhook(SW_SECRET).sign("msg_svix", now, body)
    same = {"webhook-id": "msg_svix", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": standard}
    assert (await body_json(await kwp.post("sw", body.encode(), same)))["status"] == "duplicate"
    await assert_error(await kwp.post("sw", body.encode(), dict(headers, **{"svix-id": "msg_2"})), 401, "unauthorized")
    [item] = await stored(kwp, "sw")
    assert json.loads(item.headers_json)["svix-id"] == "msg_svix"


@pytest_twisted.ensureDeferred
async def test_shopify_and_telegram(local_kwp):
    kwp = local_kwp(CONFIG)
    body = b'{"id": 1}'
    digest = base64.b64encode(hmac.new(b"shop-secret", body, hashlib.sha256).digest()).decode()
    assert (await kwp.post("shopify", body, {"X-Shopify-Hmac-Sha256": digest})).code == 200
    await assert_error(await kwp.post("shopify", body, {"X-Shopify-Hmac-Sha256": "AAAA"}), 401, "unauthorized")
    assert (await kwp.post("tg", b'{"update_id": 7}', {"X-Telegram-Bot-Api-Secret-Token": "tg-secret"})).code == 200
    await assert_error(await kwp.post("tg", b'{"update_id": 8}', {"X-Telegram-Bot-Api-Secret-Token": "no"}),
                       401, "unauthorized")


@pytest_twisted.ensureDeferred
async def test_rust_style_hmac_channel_with_templates(local_kwp):
    kwp = local_kwp(CONFIG)
    body = b'{"ref": "main"}'
    good = github_signature("rh-secret", body)
    assert (await kwp.post("rust-hmac", body, {"X-Hub-Signature-256": good})).code == 200
    assert (await kwp.post("rust-hmac", body, {"X-Hub-Signature-256": good[len("sha256="):]})).code == 200
    await assert_error(await kwp.post("rust-hmac", body, {"X-Hub-Signature-256": "sha256=00"}), 401, "unauthorized")


@pytest_twisted.ensureDeferred
async def test_allowed_ips_behind_a_trusted_proxy(local_kwp):
    kwp = local_kwp(CONFIG)
    await assert_error(await kwp.post("office", {}), 403, "ip_blocked")
    assert (await kwp.post("office", {}, {"X-Forwarded-For": "10.1.2.3"})).code == 200
    assert (await kwp.post("office", {}, {"X-Forwarded-For": "2001:db8::5"})).code == 200
    assert (await kwp.post("office", {}, {"X-Real-IP": "10.9.9.9"})).code == 200
    # The right-most untrusted address counts: a client cannot prepend its way in.
    await assert_error(await kwp.post("office", {}, {"X-Forwarded-For": "10.1.2.3, 192.0.2.7"}), 403, "ip_blocked")
    for garbage in ("not-an-ip", "10.1.2.3, ;drop", "10.0.0.0/8", ""):
        await assert_error(await kwp.post("office", {}, {"X-Forwarded-For": garbage}), 403, "ip_blocked")


@pytest_twisted.ensureDeferred
async def test_forwarded_for_is_ignored_from_an_untrusted_peer(local_kwp):
    config = dict(CONFIG, server={"admin-token": "admin"})
    kwp = local_kwp(config)
    await assert_error(await kwp.post("office", {}, {"X-Forwarded-For": "10.1.2.3"}), 403, "ip_blocked")


@pytest_twisted.ensureDeferred
async def test_meta_subscription_handshake(local_kwp):
    kwp = local_kwp(CONFIG)
    ok = await treq.get(kwp.url("/api/webhook/meta?hub.mode=subscribe&hub.verify_token=hub-token&hub.challenge=42"))
    assert ok.code == 200
    assert await ok.content() == b"42"
    wrong = await treq.get(kwp.url("/api/webhook/meta?hub.mode=subscribe&hub.verify_token=no&hub.challenge=42"))
    await assert_error(wrong, 403, "forbidden")
    # Without the handshake parameters the GET stays the pull API.
    await assert_error(await treq.get(kwp.url("/api/webhook/meta")), 401, "unauthorized")
    body = b'{"entry": []}'
    assert (await kwp.post("meta", body, {"X-Hub-Signature-256": github_signature("app-secret", body)})).code == 200


@pytest_twisted.ensureDeferred
async def test_sign_endpoint_output_verifies(local_kwp):
    kwp = local_kwp(CONFIG)
    body = b'{"id": "evt_9", "object": "event"}'
    response = await treq.post(kwp.url("/api/webhook/stripe/sign"), data=body,
                               headers={"Authorization": "Bearer t-stripe"})
    signed = await body_json(response)
    assert signed["header_name"] == "Stripe-Signature"
    stripe.Webhook.construct_event(body, signed["header_value"], STRIPE_SECRET)
    assert (await kwp.post("stripe", body, {signed["header_name"]: signed["header_value"]})).code == 200
    plain = await treq.post(kwp.url("/api/webhook/tg/sign"), data=body, headers={"Authorization": "Bearer t-tg"})
    await assert_error(plain, 400, "bad_request")
    await assert_error(await treq.post(kwp.url("/api/webhook/stripe/sign"), data=body,
                                       headers={"Authorization": "Bearer t-tg"}), 403, "forbidden")


@pytest_twisted.ensureDeferred
async def test_test_send_runs_the_receive_path(local_kwp):
    kwp = local_kwp(CONFIG)
    auth = {"Authorization": "Bearer t-gh"}
    ok = await treq.post(kwp.url("/api/webhook/gh/test-send"), json={"payload": {"zen": "hi"}}, headers=auth)
    assert ok.code == 200 and (await body_json(ok))["status"] == "ok"
    wrong = await treq.post(kwp.url("/api/webhook/gh/test-send"), json={"payload": {}, "secret": "guess"},
                            headers=auth)
    await assert_error(wrong, 401, "unauthorized")
    right = await treq.post(kwp.url("/api/webhook/gh/test-send"), json={"payload": [1], "secret": "old-secret"},
                            headers=auth)
    assert right.code == 200
    office = await treq.post(kwp.url("/api/webhook/office/test-send"), json={"payload": 1},
                             headers={"Authorization": "Bearer t-office"})
    assert office.code == 200
    await assert_error(await treq.post(kwp.url("/api/webhook/gh/test-send"), data=b"[]", headers=auth),
                       400, "bad_request")
    assert [json.loads(w.body) for w in await stored(kwp, "gh")] == [{"zen": "hi"}, [1]]


def test_signed_providers_against_the_daemon(daemon):
    d = daemon(CONFIG)

    def send(channel, body: bytes, headers):
        request = urllib.request.Request(f"{d.base}/api/webhook/{channel}", data=body, method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    event = json.dumps({"id": "evt_daemon", "type": "ping"})
    header = stripe.WebhookSignature.generate_signature_header(event, STRIPE_SECRET, timestamp=int(time.time()))
    assert send("stripe", event.encode(), {"Stripe-Signature": header}) == (200, {"status": "ok", "id": 1})
    assert send("stripe", event.encode(), {"Stripe-Signature": header}) == (200, {"status": "duplicate"})
    stale = stripe.WebhookSignature.generate_signature_header(event, STRIPE_SECRET, timestamp=int(time.time()) - 301)
    assert send("stripe", event.encode(), {"Stripe-Signature": stale})[0] == 401
    assert send("stripe", event.encode() + b" ", {"Stripe-Signature": header})[0] == 401

    body = json.dumps({"type": "invoice.paid"})
    now = datetime.now(tz=timezone.utc)
    signature = standardwebhooks.Webhook(SW_SECRET).sign("msg_d", now, body)
    headers = {"webhook-id": "msg_d", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
    assert send("sw", body.encode(), headers)[0] == 200
    assert send("sw", body.encode(), dict(headers, **{"webhook-signature": "v1,AAAA"}))[0] == 401
    assert send("office", b"{}", {"X-Forwarded-For": "10.1.2.3"})[0] == 200
    assert send("office", b"{}", {"X-Forwarded-For": "10.1.2.3, 192.0.2.1"}) == (
        403, {"error": "ip_blocked", "message": "the client address is not allowed on this channel"})
