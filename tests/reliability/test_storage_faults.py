"""The database becoming full or read-only: POST answers 503 storage_unavailable
with Retry-After (a refusal senders retry, not a crash), nothing already
stored is lost, and kwp accepts again as soon as the database can be written."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from tests.reliability.clients import Burst, assert_every_200_stored_once, drain, post, request, wait_for
from tests.support import SQLITE_ONLY


async def _pragma(kwp, statement: str) -> None:
    # PRAGMA max_page_count and query_only hold per connection, so they are
    # set on the storage's own (single) connection, not on the file.
    await kwp.storage._pool.runInteraction(lambda txn: txn.execute(statement))


async def _page_count(kwp) -> int:
    def count(txn):
        txn.execute("PRAGMA page_count")
        return txn.fetchone()[0]

    return await kwp.storage._pool.runInteraction(count)


async def _post(kwp, payload):
    response = await kwp.post("open", payload)
    headers = response.headers
    return response.code, (headers.getRawHeaders("content-type"), headers.getRawHeaders("retry-after")), json.loads(
        await response.content()
    )


async def _stored(kwp) -> list[str]:
    return [json.loads(item.body)["marker"] for item in await kwp.storage.list("open", 10000, 0)]


@pytest.mark.parametrize(
    "fault, repair",
    [
        ("PRAGMA max_page_count = {pages}", "PRAGMA max_page_count = 1073741823"),
        ("PRAGMA query_only = 1", "PRAGMA query_only = 0"),
    ],
    ids=["full", "read-only"],
)
@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_a_database_that_cannot_be_written_answers_503_and_recovers(local_kwp, fault, repair, captured_log):
    kwp = local_kwp()
    accepted = []
    for n in range(5):
        status, _, body = await _post(kwp, {"marker": f"before-{n}"})
        assert status == 200
        accepted.append(f"before-{n}")
    await _pragma(kwp, fault.format(pages=await _page_count(kwp)))

    refused = None
    for n in range(50):
        status, headers, body = await _post(kwp, {"marker": f"during-{n}", "f": "x" * 20_000})
        if status == 200:
            accepted.append(f"during-{n}")
            continue
        refused = (status, headers, body)
        break
    assert refused is not None, "the database never filled up"
    status, headers, body = refused
    assert status == 503 and headers == (["application/json"], ["60"])
    assert body["error"] == "storage_unavailable" and isinstance(body["message"], str)
    # The refusal is a warning with its reason, not a traceback.
    assert not [e for e in captured_log.events if "log_failure" in e]
    assert any(e.get("log_format", "").startswith("request refused") for e in captured_log.events)
    assert (await kwp.get("/api/health")).code == 200
    assert await _stored(kwp) == accepted

    await _pragma(kwp, repair)
    status, _, body = await _post(kwp, {"marker": "after"})
    assert status == 200
    assert await _stored(kwp) == accepted + ["after"]


def _can_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        return False
    subprocess.run(["umount", str(path)], check=True)
    return True


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted under tmp_path (needs root and mount rights):
    room for the WAL, which is checkpointed at about 4 MiB."""
    mount = tmp_path / "disk"
    if not _can_mount_tmpfs(mount):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@SQLITE_ONLY
def test_a_full_disk_under_the_daemon_answers_503_and_recovers(daemon, small_disk):
    d = daemon(db_name="disk/kwp.db")
    filler = small_disk / "filler"
    burst = Burst(d.port, threads=3, seconds=60).start()
    try:
        burst.wait_until_answered(20)
        # Fill what is left of the disk, then let the burst run into it.
        try:
            with open(filler, "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
        except OSError:
            pass
        assert wait_for(lambda: burst.statuses.get(503, 0) >= 5, 60), burst.statuses
        status, headers, body = post(d.port, "open", {"marker": "while-full", "f": "x" * 100_000})
        assert status == 503 and headers["Content-Type"] == "application/json" and headers["Retry-After"] == "60"
        assert json.loads(body)["error"] == "storage_unavailable"
        assert request(d.port, "GET", "/api/health")[0] == 200

        filler.unlink()
        seen = len(burst.answered)
        burst.wait_until_answered(seen + 20)
    finally:
        burst.stop()
    assert set(burst.statuses) == {200, 503}, burst.statuses
    d.kill()
    d.start()
    assert_every_200_stored_once(burst.answered, drain(d.port, "open"))
