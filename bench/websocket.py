"""WebSocket mode: responses one after another on one WebSocket, against the same responses streamed over HTTP.

Starts two fake upstreams (tests/fake_upstream.py, one unpaced, one paced at
--delay-ms per chunk) and Parley in front of both, each as its own process on
127.0.0.1. Then, one response at a time, alternating the two ways so that drift
on the machine hits both alike:

  - http: `POST /v1/responses` with `"stream": true`, read as SSE over kept-alive
    connections (the baseline, measured in the same run);
  - websocket: `response.create` messages on one WebSocket on `/v1/responses`,
    opened once, each response read to its `response.completed`.

in two scenarios: A, --requests responses of --tokens text deltas from the
unpaced upstream (events per second: what Parley can pass on); A', the same
number of 16-token responses from the paced upstream (time to the first delta
without the unpaced burst). Every figure is reported as websocket over http.
Prints a table (see bench/README.md) and checks the targets. Run:

    .venv/bin/python bench/websocket.py [--requests 100] [--tokens 1000] [--delay-ms 10]
        [--storage-url URL] [--no-store] [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import struct
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from _common import (
    Children,
    Sample,
    Side,
    StreamClient,
    conclude,
    cpu_seconds,
    fmt,
    ms,
    parley_config,
    percentile,
    print_footer,
    print_targets,
    report_config,
    run_benchmark,
    start_fake,
    start_parley,
    storage_name,
    target,
)
from responses_stream import PACED_SEQUENTIAL_TOKENS, PROMPT, stream_response

MODEL = "fake-long"
# Targets; see bench/README.md.
MAX_TTFD_RATIO = 1.0  # the WebSocket's median time to the first delta, over HTTP's: at most
MIN_EVENT_RATE_RATIO = 0.9  # its median events per second, over HTTP's: at least

_TERMINAL = ("response.completed", "response.failed", "response.incomplete")


# -- the WebSocket client -------------------------------------------------------


class SocketClient:
    """A WebSocket client that costs about what `StreamClient` costs a streamed SSE event.

    The client shares the machine's cores with what it measures (see `StreamClient`). The `websockets`
    library, which openai-python uses, took 7 to 8 us of CPU a message here (its frames parsed one by one
    in Python, a future each), against about 2.5 us an SSE event for `StreamClient`: over a WebSocket, the
    figure was then partly the client's. This one reads the socket a buffer at a time and splits the frames
    of each read in a loop: a server's frames are not masked, and Parley's are never fragmented. It answers
    pings (uvicorn sends one every 20 s, and closes a socket that does not answer).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._buffer = b""  # what was read and not yet taken from `_offset` on
        self._offset = 0

    @classmethod
    async def open(cls, url: str) -> SocketClient:
        """The handshake of a WebSocket on `url` (ws://host:port/path), with the benchmark's key."""
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer bench\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"WebSocket refused: {head.splitlines()[0].decode(errors='replace')}")
        return cls(reader, writer)

    def send(self, payload: bytes, opcode: int = 0x1) -> None:
        """One message (a text frame by default), masked as a client's must be."""
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        repeated = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
        self._writer.write(head + mask + masked)

    async def messages(self) -> AsyncIterator[bytes]:
        """The data messages received, as they come; ends when the server closes the socket."""
        while True:
            buffer = self._buffer
            while len(buffer) - self._offset >= 2:
                start = self._offset
                opcode, length = buffer[start] & 0x0F, buffer[start + 1] & 0x7F
                header = 2
                if length == 126:
                    if len(buffer) - start < 4:
                        break
                    (length,) = struct.unpack_from("!H", buffer, start + 2)
                    header = 4
                elif length == 127:
                    if len(buffer) - start < 10:
                        break
                    (length,) = struct.unpack_from("!Q", buffer, start + 2)
                    header = 10
                end = start + header + length
                if end > len(buffer):
                    break
                self._offset = end
                if opcode == 0x9:
                    self.send(buffer[start + header : end], 0xA)  # a ping: its pong
                elif opcode == 0x8:
                    return
                elif opcode in (0x1, 0x2):
                    yield buffer[start + header : end]
            # What is left of the last read (part of a frame), and the next read after it.
            self._buffer, self._offset = buffer[self._offset :], 0
            piece = await self._reader.read(1 << 16)
            if not piece:
                return
            self._buffer += piece

    async def aclose(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


def request(model: str, tokens: int, store: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": PROMPT, "max_output_tokens": tokens}
    if not store:
        body["store"] = False
    return body


async def http_response(client: StreamClient, base: str, body: dict[str, Any], tokens: int, timeout: float) -> Sample:
    return await stream_response(client, f"{base}/responses", orjson.dumps({**body, "stream": True}), tokens, timeout)


async def websocket_response(socket: SocketClient, body: dict[str, Any], tokens: int, timeout: float) -> Sample:
    """One response on the open WebSocket, read as leanly as `stream_response` reads SSE: each message decoded
    with orjson. An error unless it brings `tokens` text deltas and ends `response.completed`."""
    sample = Sample()
    last: str | None = None
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            socket.send(orjson.dumps({"type": "response.create", **body}))
            async for message in socket.messages():
                sample.events += 1
                event = orjson.loads(message)
                last = event["type"]
                if last == "response.output_text.delta":
                    sample.chunks += 1
                    if sample.ttft is None:
                        sample.ttft = time.perf_counter() - start
                elif last == "error" or last in _TERMINAL:
                    break
    except TimeoutError:
        sample.error = f"timed out after {timeout:.0f} s"
    except Exception as exc:  # a closed socket, a message that is not JSON
        sample.error = f"{type(exc).__name__}: {exc}"
    sample.total = time.perf_counter() - start
    if sample.error is None and (sample.chunks != tokens or last != "response.completed"):
        sample.error = f"short response: {sample.chunks} of {tokens} text deltas, last event {last}"
    return sample


async def sequential(parley: str, model: str, tokens: int, requests: int, args: argparse.Namespace) -> list[Side]:
    """`requests` responses each way, one at a time, alternating; the sides' samples."""
    http, websocket = Side("http", parley, model), Side("websocket", parley, model)
    body = request(model, tokens, args.store)
    url = parley.replace("http://", "ws://") + "/responses"
    socket = await SocketClient.open(url)
    async with StreamClient(1) as client:
        for _ in range(args.warmup):
            await http_response(client, parley, body, tokens, args.request_timeout)
            await websocket_response(socket, body, tokens, args.request_timeout)
        for _ in range(requests):
            http.samples.append(await http_response(client, parley, body, tokens, args.request_timeout))
            websocket.samples.append(await websocket_response(socket, body, tokens, args.request_timeout))
    await socket.aclose()
    return [http, websocket]


def summary(side: Side) -> dict[str, Any]:
    ttfds = [s.ttft for s in side.ok if s.ttft is not None]
    totals = [s.total for s in side.ok]
    return {
        "requests": len(side.samples),
        "errors": len(side.errors),
        "error_examples": sorted(set(side.errors))[:3],
        "ttfd_p50_ms": ms(percentile(ttfds, 50)),
        "ttfd_p99_ms": ms(percentile(ttfds, 99)),
        "total_p50_ms": ms(percentile(totals, 50)),
        "total_p99_ms": ms(percentile(totals, 99)),
        "events_per_s_median": round(statistics.median(s.event_rate for s in side.ok), 1) if side.ok else None,
    }


# The figures compared, each as websocket over http: label, key, format.
FIGURES = (
    ("time to first delta p50 (ms)", "ttfd_p50_ms", ".2f"),
    ("time to first delta p99 (ms)", "ttfd_p99_ms", ".2f"),
    ("total p50 (ms)", "total_p50_ms", ".2f"),
    ("total p99 (ms)", "total_p99_ms", ".2f"),
    ("events/s (median)", "events_per_s_median", ".0f"),
)


def figures(sides: list[Side]) -> dict[str, Any]:
    http, websocket = summary(sides[0]), summary(sides[1])
    ratios = {
        key: round(websocket[key] / http[key], 3) if http[key] and websocket[key] is not None else None
        for _, key, _ in FIGURES
    }
    return {"http": http, "websocket": websocket, "ratio": ratios}


def check_targets(a: dict[str, Any], a_paced: dict[str, Any]) -> list[dict[str, Any]]:
    ttfd_a, ttfd_paced = a["ratio"]["ttfd_p50_ms"], a_paced["ratio"]["ttfd_p50_ms"]
    rate = a["ratio"]["events_per_s_median"]
    errors = sum(figures[side]["errors"] for figures in (a, a_paced) for side in ("http", "websocket"))
    return [
        target(
            f"A: p50 first delta, ws/http <= {MAX_TTFD_RATIO:g}",
            ttfd_a,
            ttfd_a is not None and ttfd_a <= MAX_TTFD_RATIO,
            "x",
        ),
        target(
            f"A': p50 first delta, ws/http <= {MAX_TTFD_RATIO:g}",
            ttfd_paced,
            ttfd_paced is not None and ttfd_paced <= MAX_TTFD_RATIO,
            "x",
        ),
        target(
            f"A: events/s, ws/http >= {MIN_EVENT_RATE_RATIO:g}",
            rate,
            rate is not None and rate >= MIN_EVENT_RATE_RATIO,
            "x",
        ),
        target("no errors", errors, errors == 0),
    ]


def print_scenario(title: str, result: dict[str, Any]) -> None:
    print(title)
    print(f"   {'':<30}{'http':>12}{'websocket':>12}   ratio")
    for label, key, spec in FIGURES:
        ratio = result["ratio"][key]
        line = f"   {label:<30}{fmt(result['http'][key], spec):>12}{fmt(result['websocket'][key], spec):>12}"
        print(f"{line}   {'-' if ratio is None else f'x{ratio:.3f}'}")
    errors = f"{result['http']['errors']}/{result['http']['requests']}"
    print(
        f"   {'errors / requests':<30}{errors:>12}{result['websocket']['errors']:>10}/{result['websocket']['requests']}"
    )
    cpu = result.get("cpu_us_per_event")
    if cpu:
        for who, key in (("Parley", "parley_us"), ("client", "client_us")):
            http, websocket = cpu["http"][key], cpu["websocket"][key]
            print(f"   {who} CPU per event: http {http:.1f} us, websocket {websocket:.1f} us (x{websocket / http:.3f})")


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    storage = cfg["storage"] if cfg["store"] else "not stored"
    print()
    print_scenario(
        f"A. unpaced upstream: {cfg['requests']} responses of {cfg['tokens']} tokens each way, alternating ({storage})",
        report["sequential"],
    )
    print()
    print_scenario(
        f"A'. upstream paced at {cfg['delay_ms']:g} ms/token: {cfg['requests']} responses of "
        f"{PACED_SEQUENTIAL_TOKENS} tokens each way, alternating",
        report["sequential_paced"],
    )
    print()
    print_targets(report["targets"])
    for key in ("sequential", "sequential_paced"):
        for side in ("http", "websocket"):
            for example in report[key][side]["error_examples"]:
                print(f"   {key} {side} error: {example}")
    print_footer(report)


async def cpu_per_event(parley: str, pid: int, tokens: int, args: argparse.Namespace) -> dict[str, Any]:
    """Parley's CPU per event sent, and the client's per event read, each way on its own: --requests
    responses one way, then the other's."""
    cost: dict[str, Any] = {}
    body = request(f"fake/{MODEL}", tokens, args.store)
    socket = await SocketClient.open(parley.replace("http://", "ws://") + "/responses")
    async with StreamClient(1) as client:
        for name in ("http", "websocket"):
            before, client_before, events = cpu_seconds(pid), time.process_time(), 0
            for _ in range(args.requests):
                if name == "http":
                    sample = await http_response(client, parley, body, tokens, args.request_timeout)
                else:
                    sample = await websocket_response(socket, body, tokens, args.request_timeout)
                events += sample.events
            after, client_after = cpu_seconds(pid), time.process_time()
            if before is None or after is None or not events:
                break
            cost[name] = {
                "parley_us": round((after - before) * 1e6 / events, 2),
                "client_us": round((client_after - client_before) * 1e6 / events, 2),
            }
    await socket.aclose()
    return cost


async def run(args: argparse.Namespace, parley: str, pid: int) -> dict[str, Any]:
    a = figures(await sequential(parley, f"fake/{MODEL}", args.tokens, args.requests, args))
    a["cpu_us_per_event"] = await cpu_per_event(parley, pid, args.tokens, args)
    a_paced = figures(await sequential(parley, f"paced/{MODEL}", PACED_SEQUENTIAL_TOKENS, args.requests, args))
    return {"sequential": a, "sequential_paced": a_paced, "targets": check_targets(a, a_paced)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="responses each way in each scenario (default 100)")
    parser.add_argument("--tokens", type=int, default=1000, help="tokens per response in scenario A (default 1000)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured responses each way first (default 3)")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="upstream pause per token in A' (default 10)")
    parser.add_argument(
        "--storage-url", help="Parley's database, a SQLAlchemy URL (default: a SQLite file in a temporary directory)"
    )
    parser.add_argument(
        "--no-store", dest="store", action="store_false", help='send "store": false (default: responses are stored)'
    )
    parser.add_argument("--request-timeout", type=float, default=60.0, help="bound on each response, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on the whole run, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    args = parser.parse_args(argv)
    if min(args.requests, args.tokens) < 1:
        parser.error("counts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    def start(children: Children) -> Coroutine[Any, Any, dict[str, Any]]:
        fast = start_fake(children, "fake-fast", 0)
        paced = start_fake(children, "fake-paced", args.delay_ms)
        config = parley_config({"fake": (fast, [MODEL]), "paced": (paced, [MODEL])}, args.storage_url)
        parley, proc = start_parley(children, config)
        print(f"upstream {fast} (unpaced), {paced} ({args.delay_ms:g} ms/token); parley {parley}", flush=True)
        return run(args, parley, proc.pid)

    report = run_benchmark(start, args.max_seconds)
    if isinstance(report, int):
        return report
    report["config"] = report_config(
        {
            "requests": args.requests,
            "tokens": args.tokens,
            "warmup": args.warmup,
            "delay_ms": args.delay_ms,
            "store": args.store,
            "storage": storage_name(args.storage_url),
        }
    )
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_report(report)
    return conclude(report, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
