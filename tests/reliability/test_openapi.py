"""docs/openapi.yaml against the live daemon: schemathesis generates requests
from the spec and every answer must be no 5xx and conform to it (status
codes, content types, bodies, headers)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import BASIC_CONFIG
from tests.reliability.clients import ADMIN, post
from tests.support import ROOT, Daemon, write_config

schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def spec_daemon(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("openapi")
    config = write_config(workdir / "config.yml", BASIC_CONFIG)
    d = Daemon(workdir, config, workdir / "kwp.db").start()
    for n in range(3):
        assert post(d.port, "open", {"n": n})[0] == 200
    yield d
    d.kill()


def test_the_spec_describes_every_endpoint():
    operations = {(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())}
    assert operations == {
        ("POST", "/api/webhook/{channel}"),
        ("GET", "/api/webhook/{channel}"),
        ("POST", "/api/webhook/{channel}/ack"),
        ("GET", "/api/webhook/{channel}/list"),
        ("DELETE", "/api/webhook/{channel}/{id}"),
        ("POST", "/api/webhook/{channel}/sign"),
        ("POST", "/api/webhook/{channel}/test-send"),
        ("GET", "/api/health"),
        ("GET", "/api/version"),
    }


OPERATIONS = {op.label: op for op in (r.ok() for r in schema.get_all_operations())}


# Each operation is run as a hypothesis test of its own inside a plain test:
# schemathesis' own pytest integration and pytest-twisted's both wrap the
# hypothesis test and cannot be stacked.
@pytest.mark.parametrize("label", sorted(OPERATIONS))
@pytest.mark.parametrize("authorization", [f"Bearer {ADMIN}", "Bearer open-token"], ids=["admin", "channel"])
def test_the_daemon_answers_as_the_spec_says(spec_daemon, label, authorization):
    operation = OPERATIONS[label]

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(), aim_at_open=st.booleans())
    def check(case, aim_at_open):
        # A generated channel name is almost never a configured one.
        if aim_at_open and "channel" in (case.path_parameters or {}):
            case.path_parameters["channel"] = "open"
        if case.query and "wait" in case.query:
            case.query["wait"] = 0
        case.call_and_validate(base_url=spec_daemon.base, headers={"Authorization": authorization}, checks=CHECKS,
                               timeout=30)

    check()
