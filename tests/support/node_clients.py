"""The Node clients the client tests drive, as `make node-clients` installs them.

Their versions are pinned in one place, `tests/clients/package.json` and its
lock file; `npm ci` installs them into `tests/clients/node_modules`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

CLIENTS = Path(__file__).resolve().parent.parent / "clients"
NODE_MODULES = CLIENTS / "node_modules"
SCRIPTS = CLIENTS / "node"


def node() -> str:
    """The `node` to run the clients with; fails the test, saying how to install them, when they are missing."""
    found = shutil.which("node")
    if found is None or not (NODE_MODULES / ".installed").exists():
        pytest.fail("the Node clients are not installed: run `make node-clients` (part of `make test`)")
    return found


def installed_version(package: str) -> str:
    """The version of an installed package, from its own package.json."""
    return json.loads((NODE_MODULES / package / "package.json").read_text())["version"]


def pinned_version(package: str) -> str:
    """The exact version tests/clients/package.json pins a package at."""
    manifest: dict[str, Any] = json.loads((CLIENTS / "package.json").read_text())
    return manifest["dependencies"][package]
