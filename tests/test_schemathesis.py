"""schemathesis over Parley's own /openapi.json: no request it makes gets a 5xx (issue 13).

A bounded run, seeded so that it is the same every time: for each of the
documented operations, schemathesis's coverage cases (each field missing, of
the wrong type, past its bounds, a NUL in a path ...) and 25 fuzzed
requests, valid and not: about 1,700 requests, 20 s a backend on 2 cores.
Besides no 5xx, every status must be one the operation documents, with the
documented content type.

schemathesis runs as its command line does: its pytest plugin does not run
under pytest 9 (it reads `Function._nodeid`), and one worker, because its
coverage phase with two has failed on its own (a Hypothesis "inconsistent
results" error, with no request behind it). Each backend gets a server of its
own, over the fake upstream, with a database of its own, so that what
schemathesis creates is seen by no other test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.timeout(300)

SEED = 13
FUZZED_PER_OPERATION = 25
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance"


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path, fake_upstream: FakeUpstream) -> ParleyProcess:
    config = upstream_config(fake_upstream)
    if request.param == "sqlite":
        config["storage"] = {"url": f"sqlite:///{tmp_path / 'parley.db'}"}
    else:
        config["storage"] = {"url": request.getfixturevalue("postgres").create_database("parley_schemathesis")}
    parley = ParleyProcess(tmp_path / "server", config)
    parley.start()
    request.addfinalizer(parley.stop)
    return parley


def test_schemathesis_finds_no_server_error(server: ParleyProcess, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{server.base_url}/openapi.json",
        f"--checks={CHECKS}",
        f"--seed={SEED}",
        f"--max-examples={FUZZED_PER_OPERATION}",
        "--phases=examples,coverage,fuzzing",
        "--workers=1",
        "--request-timeout=30",
        "--generation-database=none",
        "--no-color",
    ]

    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)

    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "Traceback" not in "".join(server.output), "".join(server.output)[-5000:]
