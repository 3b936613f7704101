"""The Codex CLI, unmodified, against a running Parley.

Codex runs with its default configuration (web_search and the multi-agent tools
on, `store: false`, the whole history resent every turn), except for the model
provider, which is Parley over the Responses API. Its home and CODEX_HOME are
scratch directories. The model is the fake upstream's `fake-script`, which
takes its tool calls from the last user message, so a Codex prompt such as
`exec_command {"cmd": "echo hi"}` is the script: the model calls Codex's shell
tool with that command, then answers "Results: " and the tool's output.

Codex's shell tool runs in its own sandbox (bubblewrap, which ships inside the
npm package) when this machine lets it make one (user namespaces), in
`workspace-write` mode so that the command can write into its directory; where
it cannot, as in some containers, the tool runs unsandboxed
(`danger-full-access`): the directory is a scratch one, and what is under test
is what Codex sends Parley, not the sandbox.

Codex reaches Parley through a pass-through of the test's own that keeps every
Responses stream Parley sends, and each is checked against OpenAI's protocol
(tests/support/stream_validator.py) after the test, as tests/conftest.py does
for the openai client: Codex reads leniently, so its success alone would not
show a broken stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ParleyProcess
from tests.fake_upstream import FakeUpstream
from tests.support.node_clients import NODE_MODULES, installed_version, node, pinned_version
from tests.support.stream_validator import validate_response_stream

CODEX = NODE_MODULES / "@openai" / "codex" / "bin" / "codex.js"
MODEL = "fake/fake-script"
TIMEOUT = 120.0


class StreamRecorder:
    """An HTTP pass-through to Parley that keeps the body of every event stream Parley answers with.

    Each exchange is forwarded whole and answered whole: Codex does not need the stream as it is made.
    """

    _HOP_BY_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive"})

    def __init__(self, target: str) -> None:
        self.target = target
        self.streams: list[bytes] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                recorder._forward(self)

            def do_POST(self) -> None:
                recorder._forward(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="codex-recorder", daemon=True)
        self._thread.start()

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in self._HOP_BY_HOP}
        try:
            answer = httpx.request(
                handler.command, self.target + handler.path, headers=headers, content=body, timeout=TIMEOUT
            )
        except httpx.HTTPError as exc:
            answer = httpx.Response(502, json={"error": {"message": f"recorder: {exc!r}", "type": "server_error"}})
        content = answer.content
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            self.streams.append(content)
        handler.send_response(answer.status_code)
        for key, value in answer.headers.items():
            if key.lower() not in self._HOP_BY_HOP | {"content-encoding"}:
                handler.send_header(key, value)
        handler.send_header("content-length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@dataclass
class Ran:
    """What a Codex run left: its exit status, stdout (the final answer) and stderr (the session's log)."""

    returncode: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        return f"codex exited {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}"


class Codex:
    """The Codex CLI with a scratch HOME, CODEX_HOME and working directory, its provider Parley."""

    def __init__(self, root: Path, base_url: str) -> None:
        self.home = root / "home"
        self.codex_home = root / "codex-home"
        self.work = root / "work"
        for directory in (self.home, self.codex_home, self.work):
            directory.mkdir(parents=True)
        # Only the provider differs from Codex's defaults.
        (self.codex_home / "config.toml").write_text(
            f'model = "{MODEL}"\n'
            'model_provider = "parley"\n'
            "\n"
            "[model_providers.parley]\n"
            'name = "Parley"\n'
            f'base_url = "{base_url}/v1"\n'
            'wire_api = "responses"\n'
            'env_key = "PARLEY_TEST_API_KEY"\n'
        )
        self.sandbox = self._sandbox_mode()

    def run(self, *args: str) -> Ran:
        """`codex ARGS` in the working directory, killed (with everything it started) after TIMEOUT seconds."""
        # Nothing of the caller's environment that could reach Codex's configuration or credentials.
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "CODEX_HOME": str(self.codex_home),
            "PARLEY_TEST_API_KEY": "dummy-key",
            "LANG": "C.UTF-8",
            "NO_COLOR": "1",
        }
        process = subprocess.Popen(
            [node(), str(CODEX), *args],
            cwd=self.work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"codex {' '.join(args[:2])} did not finish in {TIMEOUT:.0f} s\n{stdout}\n{stderr[-4000:]}")
        return Ran(process.returncode, stdout, stderr)

    def exec(self, prompt: str) -> Ran:
        """`codex exec PROMPT`: a new session."""
        return self.run("exec", "--skip-git-repo-check", "--color", "never", "-c", self.sandbox, prompt)

    def resume_last(self, prompt: str) -> Ran:
        """`codex exec resume --last PROMPT`: the newest session of this directory, one more turn."""
        return self.run("exec", "resume", "--last", "--skip-git-repo-check", "-c", self.sandbox, prompt)

    def _sandbox_mode(self) -> str:
        probe = self.work / ".sandbox-probe"
        ran = self.run("sandbox", "-c", 'sandbox_mode="workspace-write"', "--", "sh", "-c", f"echo ok > {probe.name}")
        mode = "workspace-write" if ran.returncode == 0 and probe.exists() else "danger-full-access"
        probe.unlink(missing_ok=True)
        return f'sandbox_mode="{mode}"'


