"""Push delivery to https targets through the real ``twistd -n kwp``: a
target whose certificate chains to a CA the operator trusts (SSL_CERT_FILE,
which the OpenSSL default verify paths of twisted's platformTrust honour)
gets the webhook; one with an untrusted certificate or a certificate for
another host name gets nothing, the attempt's error says why and the
webhook waits for a retry."""

from __future__ import annotations

import datetime
import json

import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.ssl import CertificateOptions

from tests.forward_support import assert_sent_as_posted
from tests.support import free_port, until
from tests.test_forward_daemon import config, post


class Authority:
    """A certificate authority made for one test, and the certificates it signs."""

    def __init__(self, name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            _builder(self.name, self.name, self.key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def server(self, host: str):
        """A server context factory with a certificate for host signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        cert = (
            _builder(subject, self.name, key)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return CertificateOptions(privateKey=key, certificate=cert)


def _builder(subject: x509.Name, issuer: x509.Name, key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


@pytest.fixture
def trusted(tmp_path):
    """The CA of the test, and the environment of a kwp whose operator made
    it the CA bundle."""
    authority = Authority("kwp test CA")
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(authority.pem())
    return authority, {"SSL_CERT_FILE": str(bundle)}


async def head(daemon) -> dict:
    """The first webhook of the queue ({} when it is empty)."""
    response = await treq.get(
        f"{daemon.base}/api/webhook/push/queue", headers={"Authorization": "Bearer push-token"}
    )
    items = json.loads(await response.content())["items"]
    return items[0] if items else {}


async def _empty(daemon) -> bool:
    return await head(daemon) == {}


@pytest_twisted.ensureDeferred
async def test_a_target_with_a_certificate_from_a_trusted_ca_gets_the_webhook(daemon, target, trusted):
    authority, env = trusted
    t = target(tls=authority.server("localhost"))
    kwp = daemon(config(t.url), env=env)
    raw = b'{ "a" : [1.50, 2e3],\n "b": "\xc3\xa9" }'
    response = await treq.post(
        f"{kwp.base}/api/webhook/push", data=raw, headers={"Content-Type": "application/json", "X-Custom": "yes"}
    )
    assert response.code == 200, await response.text()
    webhook_id = json.loads(await response.content())["id"]
    await t.wait_for(1)
    assert_sent_as_posted(t.received[0], raw, webhook_id)
    await until(lambda: _empty(kwp), 10, "the queue is empty")


@pytest.mark.parametrize(
    "served, error",
    [
        # A certificate for localhost that no trusted CA signed.
        (lambda authority: Authority("a CA nobody trusts").server("localhost"), "certificate verify failed"),
        # A certificate from the trusted CA, for another host name.
        (lambda authority: authority.server("other.example"), "DNSMismatch"),
    ],
    ids=["untrusted", "other-host"],
)
@pytest_twisted.ensureDeferred
async def test_a_target_whose_certificate_fails_verification_gets_nothing_until_it_is_fixed(
    daemon, target, trusted, served, error
):
    authority, env = trusted
    port = free_port()
    t = target(port, tls=served(authority))
    kwp = daemon(config(t.url), env=env)
    webhook_id = await post(kwp, {"n": 1})

    async def tried_twice() -> bool:
        return (await head(kwp)).get("forward_attempts", 0) >= 2

    await until(tried_twice, 10, "two attempts failed")
    item = await head(kwp)
    assert item["id"] == webhook_id and item["state"] == "pending" and item["next_attempt_at"] is not None
    assert error in item["last_attempt_error"], item["last_attempt_error"]
    assert t.received == []

    await t.stop()
    fixed = target(port, tls=authority.server("localhost"))
    await fixed.wait_for(1)
    await until(lambda: _empty(kwp), 10, "the queue is empty")
    assert fixed.delivered() == [b'{"n": 1}']
    assert int(fixed.received[0]["headers"]["x-kwp-attempt"]) >= 3
