"""Streamed chat completions: what Parley adds on top of the upstream it proxies.

Starts two fake upstreams (tests/fake_upstream.py, one unpaced, one paced at
--delay-ms per chunk) and Parley in front of both, each as its own process on
127.0.0.1, then streams the same requests directly and through Parley:

  A. sequential, unpaced: time to first token and chunks per second;
  B. --concurrency clients at once against the paced upstream: time to first
     token under load, and errors.

Prints a table (see bench/README.md) and checks the targets. Run:

    .venv/bin/python bench/chat_stream.py [--tokens 1000] [--requests 50]
        [--concurrency 32] [--delay-ms 10] [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
FAKE_UPSTREAM = ROOT / "tests" / "fake_upstream.py"
MODEL = "fake-long"
HOST = "127.0.0.1"

# Targets; see bench/README.md.
MAX_ADDED_TTFT_P50_MS = 2.0
MIN_RATE_RATIO = 0.5
MAX_ADDED_TTFT_P99_CONCURRENT_MS = 20.0

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# -- child processes ----------------------------------------------------------


class Children:
    """The processes this run started; all of them are ended on the way out."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
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
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        for n, _, log in self.procs:
            if n == name and log.exists():
                return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for _, proc, _ in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


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


def start_fake(children: Children, name: str, delay_ms: float) -> str:
    proc = children.spawn(name, [sys.executable, str(FAKE_UPSTREAM), "--port", "0", "--delay-ms", str(delay_ms)])
    try:
        return _read_line(proc, 30)
    except RuntimeError as exc:
        raise RuntimeError(f"the fake upstream did not start: {exc}\n{children.log_tail(name)}") from exc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _parley_command() -> list[str]:
    script = Path(sys.executable).parent / "parley"
    return [str(script)] if script.exists() else [sys.executable, "-m", "parley"]


PARLEY_CONFIG = """\
inference:
  providers:
    fake:
      type: openai
      base_url: {fast}
      api_key: bench
      models: [{model}]
    paced:
      type: openai
      base_url: {paced}
      api_key: bench
      models: [{model}]
  aliases: {{}}
"""


def start_parley(children: Children, fast_url: str, paced_url: str) -> tuple[str, subprocess.Popen[bytes]]:
    config = children.workdir / "parley.yaml"
    config.write_text(PARLEY_CONFIG.format(fast=fast_url, paced=paced_url, model=MODEL))
    port = _free_port()
    env = {**os.environ, "PARLEY_DATA_DIR": str(children.workdir / "data")}
    args = [*_parley_command(), "serve", "--config", str(config), "--port", str(port), "--log-level", "warning"]
    proc = children.spawn("parley", args, env)
    base = f"http://{HOST}:{port}/v1"
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"Parley exited with status {proc.returncode}:\n{children.log_tail('parley')}")
            try:
                if client.get(f"{base}/health").status_code == 200:
                    return base, proc
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"Parley did not answer /v1/health within 60 s:\n{children.log_tail('parley')}")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process, from /proc (Linux only)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


# -- the client ---------------------------------------------------------------


@dataclass
class Sample:
    ttft: float | None = None  # seconds to the first non-empty content delta
    total: float = 0.0  # seconds to the end of the stream
    chunks: int = 0  # content chunks received
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.chunks / self.total if self.total > 0 else 0.0


async def stream_once(client: httpx.AsyncClient, base: str, model: str, tokens: int, timeout: float) -> Sample:
    """One streamed completion, read with as little client work as possible."""
    body = orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    sample = Sample()
    done = False
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", f"{base}/chat/completions", content=body) as response:
                if response.status_code != 200:
                    text = (await response.aread())[:200].decode(errors="replace")
                    sample.error = f"HTTP {response.status_code}: {text}"
                    return sample
                buffer = b""
                async for piece in response.aiter_raw():
                    *lines, buffer = (buffer + piece).split(b"\n")
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            continue
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
    except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    sample.total = time.perf_counter() - start
    if sample.error is None and (not done or sample.chunks != tokens):
        sample.error = f"short stream: {sample.chunks} of {tokens} chunks, [DONE] {'seen' if done else 'missing'}"
    return sample