def upstream_requests(fake: FakeUpstream, marker: str) -> list[dict[str, Any]]:
    """The chat-completions requests Parley sent the fake upstream whose messages mention marker, oldest first."""
    return [body for body in fake.requests if marker in json.dumps(body.get("messages"))]


def tool_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [call for m in messages if m.get("role") == "assistant" for call in m.get("tool_calls") or []]


def contents(messages: list[dict[str, Any]], role: str) -> list[str]:
    return [json.dumps(m.get("content")) for m in messages if m.get("role") == role]


@pytest.fixture(scope="module")
def recorder(upstream: ParleyProcess) -> Iterator[StreamRecorder]:
    """The pass-through Codex reaches Parley by."""
    recorder = StreamRecorder(upstream.base_url)
    yield recorder
    recorder.stop()


@pytest.fixture(autouse=True)
def _parley_streams_follow_the_protocol(recorder: StreamRecorder) -> Iterator[None]:
    """Fails a test if any stream Parley sent Codex during it broke OpenAI's protocol."""
    yield
    streams, recorder.streams[:] = list(recorder.streams), []
    for raw in streams:
        # Open Responses' document has no namespace tools, which Codex sends and Parley echoes.
        validate_response_stream(raw, openresponses_spec=False)


@pytest.fixture(scope="module")
def shell_session(tmp_path_factory: pytest.TempPathFactory, recorder: StreamRecorder) -> tuple[Codex, str, Ran]:
    """One `codex exec` whose scripted model runs a shell command writing a marker into out.txt."""
    codex = Codex(tmp_path_factory.mktemp("codex-shell"), recorder.base_url)
    marker = f"hello-{uuid.uuid4().hex[:12]}"
    ran = codex.exec(f'exec_command {{"cmd": "echo {marker} > out.txt"}}')
    return codex, marker, ran


def test_the_pinned_codex_is_the_one_installed() -> None:
    node()
    assert installed_version("@openai/codex") == pinned_version("@openai/codex") == "0.169.0"


def test_exec_runs_the_shell_tool_and_prints_the_answer(
    shell_session: tuple[Codex, str, Ran], fake_upstream: FakeUpstream
) -> None:
    codex, marker, ran = shell_session

    assert ran.returncode == 0, ran.explain()
    assert (codex.work / "out.txt").read_text() == f"{marker}\n"
    # The scripted model's answer, after the tool: "Results: " and what Codex's shell tool reported.
    assert ran.stdout.startswith("Results:"), ran.explain()
    assert "Process exited with code 0" in ran.stdout
    # The model saw the call it made and the tool's output.
    last = upstream_requests(fake_upstream, marker)[-1]["messages"]
    [call] = tool_calls(last)
    assert call["function"]["name"] == "exec_command"
    assert json.loads(call["function"]["arguments"])["cmd"] == f"echo {marker} > out.txt"
    assert any("Process exited with code 0" in content for content in contents(last, "tool"))


def test_exec_resume_last_continues_the_session(
    shell_session: tuple[Codex, str, Ran], fake_upstream: FakeUpstream
) -> None:
    codex, marker, first = shell_session
    assert first.returncode == 0, first.explain()

    ran = codex.resume_last('exec_command {"cmd": "cat out.txt"}')

    assert ran.returncode == 0, ran.explain()
    # The second command read what the first one wrote, and the answer carries it.
    assert ran.stdout.startswith("Results:"), ran.explain()
    assert marker in ran.stdout
    # The upstream saw the earlier turn (its prompt, its tool call and output, its answer) before the new one.
    last = upstream_requests(fake_upstream, "cat out.txt")[-1]["messages"]
    assert [json.loads(c["function"]["arguments"])["cmd"] for c in tool_calls(last)] == [
        f"echo {marker} > out.txt",
        "cat out.txt",
    ]
    users = contents(last, "user")
    earlier = next(i for i, content in enumerate(users) if f"echo {marker}" in content)
    later = next(i for i, content in enumerate(users) if "cat out.txt" in content)
    assert earlier < later
    assert sum("Process exited with code 0" in content for content in contents(last, "tool")) == 2
    assert any("Process exited with code 0" in content for content in contents(last, "assistant"))


def test_create_goal_and_its_follow_up_output_without_call_id(
    tmp_path: Path, recorder: StreamRecorder, fake_upstream: FakeUpstream
) -> None:
    # After create_goal's own output, Codex adds a function_call_output with no call_id, answering by
    # name and namespace (`goal_objective` in `agent`, a call the model never made): the objective.
    codex = Codex(tmp_path, recorder.base_url)
    objective = f"objective-{uuid.uuid4().hex[:12]}"

    ran = codex.exec(f'create_goal {{"objective": "{objective}"}}')

    assert ran.returncode == 0, ran.explain()
    assert ran.stdout.startswith("Results:"), ran.explain()
    last = upstream_requests(fake_upstream, objective)[-1]["messages"]
    assert "create_goal" in [call["function"]["name"] for call in tool_calls(last)]
    # The goal's objective reached the model after the call: in create_goal's output and in the follow-up.
    after = last[next(i for i, m in enumerate(last) if m.get("tool_calls")) :]
    assert sum(objective in json.dumps(m.get("content")) for m in after) >= 2
