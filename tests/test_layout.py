"""The imports between kwp's modules point one way: the pure modules stay
free of Twisted, and the config model stands below the verification that
uses it."""

from __future__ import annotations

import ast

import pytest

from tests.support import ROOT


def imported(module: str) -> set[str]:
    """Every module that kwp/<module>.py imports, at the top or inside a
    function alike."""
    tree = ast.parse((ROOT / "kwp" / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_config_does_not_import_verification():
    assert not any(name == "kwp.verify" or name.startswith("kwp.verify.") for name in imported("config"))


@pytest.mark.parametrize("module", ["config", "templates", "verify"])
def test_pure_modules_import_no_twisted(module):
    assert not {name for name in imported(module) if name.split(".")[0] in ("twisted", "klein", "treq")}
