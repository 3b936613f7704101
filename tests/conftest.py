"""Fixtures that start real servers: Parley as its own CLI process, and a fake upstream.

Parley runs as `python -m parley serve` on a free loopback port, exactly as a
user starts it, and the tests talk to it over HTTP with the official openai
client. Only what is not ours is faked: the upstream model server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.fake_upstream import MODELS, FakeUpstream
from tests.mcp_servers import ToolServer
from tests.postgres import PostgresServer
from tests.support.validating_transport import (
    AsyncValidatingTransport,
    StreamChecks,
    ValidatingTransport,
    WebSocketStreams,
)

ROOT = Path(__file__).resolve().parent.parent
_BANNER = re.compile(r"listening on (http://\S+)")


class ParleyProcess:
    """`parley serve` in a child process, on a port of its own choosing."""

    instances: list[ParleyProcess] = []

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None):
        self.workdir = workdir
        if config is not None and "outbound" not in config:
            # The MCP and search servers of the tests listen on loopback, which Parley refuses to reach by
            # default: a test's configuration allows it, unless the test sets `outbound` itself.
            config = {**config, "outbound": {"allow_loopback": True}}
        self.config = config
        self.env = env or {}
        self.output: list[str] = []
        self.base_url = ""
        self.transports: list[StreamChecks] = []
        ParleyProcess.instances.append(self)
        self._process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "parley", "serve", "--port", "0", "--log-level", "warning"]
        if self.config is not None:
            config_file = self.workdir / "parley.yaml"
            config_file.write_text(yaml.safe_dump(self.config))
            args += ["--config", str(config_file)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
        env.update({"PARLEY_DATA_DIR": str(self.workdir / "data"), "PYTHONUNBUFFERED": "1", **self.env})
        self._process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        found = threading.Event()

        def read() -> None:
            assert self._process is not None and self._process.stdout is not None
            stdout = self._process.stdout
            for line in stdout:
                self.output.append(line)
                match = _BANNER.search(line)
                if match and not found.is_set():
                    self.base_url = match.group(1)
                    found.set()
            stdout.close()  # the server ended: every server a session starts stays listed (`instances`)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("parley serve did not start:\n" + "".join(self.output))
        return self.base_url

    def client(self, **kwargs: Any) -> openai.OpenAI:
        """The official client; every Responses stream it reads is checked by the stream validator."""
        transport = ValidatingTransport()
        self.transports.append(transport)
        timeout = kwargs.pop("timeout", 60)
        return openai.OpenAI(
            base_url=self.base_url + "/v1",
            api_key=kwargs.pop("api_key", "test-key"),
            max_retries=0,
            http_client=httpx.Client(transport=transport, timeout=timeout),
            **kwargs,
        )

    def async_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """The official async client (which the agent SDKs build on), its streams checked the same way."""
        transport = AsyncValidatingTransport()
        self.transports.append(transport)
        timeout = kwargs.pop("timeout", 60)
        return openai.AsyncOpenAI(
            base_url=self.base_url + "/v1",
            api_key=kwargs.pop("api_key", "test-key"),
            max_retries=0,
            http_client=httpx.AsyncClient(transport=transport, timeout=timeout),
            **kwargs,
        )

    def websocket_streams(self) -> WebSocketStreams:
        """A validator of the responses one WebSocket carries (WebSocket mode): feed it each message received."""
        streams = WebSocketStreams()
        self.transports.append(streams)
        return streams

    def stream_failures(self) -> list[AssertionError]:
        return [failure for transport in self.transports for failure in transport.failures]

    def take_stream_failures(self) -> list[AssertionError]:
        """The stream failures so far, taken away from the after-test check.

        For a test marked `xfail` for a known protocol failure, which asserts on them itself.
        """
        failures = self.stream_failures()
        for transport in self.transports:
            transport.failures.clear()
        return failures

    def __enter__(self) -> ParleyProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60)

    def kill(self) -> None:
        """Ends the server the way a crash would: no shutdown, no cleanup."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def paced() -> Iterator[FakeUpstream]:
    """A fake upstream that sends a chunk every 20 ms, so that a run lasts long enough to be watched (a module's:
    the background and deployment tests stop and cancel runs on it)."""
    with FakeUpstream(delay=0.02) as fake:
        yield fake


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyProcess]:
    """Parley with no configuration at all: the embedded SmolLM2 model."""
    server = ParleyProcess(tmp_path_factory.mktemp("embedded"))
    server.start()
    yield server
    server.stop()


def upstream_config(fake: FakeUpstream, *, read_timeout: float = 3.0) -> dict[str, Any]:
    return {
        "inference": {
            "providers": {
                "fake": {
                    "type": "openai",
                    "base_url": fake.base_url,
                    "api_key": "sk-test-secret",
                    "headers": {"X-Fake-Tenant": "parley-tests"},
                    "timeout": {"read": read_timeout, "connect": 2},
                    "models": list(MODELS),
                },
                # Models discovered from the upstream's /models.
                "discovered": {"type": "openai", "base_url": fake.base_url},
                # Nothing listens here: port 9 (discard) on loopback is closed.
                "down": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["any"]},
            },
            "aliases": {"echo": "fake/fake-echo"},
        }
    }


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[ParleyProcess]:
    """Parley over the fake OpenAI-compatible upstream (and one that is down)."""
    server = ParleyProcess(tmp_path_factory.mktemp("upstream"), upstream_config(fake_upstream))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _streams_follow_the_protocol() -> Iterator[None]:
    """Fails a test if any Responses stream its clients read broke the protocol."""
    yield
    failures = []
    for server in ParleyProcess.instances:
        failures += server.stream_failures()
        for transport in server.transports:
            transport.failures.clear()
    assert not failures, f"a stream broke the protocol: {failures[0]}"


@pytest.fixture
def client(server: ParleyProcess) -> openai.OpenAI:
    """The official client of the module's own `server` fixture, for a module that starts a Parley of its own
    (a module with another `client` fixture uses that one)."""
    return server.client()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Each storage test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'parley.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"parley_{os.getpid()}_{len(os.listdir(server.root))}")


def parley_config(fake: FakeUpstream, storage_url: str) -> dict[str, Any]:
    """The fake upstream's providers, the embedded model, and the given storage."""
    config = upstream_config(fake)
    config["inference"]["providers"]["local"] = {"type": "local", "models": {"smollm2-135m": {}}}
    config["inference"]["aliases"]["smollm2-135m"] = "local/smollm2-135m"
    config["storage"] = {"url": storage_url}
    return config


@pytest.fixture(scope="session")
def parley(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, storage_url: str
) -> Iterator[ParleyProcess]:
    """Parley with storage on the backend of this run, over the fake upstream and the embedded model."""
    server = ParleyProcess(tmp_path_factory.mktemp("parley"), parley_config(fake_upstream, storage_url))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tool_server() -> Iterator[ToolServer]:
    """The MCP test server (`tests/mcp_servers.py`), one per test module."""
    server = ToolServer().start()
    yield server
    server.stop()
