"""Streamed responses: what Parley's /v1/responses adds on top of the upstream it calls.

Starts two fake upstreams (tests/fake_upstream.py, one unpaced, one paced at
--delay-ms per chunk) and Parley in front of both, each as its own process on
127.0.0.1, then streams responses through Parley and the same completions
straight from the upstream:

  A. sequential, unpaced: time to the first text delta and events per second,
     interleaved with direct chat-completion streams;
  B. --concurrency clients at once against the paced upstream: time to the
     first text delta under load, and errors.

Prints a table (see bench/README.md) and checks the targets. Run:

    .venv/bin/python bench/responses_stream.py [--tokens 1000] [--requests 50]
        [--concurrency 64] [--delay-ms 10] [--storage-url URL] [--no-store]
        [--profile FILE] [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
from _common import (
    Children,
    Row,
    Sample,
    Side,
    StreamClient,
    compare,
    conclude,
    cpu_seconds,
    parley_config,
    print_comparison,
    print_footer,
    print_profile,
    report_config,
    run_benchmark,
    start_fake,
    start_parley,
    storage_name,
    stream_chat,
    summarize,
)
from _streams import Targets, check_targets, print_targets_and_errors, rows

from parley.inference import http1

MODEL = "fake-long"
PROMPT = "Write a long story."
RATE = "events_per_s_median"

# Targets; see bench/README.md.
TARGETS = Targets(max_added_ttft_p50_ms=3.0, min_rate_ratio=0.25, max_added_ttft_p99_concurrent_ms=25.0, unit="event")

# What ends a response that went wrong; none may appear in a good stream.
_FAILURES = ("error", "response.failed", "response.incomplete")

Stream = Callable[[StreamClient, Side, int], Awaitable[Sample]]


# -- the clients --------------------------------------------------------------


def direct_stream(timeout: float) -> Stream:
    """Streams a chat completion of `tokens` chunks straight from the upstream."""

    async def stream(client: StreamClient, side: Side, tokens: int) -> Sample:
        body = orjson.dumps(
            {
                "model": side.model,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        return await stream_chat(client, f"{side.base}/chat/completions", body, tokens, timeout)

    return stream


def response_stream(timeout: float, store: bool) -> Stream:
    """Streams a response of `tokens` text deltas through Parley (what it sends upstream is the body above)."""

    async def stream(client: StreamClient, side: Side, tokens: int) -> Sample:
        request: dict[str, Any] = {"model": side.model, "input": PROMPT, "stream": True, "max_output_tokens": tokens}
        if not store:
            request["store"] = False
        return await stream_response(client, f"{side.base}/responses", orjson.dumps(request), tokens, timeout)

    return stream


async def stream_response(client: StreamClient, url: str, body: bytes, deltas: int, timeout: float) -> Sample:
    """One streamed response, read as leanly as `stream_chat` reads a completion.

    An error unless it is a 200 with `deltas` `response.output_text.delta`
    events, whose last event is `response.completed`, followed by
    `data: [DONE]` and nothing else.
    """
    sample = Sample()
    last: str | None = None
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
                        if done:
                            sample.error = "an event after data: [DONE]"
                            return sample
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            continue
                        sample.events += 1
                        event = orjson.loads(data)
                        last = event["type"]
                        if last == "response.output_text.delta":
                            sample.chunks += 1
                            if sample.ttft is None:
                                sample.ttft = time.perf_counter() - start
                        elif last in _FAILURES:
                            sample.error = f"{last}: {_failure(event)}"
                            return sample
    except TimeoutError:
        sample.error = f"timed out after {timeout:.0f} s"
    except (http1.HTTPError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    sample.total = time.perf_counter() - start
    if sample.error is None and (sample.chunks != deltas or last != "response.completed" or not done):
        sample.error = (
            f"short stream: {sample.chunks} of {deltas} text deltas, last event {last}, "
            f"[DONE] {'seen' if done else 'missing'}"
        )
    return sample


def _failure(event: dict[str, Any]) -> str:
    """What went wrong, from an `error`, `response.failed` or `response.incomplete` event."""
    response = event.get("response") or {}
    problem = event.get("message") or (response.get("error") or {}).get("message")
    return str(problem or response.get("incomplete_details") or event)[:200]


# -- scenarios ----------------------------------------------------------------


async def sequential(sides: list[tuple[Side, Stream]], tokens: int, requests: int, measure: bool) -> None:
    """`requests` streams each way, one at a time, alternating the sides so that drift hits both alike."""
    async with StreamClient(2) as client:
        for _ in range(requests):
            for side, stream in sides:
                sample = await stream(client, side, tokens)
                if measure:
                    side.samples.append(sample)


async def concurrent(side: Side, stream: Stream, args: argparse.Namespace) -> None:
    async with StreamClient(args.concurrency + 4) as client:
        # Warm the connection pools (ours, and Parley's to the upstream) first.
        await asyncio.gather(*(stream(client, side, 2) for _ in range(args.concurrency)))
        # Starts spread over one stream's length, so that there are about
        # `concurrency` streams in flight at any time rather than bursts of them.
        stagger = args.paced_tokens * args.delay_ms / 1000 / args.concurrency

        async def client_loop(i: int) -> None:
            await asyncio.sleep(i * stagger)
            for _ in range(args.streams_per_client):
                side.samples.append(await stream(client, side, args.paced_tokens))

        await asyncio.gather(*(client_loop(i) for i in range(args.concurrency)))


# -- figures ------------------------------------------------------------------


def figures(direct: Side, parley: Side) -> dict[str, Any]:
    # Directly, every chunk is an event; through Parley, every SSE event counts.
    result = {
        "direct": summarize(direct, lambda s: s.event_rate, RATE),
        "parley": summarize(parley, lambda s: s.event_rate, RATE),
    }
    result["compare"] = compare(result["direct"], result["parley"], RATE)
    return result


# Scenario A': sequential again, against the paced upstream, with responses this short (the fewest
# `max_output_tokens` takes, as OpenAI's minimum).
PACED_SEQUENTIAL_TOKENS = 16


def print_report(report: dict[str, Any]) -> None:
    cfg, a, b = report["config"], report["sequential"], report["concurrent"]
    storage = cfg["storage"] if cfg["store"] else "not stored"
    print()
    print(
        f"A. sequential, unpaced upstream: {cfg['requests']} streams of {cfg['tokens']} tokens each way, "
        f"interleaved ({storage})"
    )
    print_comparison(_rows(a))
    if a.get("parley_cpu_us_per_event") is not None:
        print(f"   Parley CPU per event sent: {a['parley_cpu_us_per_event']:.1f} us")
    a_paced = report["sequential_paced"]
    print()
    print(
        f"A'. sequential, upstream paced at {cfg['delay_ms']:g} ms/token: {cfg['requests']} streams of "
        f"{PACED_SEQUENTIAL_TOKENS} tokens each way, interleaved (time to first token without the unpaced burst)"
    )
    print_comparison(_rows(a_paced)[:2] + _rows(a_paced)[4:])
    print()
    print(
        f"B. {cfg['concurrency']} concurrent clients x {cfg['streams_per_client']} streams of "
        f"{cfg['paced_tokens']} tokens, upstream paced at {cfg['delay_ms']:g} ms/token"
    )
    print_comparison(_rows(b))
    if b.get("parley_cpu_share") is not None:
        print(f"   Parley CPU while streaming: {b['parley_cpu_share']:.0%} of one core")
    print()
    print_targets_and_errors(report)
    print_footer(report)


def _rows(figures: dict[str, Any]) -> list[Row]:
    return rows(figures, "events/s (median)", RATE)


# -- main ---------------------------------------------------------------------


async def run(args: argparse.Namespace, fast: str, paced: str, parley: str, parley_pid: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    direct, through = direct_stream(args.request_timeout), response_stream(args.request_timeout, args.store)

    direct_a = Side("direct", fast, MODEL)
    parley_a = Side("parley", parley, f"fake/{MODEL}")
    sides = [(direct_a, direct), (parley_a, through)]
    await sequential(sides, args.tokens, args.warmup, measure=False)
    cpu_before = cpu_seconds(parley_pid)
    await sequential(sides, args.tokens, args.requests, measure=True)
    cpu_after = cpu_seconds(parley_pid)
    a = figures(direct_a, parley_a)
    sent = sum(s.events for s in parley_a.samples)
    # Parley idles during the direct streams, so this is what each event it sends costs it.
    if cpu_before is not None and cpu_after is not None and sent:
        a["parley_cpu_us_per_event"] = round((cpu_after - cpu_before) * 1e6 / sent, 2)
    report["sequential"] = a

    # A': the same against the paced upstream (see bench/README.md, chat_stream.py's A').
    direct_p = Side("direct", paced, MODEL)
    parley_p = Side("parley", parley, f"paced/{MODEL}")
    paced_sides = [(direct_p, direct), (parley_p, through)]
    await sequential(paced_sides, PACED_SEQUENTIAL_TOKENS, args.warmup, measure=False)
    await sequential(paced_sides, PACED_SEQUENTIAL_TOKENS, args.requests, measure=True)
    a_paced = figures(direct_p, parley_p)
    report["sequential_paced"] = a_paced

    direct_b = Side("direct", paced, MODEL)
    parley_b = Side("parley", parley, f"paced/{MODEL}")
    await concurrent(direct_b, direct, args)
    cpu_before, wall_before = cpu_seconds(parley_pid), time.perf_counter()
    await concurrent(parley_b, through, args)
    cpu_after, wall = cpu_seconds(parley_pid), time.perf_counter() - wall_before
    b = figures(direct_b, parley_b)
    if cpu_before is not None and cpu_after is not None:
        b["parley_cpu_share"] = round((cpu_after - cpu_before) / wall, 3)
    report["concurrent"] = b
    report["targets"] = check_targets(TARGETS, a, b, a_paced)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1000, help="tokens per stream in scenario A (default 1000)")
    parser.add_argument("--requests", type=int, default=50, help="measured streams each way in scenario A (default 50)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured streams each way before A (default 3)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients in scenario B (default 64)")
    parser.add_argument("--streams-per-client", type=int, default=4, help="streams per client in B (default 4)")
    parser.add_argument("--paced-tokens", type=int, default=200, help="tokens per stream in B (default 200)")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="upstream pause per token in B (default 10)")
    parser.add_argument(
        "--storage-url", help="Parley's database, a SQLAlchemy URL (default: a SQLite file in a temporary directory)"
    )
    parser.add_argument(
        "--no-store", dest="store", action="store_false", help='send "store": false (default: responses are stored)'
    )
    parser.add_argument("--profile", type=Path, help="run Parley under cProfile, write its stats here, print the top")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="bound on each stream, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on the whole run, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    args = parser.parse_args(argv)
    if min(args.tokens, args.requests, args.concurrency, args.streams_per_client, args.paced_tokens) < 1:
        parser.error("counts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    profile = args.profile.resolve() if args.profile else None

    def start(children: Children) -> Coroutine[Any, Any, dict[str, Any]]:
        fast = start_fake(children, "fake-fast", 0)
        paced = start_fake(children, "fake-paced", args.delay_ms)
        config = parley_config({"fake": (fast, [MODEL]), "paced": (paced, [MODEL])}, args.storage_url)
        parley, proc = start_parley(children, config, profile=profile)
        print(f"upstream {fast} (unpaced), {paced} ({args.delay_ms:g} ms/token); parley {parley}", flush=True)
        return run(args, fast, paced, parley, proc.pid)

    report = run_benchmark(start, args.max_seconds)
    if isinstance(report, int):
        return report
    report["config"] = report_config(
        {
            "tokens": args.tokens,
            "requests": args.requests,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "streams_per_client": args.streams_per_client,
            "paced_tokens": args.paced_tokens,
            "delay_ms": args.delay_ms,
            "store": args.store,
            "storage": storage_name(args.storage_url),
            "profiled": profile is not None,
        }
    )
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_report(report)
    if profile is not None:
        print_profile(profile)
    return conclude(report, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
