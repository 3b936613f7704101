"""What the benchmarks share: child processes, a lean streaming client, and the figures.

A benchmark starts what it needs as child processes on 127.0.0.1 (fake
upstreams from tests/fake_upstream.py, and `parley serve` with a configuration
of its own, in a temporary directory), runs its scenarios on one event loop
within a time bound, and ends every child on the way out, whether it
finished, failed or was interrupted:

    def start(children: Children) -> Coroutine[Any, Any, dict[str, Any]]:
        upstream = start_fake(children, "fake", delay_ms=0)
        parley, proc = start_parley(children, parley_config({"fake": (upstream, ["fake-long"])}))
        return scenarios(upstream, parley)

    report = run_benchmark(start, max_seconds=600)   # or an exit status
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import pstats
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import yaml

from parley.inference import http1

ROOT = Path(__file__).resolve().parent.parent
FAKE_UPSTREAM = ROOT / "tests" / "fake_upstream.py"
HOST = "127.0.0.1"

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# -- child processes ----------------------------------------------------------


class Children:
    """The processes this run started; all of them are ended on the way out."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self._stop_signals: dict[int, int] = {}
        self._postgres: Any = None

    def database(self, kind: str, name: str) -> str:
        """A new, empty database's URL: `sqlite`, a file in the work directory; `postgresql`, one on a throwaway
        server with pgvector (tests/postgres.py), started at the first and stopped with the children."""
        if kind == "sqlite":
            return f"sqlite:///{self.workdir / f'{name}.db'}"
        if self._postgres is None:
            from tests.postgres import PostgresServer

            self._postgres = PostgresServer()
            self._postgres.start()
        return str(self._postgres.create_database(name))

    def spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None, stop_signal: int = signal.SIGTERM
    ) -> subprocess.Popen[bytes]:
        """Starts a process, its stderr going to NAME.log in the work directory; `stop_signal` ends it."""
        log = self.workdir / f"{name}.log"
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        self.procs.append((name, proc, log))
        self._stop_signals[proc.pid] = stop_signal
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        for n, _, log in self.procs:
            if n == name and log.exists():
                return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(self._stop_signals[proc.pid])
        deadline = time.monotonic() + 5
        for _, proc, _ in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._postgres is not None:
            self._postgres.stop()


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line the process prints, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"no output within {timeout:.0f} s")
    line = proc.stdout.readline().decode().strip()
    if not line:
        raise RuntimeError(f"exited with status {proc.wait()}")
    return line


def start_fake(children: Children, name: str, delay_ms: float, *, burst: bool = False) -> str:
    """A fake upstream pausing `delay_ms` before each streamed chunk (`burst`: unpaced, the chunks after the first
    in one write); returns its base URL."""
    command = [sys.executable, str(FAKE_UPSTREAM), "--port", "0", "--delay-ms", str(delay_ms)]
    proc = children.spawn(name, command + (["--burst"] if burst else []))
    try:
        return _read_line(proc, 30)
    except RuntimeError as exc:
        raise RuntimeError(f"the fake upstream did not start: {exc}\n{children.log_tail(name)}") from exc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _parley_command() -> list[str]:
    script = Path(sys.executable).parent / "parley"
    return [str(script)] if script.exists() else [sys.executable, "-m", "parley"]


def parley_config(providers: dict[str, tuple[str, list[str]]], storage_url: str | None = None) -> str:
    """Parley's YAML configuration: `{provider name: (upstream base URL, models)}`, and the database."""
    config: dict[str, Any] = {
        "inference": {
            "providers": {
                name: {"type": "openai", "base_url": url, "api_key": "bench", "models": models}
                for name, (url, models) in providers.items()
            },
            "aliases": {},
        }
    }
    if storage_url is not None:
        config["storage"] = {"url": storage_url}
    return yaml.safe_dump(config, sort_keys=False)


def storage_name(url: str | None) -> str:
    """What `parley_config(..., url)` stores in, for a report: the URL's scheme, never its password."""
    return "SQLite (default)" if url is None else url.split(":", 1)[0]


def start_parley(
    children: Children, config: str, *, name: str = "parley", profile: Path | None = None
) -> tuple[str, subprocess.Popen[bytes]]:
    """`parley serve` with this YAML configuration, on a free port; returns its base URL once it answers.

    Its data directory is one of the run's own. With `profile`, Parley runs
    under cProfile, which writes its statistics there when Parley stops.
    """
    config_file = children.workdir / f"{name}.yaml"
    config_file.write_text(config)
    port = free_port()
    # The configuration is the file's alone: PARLEY_* variables of the caller's shell would override it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_DATA_DIR"] = str(children.workdir / "data")
    command, stop = _parley_command(), signal.SIGTERM
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "parley"]
        # uvicorn re-raises the signal that stopped it once it has shut down. SIGTERM
        # would then kill the process before cProfile writes; SIGINT unwinds, and it writes.
        stop = signal.SIGINT
    args = [*command, "serve", "--config", str(config_file), "--port", str(port), "--log-level", "warning"]
    proc = children.spawn(name, args, env, stop)
    base = f"http://{HOST}:{port}/v1"
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"Parley exited with status {proc.returncode}:\n{children.log_tail(name)}")
            try:
                if client.get(f"{base}/health").status_code == 200:
                    return base, proc
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"Parley did not answer /v1/health within 60 s:\n{children.log_tail(name)}")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process, from /proc (Linux only)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


