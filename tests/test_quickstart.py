"""The README's quick start: what `make run` and `make test` do, and its
commands against the daemon serving the shipped config.yml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.support import ROOT


def make_dry_run(target: str) -> list[str]:
    """The commands `make TARGET` would run from scratch (-B: every target
    out of date), without running them."""
    result = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_serves_this_machine_only_and_installs_no_test_extras():
    commands = make_dry_run("run")
    installs = [c for c in commands if " install " in c and " -e " in c]
    assert installs and not any("[test]" in c for c in installs), installs
    [twistd] = [c for c in commands if "bin/twistd " in c]
    assert re.search(r"--listen tcp:8080:interface=127\.0\.0\.1\b", twistd), twistd
    assert any("[test]" in c for c in make_dry_run("test"))


def quick_start_commands() -> str:
    """The shell block of the quick start that talks to the running kwp."""
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    [block] = [b for b in blocks if "curl" in b]
    return block


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("openssl")), reason="needs curl and openssl")
def test_the_quick_start_commands_work_against_the_shipped_config(daemon):
    d = daemon(yaml.safe_load((ROOT / "config.yml").read_text()))
    script = quick_start_commands().replace("http://localhost:8080", d.base)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    answer, pulled = result.stdout.split("}", 1)
    assert json.loads(answer + "}") == {"status": "ok", "id": 1}
    [item] = json.loads(pulled)
    assert item["payload"] == {"action": "opened", "pull_request": {"id": 1}}
    # The github channel verifies GitHub's signature, not a raw secret.
    plain = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{d.base}/api/webhook/github", "-H", "Content-Type: application/json",
         "-H", "X-Hub-Signature-256: change-me-github-secret", "-d", "{}"],
        capture_output=True, text=True, timeout=30,
    )
    assert json.loads(plain.stdout)["error"] == "unauthorized"


def test_the_shipped_config_is_warned_about_at_start_up(daemon):
    d = daemon(yaml.safe_load((ROOT / "config.yml").read_text()))
    d.stop()
    warned = [line.split("#warn] ", 1)[1] for line in d.log().splitlines() if "[kwp.tap#warn] " in line]
    assert sorted(warned) == sorted(
        [f"{d.config_path}: server: key 'admin-token' is still a 'change-me' placeholder: set a secret of your own"]
        + [f"{d.config_path}: channel '{name}': key '{key}' is still a 'change-me' placeholder: set a secret of your own"
           for name in ("github", "telegram", "open") for key in ("api-read-token", "webhook-secret")
           if (name, key) != ("open", "webhook-secret")]
        + [f"{d.config_path}: channel 'open': no webhook-secret, nothing is verified: "
           "anyone who can reach kwp can post to it"]
    )