def _client(connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        headers={"Content-Type": "application/json", "Authorization": "Bearer bench"},
        timeout=httpx.Timeout(connect=5, read=15, write=5, pool=15),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


# -- scenarios ----------------------------------------------------------------


@dataclass
class Target:
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


async def sequential(direct: Target, parley: Target, args: argparse.Namespace, warmup: int) -> None:
    async with _client(2) as client:
        for _ in range(warmup):
            for target in (direct, parley):
                await stream_once(client, target.base, target.model, args.tokens, args.request_timeout)
        if not warmup:
            # Interleaved, so that drift (thermal, other load) hits both sides alike.
            for _ in range(args.requests):
                for target in (direct, parley):
                    target.samples.append(
                        await stream_once(client, target.base, target.model, args.tokens, args.request_timeout)
                    )


async def concurrent(target: Target, args: argparse.Namespace) -> None:
    async with _client(args.concurrency + 4) as client:
        # Warm the connection pools (ours, and Parley's to the upstream) first.
        await asyncio.gather(
            *(stream_once(client, target.base, target.model, 2, args.request_timeout) for _ in range(args.concurrency))
        )
        # Starts spread over one stream's length, so that there are about
        # `concurrency` streams in flight at any time rather than bursts of them.
        stagger = args.paced_tokens * args.delay_ms / 1000 / args.concurrency

        async def client_loop(i: int) -> None:
            await asyncio.sleep(i * stagger)
            for _ in range(args.streams_per_client):
                target.samples.append(
                    await stream_once(client, target.base, target.model, args.paced_tokens, args.request_timeout)
                )

        await asyncio.gather(*(client_loop(i) for i in range(args.concurrency)))


# -- figures ------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile: with fewer than 100 values, p99 is the largest."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def summarize(target: Target) -> dict[str, Any]:
    ttfts = [s.ttft for s in target.ok if s.ttft is not None]
    rates = [s.rate for s in target.ok]
    return {
        "requests": len(target.samples),
        "errors": len(target.errors),
        "error_examples": sorted(set(target.errors))[:3],
        "ttft_p50_ms": _ms(percentile(ttfts, 50)),
        "ttft_p99_ms": _ms(percentile(ttfts, 99)),
        "ttft_max_ms": _ms(max(ttfts) if ttfts else None),
        "chunks_per_s_median": round(statistics.median(rates), 1) if rates else None,
        "stream_s_median": round(statistics.median(s.total for s in target.ok), 4) if target.ok else None,
    }


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def compare(direct: dict[str, Any], parley: dict[str, Any]) -> dict[str, Any]:
    rate_d, rate_p = direct["chunks_per_s_median"], parley["chunks_per_s_median"]
    return {
        "added_ttft_p50_ms": _diff(parley["ttft_p50_ms"], direct["ttft_p50_ms"]),
        "added_ttft_p99_ms": _diff(parley["ttft_p99_ms"], direct["ttft_p99_ms"]),
        "rate_ratio": round(rate_p / rate_d, 3) if rate_d and rate_p else None,
    }


def check_targets(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    def row(name: str, value: Any, passed: bool, unit: str = "") -> dict[str, Any]:
        return {"target": name, "value": value, "unit": unit, "pass": bool(passed)}

    added_a = a["compare"]["added_ttft_p50_ms"]
    ratio = a["compare"]["rate_ratio"]
    errors_b = b["direct"]["errors"] + b["parley"]["errors"]
    added_b = b["compare"]["added_ttft_p99_ms"]
    return [
        row(
            f"A: median added TTFT < {MAX_ADDED_TTFT_P50_MS:g} ms",
            added_a,
            added_a is not None and added_a < MAX_ADDED_TTFT_P50_MS,
            "ms",
        ),
        row(
            f"A: parley chunk rate >= {MIN_RATE_RATIO:.0%} of direct",
            ratio,
            ratio is not None and ratio >= MIN_RATE_RATIO,
            "x",
        ),
        row("B: no errors", errors_b, errors_b == 0),
        row(
            f"B: p99 added TTFT < {MAX_ADDED_TTFT_P99_CONCURRENT_MS:g} ms",
            added_b,
            added_b is not None and added_b < MAX_ADDED_TTFT_P99_CONCURRENT_MS,
            "ms",
        ),
    ]


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def print_report(report: dict[str, Any]) -> None:
    cfg, a, b = report["config"], report["sequential"], report["concurrent"]
    print()
    print(
        f"A. sequential, unpaced upstream: {cfg['requests']} streams of {cfg['tokens']} chunks each way, interleaved"
    )
    _print_table(a)
    if a.get("parley_cpu_us_per_chunk") is not None:
        print(f"   Parley CPU per proxied chunk: {a['parley_cpu_us_per_chunk']:.1f} us")
    print()
    print(
        f"B. {cfg['concurrency']} concurrent clients x {cfg['streams_per_client']} streams of "
        f"{cfg['paced_tokens']} chunks, upstream paced at {cfg['delay_ms']:g} ms/chunk"
    )
    _print_table(b)
    if b.get("parley_cpu_share") is not None:
        print(f"   Parley CPU while proxying: {b['parley_cpu_share']:.0%} of one core")
    print()
    print("Targets")
    for t in report["targets"]:
        value = _fmt(t["value"], ".3f" if t["unit"] == "x" else ".2f")
        print(f"   {'PASS' if t['pass'] else 'FAIL'}  {t['target']:<42} {value} {t['unit']}")
    for phase, figures in (("A", a), ("B", b)):
        for side in ("direct", "parley"):
            for example in figures[side]["error_examples"]:
                print(f"   {phase} {side} error: {example}")
    print(f"\n({report['elapsed_s']:.0f} s, {cfg['cpus']} CPUs, Python {cfg['python']})")


def _print_table(figures: dict[str, Any]) -> None:
    d, p, c = figures["direct"], figures["parley"], figures["compare"]
    rows = [
        ("TTFT p50 (ms)", d["ttft_p50_ms"], p["ttft_p50_ms"], _signed(c["added_ttft_p50_ms"])),
        ("TTFT p99 (ms)", d["ttft_p99_ms"], p["ttft_p99_ms"], _signed(c["added_ttft_p99_ms"])),
        ("chunks/s (median)", d["chunks_per_s_median"], p["chunks_per_s_median"], _ratio(c["rate_ratio"])),
        ("stream time (s, median)", d["stream_s_median"], p["stream_s_median"], ""),
        ("errors / requests", f"{d['errors']}/{d['requests']}", f"{p['errors']}/{p['requests']}", ""),
    ]
    print(f"   {'':<24}{'direct':>12}{'parley':>12}   {'added / ratio'}")
    for label, direct, parley, extra in rows:
        spec = ".0f" if label.startswith("chunks") else ".3f" if label.startswith("stream") else ".2f"
        print(f"   {label:<24}{_fmt(direct, spec):>12}{_fmt(parley, spec):>12}   {extra}")


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f} ms"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"x{value:.3f}"


# -- main ---------------------------------------------------------------------


async def run(args: argparse.Namespace, fast: str, paced: str, parley: str, parley_pid: int) -> dict[str, Any]:
    report: dict[str, Any] = {}

    direct_a = Target("direct", fast, MODEL)
    parley_a = Target("parley", parley, f"fake/{MODEL}")
    await sequential(direct_a, parley_a, args, warmup=args.warmup)
    cpu_before = cpu_seconds(parley_pid)
    await sequential(direct_a, parley_a, args, warmup=0)
    cpu_after = cpu_seconds(parley_pid)
    a = {"direct": summarize(direct_a), "parley": summarize(parley_a)}
    a["compare"] = compare(a["direct"], a["parley"])
    proxied = sum(s.chunks for s in parley_a.samples)
    # Parley idles during the direct streams, so this is what each chunk it proxies costs it.
    if cpu_before is not None and cpu_after is not None and proxied:
        a["parley_cpu_us_per_chunk"] = round((cpu_after - cpu_before) * 1e6 / proxied, 2)
    report["sequential"] = a

    direct_b = Target("direct", paced, MODEL)
    parley_b = Target("parley", parley, f"paced/{MODEL}")
    await concurrent(direct_b, args)
    cpu_before, wall_before = cpu_seconds(parley_pid), time.perf_counter()
    await concurrent(parley_b, args)
    cpu_after, wall = cpu_seconds(parley_pid), time.perf_counter() - wall_before
    b = {"direct": summarize(direct_b), "parley": summarize(parley_b)}
    b["compare"] = compare(b["direct"], b["parley"])
    if cpu_before is not None and cpu_after is not None:
        b["parley_cpu_share"] = round((cpu_after - cpu_before) / wall, 3)
    report["concurrent"] = b
    report["targets"] = check_targets(a, b)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1000, help="chunks per stream in scenario A (default 1000)")
    parser.add_argument("--requests", type=int, default=50, help="measured streams each way in scenario A (default 50)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured streams each way before A (default 3)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients in scenario B (default 32)")
    parser.add_argument("--streams-per-client", type=int, default=8, help="streams per client in B (default 8)")
    parser.add_argument("--paced-tokens", type=int, default=200, help="chunks per stream in B (default 200)")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="upstream pause per chunk in B (default 10)")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="bound on each stream, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on the whole run, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    args = parser.parse_args(argv)
    if min(args.tokens, args.requests, args.concurrency, args.streams_per_client, args.paced_tokens) < 1:
        parser.error("counts must be at least 1")
    return args


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    children = Children(workdir)
    try:
        with _terminate_on_sigterm():
            fast = start_fake(children, "fake-fast", 0)
            paced = start_fake(children, "fake-paced", args.delay_ms)
            parley, proc = start_parley(children, fast, paced)
            print(f"upstream {fast} (unpaced), {paced} ({args.delay_ms:g} ms/chunk); parley {parley}", flush=True)
            try:
                report = _run_loop(run(args, fast, paced, parley, proc.pid), args.max_seconds)
            except TimeoutError:
                print(f"gave up after --max-seconds {args.max_seconds:g}", file=sys.stderr)
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

    report["config"] = {
        "tokens": args.tokens,
        "requests": args.requests,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "streams_per_client": args.streams_per_client,
        "paced_tokens": args.paced_tokens,
        "delay_ms": args.delay_ms,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_report(report)
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 1 if args.check and not all(t["pass"] for t in report["targets"]) else 0


def _run_loop(coro: Any, max_seconds: float) -> dict[str, Any]:
    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(max_seconds):
            return await coro  # type: ignore[no-any-return]

    try:
        import uvloop  # the client's own overhead is part of both sides; keep it small

        return uvloop.run(bounded())  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.run(bounded())


if __name__ == "__main__":
    sys.exit(main())