# -- the client ---------------------------------------------------------------


def client(connections: int) -> httpx.AsyncClient:
    """An httpx client for JSON requests, with `connections` connections kept open."""
    return httpx.AsyncClient(
        headers={"Content-Type": "application/json", "Authorization": "Bearer bench"},
        timeout=httpx.Timeout(connect=5, read=15, write=5, pool=15),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


class StreamClient:
    """POSTs a JSON body and streams the answer back, over kept-alive HTTP/1.1 connections.

    The load generator shares the machine's cores with what it measures. httpx
    (httpcore and anyio, with Python parsing every chunk) took about 90% of a
    core to read responses_stream's 64 paced streams, which left Parley short
    of CPU and made that figure the client's. This reads with Parley's own
    HTTP/1.1 client (`parley.inference.http1`: asyncio transports and llhttp),
    which costs a fraction of that. Every side of every comparison reads with it.
    """

    _HEAD = b"Content-Type: application/json\r\nAuthorization: Bearer bench\r\n"

    def __init__(self, connections: int) -> None:
        self._connections = connections
        self._pools: dict[str, http1.ConnectionPool] = {}

    def post(self, url: str, body: bytes) -> Any:
        """`async with streams.post(url, body) as response:` (`response.status`, `aiter_bytes()`, `aread()`)."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        pool = self._pools.get(origin)
        if pool is None:
            timeouts = http1.Timeouts(connect=5, read=15, write=5, pool=15)
            pool = self._pools[origin] = http1.ConnectionPool(
                origin, max_connections=self._connections, timeouts=timeouts
            )
        return pool.stream(parts.path.encode(), self._HEAD, body)

    async def __aenter__(self) -> StreamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for pool in self._pools.values():
            await pool.aclose()


@dataclass
class Sample:
    """One stream, as the client saw it."""

    ttft: float | None = None  # seconds to the first text (non-empty content delta, or output_text.delta)
    total: float = 0.0  # seconds to the end of the stream
    chunks: int = 0  # text chunks (or text delta events) received
    events: int = 0  # every SSE frame but [DONE]
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.chunks / self.total if self.total > 0 else 0.0

    @property
    def event_rate(self) -> float:
        return self.events / self.total if self.total > 0 else 0.0


async def stream_chat(client: StreamClient, url: str, body: bytes, expect_chunks: int | None, timeout: float) -> Sample:
    """One streamed chat completion, read with as little client work as possible.

    Splits the raw stream into `data:` lines and decodes each with orjson. An
    error unless it is a 200 that ends in `data: [DONE]` after `expect_chunks`
    content chunks (any number, if None).
    """
    sample = Sample()
    done = False
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with client.post(url, body) as response:
                if response.status != 200:
                    text = (await response.aread())[:200].decode(errors="replace")
                    sample.error = f"HTTP {response.status}: {text}"
                    return sample
                buffer = b""
                async for piece in response.aiter_bytes():
                    *lines, buffer = (buffer + piece).split(b"\n")
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            continue
                        sample.events += 1
                        payload = orjson.loads(data)
                        if "error" in payload:
                            sample.error = f"error frame: {payload['error']}"
                            return sample
                        choices = payload.get("choices")
                        if choices and choices[0].get("delta", {}).get("content"):
                            sample.chunks += 1
                            if sample.ttft is None:
                                sample.ttft = time.perf_counter() - start
    except TimeoutError:
        sample.error = f"timed out after {timeout:.0f} s"
    except (http1.HTTPError, orjson.JSONDecodeError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    sample.total = time.perf_counter() - start
    if sample.error is None and (not done or (expect_chunks is not None and sample.chunks != expect_chunks)):
        wanted = "" if expect_chunks is None else f" of {expect_chunks}"
        sample.error = f"short stream: {sample.chunks}{wanted} chunks, [DONE] {'seen' if done else 'missing'}"
    return sample


# -- figures ------------------------------------------------------------------


@dataclass
class Side:
    """One way of reaching the upstream ("direct", or through "parley") and what it gave."""

    name: str
    base: str
    model: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None]

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.samples if s.error is not None]


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile: with fewer than 100 values, p99 is the largest."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def summarize(
    side: Side, rate: Callable[[Sample], float] = lambda s: s.rate, rate_key: str = "chunks_per_s_median"
) -> dict[str, Any]:
    """Counts, errors, TTFT percentiles and the median rate (`rate_key`) of one side's streams."""
    ttfts = [s.ttft for s in side.ok if s.ttft is not None]
    rates = [rate(s) for s in side.ok]
    return {
        "requests": len(side.samples),
        "errors": len(side.errors),
        "error_examples": sorted(set(side.errors))[:3],
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "ttft_p99_ms": ms(percentile(ttfts, 99)),
        "ttft_max_ms": ms(max(ttfts) if ttfts else None),
        rate_key: round(statistics.median(rates), 1) if rates else None,
        "stream_s_median": round(statistics.median(s.total for s in side.ok), 4) if side.ok else None,
    }


def compare(direct: dict[str, Any], parley: dict[str, Any], rate_key: str = "chunks_per_s_median") -> dict[str, Any]:
    """Parley's added TTFT at each percentile, and its median rate over the direct one."""
    rate_d, rate_p = direct[rate_key], parley[rate_key]
    return {
        "added_ttft_p50_ms": diff(parley["ttft_p50_ms"], direct["ttft_p50_ms"]),
        "added_ttft_p99_ms": diff(parley["ttft_p99_ms"], direct["ttft_p99_ms"]),
        "rate_ratio": round(rate_p / rate_d, 3) if rate_d and rate_p else None,
    }


def target(name: str, value: Any, passed: bool, unit: str = "") -> dict[str, Any]:
    """One target's row in the report."""
    return {"target": name, "value": value, "unit": unit, "pass": bool(passed)}


# -- report -------------------------------------------------------------------


def fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def signed_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f} ms"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"x{value:.3f}"


Row = tuple[str, Any, Any, str, str]  # label, direct, parley, added or ratio, format spec


def print_comparison(rows: list[Row]) -> None:
    """A direct-versus-parley table, indented under its heading."""
    print(f"   {'':<24}{'direct':>12}{'parley':>12}   {'added / ratio'}")
    for label, direct, parley, extra, spec in rows:
        print(f"   {label:<24}{fmt(direct, spec):>12}{fmt(parley, spec):>12}   {extra}")


def print_targets(targets: list[dict[str, Any]], width: int = 42) -> None:
    print("Targets")
    for t in targets:
        value = fmt(t["value"], ".3f" if t["unit"] == "x" else ".2f")
        print(f"   {'PASS' if t['pass'] else 'FAIL'}  {t['target']:<{width}} {value} {t['unit']}")


def print_footer(report: dict[str, Any]) -> None:
    """The last line: how long the run took, on how many CPUs, under which Python."""
    cfg = report["config"]
    print(f"\n({report['elapsed_s']:.0f} s, {cfg['cpus']} CPUs, Python {cfg['python']})")


def print_profile(path: Path, top: int = 25) -> None:
    """The functions Parley spent most of its own time in, from a cProfile file."""
    if not path.exists():
        print(f"\n(no profile at {path}: Parley did not stop cleanly)")
        return
    print(f"\nParley's profile ({path}), top {top} by own time:")
    pstats.Stats(str(path), stream=sys.stdout).strip_dirs().sort_stats("tottime").print_stats(top)
    # A coroutine's cumulative time is what it ran, without the time it spent awaiting.
    print(f"Parley's own functions, top {top} by cumulative time:")
    pstats.Stats(str(path), stream=sys.stdout).sort_stats("cumulative").print_stats(r"[/\\]parley[/\\]", top)


# -- running ------------------------------------------------------------------


@contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    # Ctrl-C raises KeyboardInterrupt; make SIGTERM unwind the same way, so children are ended.
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_loop(coro: Coroutine[Any, Any, dict[str, Any]], max_seconds: float) -> dict[str, Any]:
    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(max_seconds):
            return await coro

    try:
        import uvloop  # the client's own overhead is part of both sides; keep it small

        return uvloop.run(bounded())  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.run(bounded())


def run_benchmark(
    start: Callable[[Children], Coroutine[Any, Any, dict[str, Any]]], max_seconds: float
) -> dict[str, Any] | int:
    """Calls `start` to launch the children and runs the coroutine it returns, within `max_seconds`.

    Returns the coroutine's report, or an exit status: 2 when something did
    not start or the run took too long, 130 when interrupted. The children
    and their directory are gone when it returns.
    """
    workdir = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    children = Children(workdir)
    try:
        with _terminate_on_sigterm():
            coro = start(children)
            try:
                return _run_loop(coro, max_seconds)
            except TimeoutError:
                print(f"gave up after --max-seconds {max_seconds:g}", file=sys.stderr)
                return 2
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        children.close()
        shutil.rmtree(workdir, ignore_errors=True)


def report_config(options: dict[str, Any]) -> dict[str, Any]:
    """The report's `config`: the run's options, then the machine's CPU count and Python version."""
    return {**options, "cpus": os.cpu_count(), "python": platform.python_version()}


def conclude(report: dict[str, Any], json_path: Path | None, check: bool) -> int:
    """Writes the report to `json_path` if given; the exit status, 1 if `check` and a target is missed."""
    if json_path:
        json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 1 if check and not all(t["pass"] for t in report["targets"]) else 0
