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
import sys
import time
from collections.abc import Coroutine
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
    report_config,
    run_benchmark,
    start_fake,
    start_parley,
    stream_chat,
    summarize,
)
from _streams import Targets, check_targets, print_targets_and_errors, rows

MODEL = "fake-long"

# Targets; see bench/README.md.
TARGETS = Targets(max_added_ttft_p50_ms=2.0, min_rate_ratio=0.5, max_added_ttft_p99_concurrent_ms=20.0, unit="chunk")


# -- the client ---------------------------------------------------------------


async def stream_once(client: StreamClient, base: str, model: str, tokens: int, timeout: float) -> Sample:
    """One streamed completion of `tokens` chunks."""
    body = orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    return await stream_chat(client, f"{base}/chat/completions", body, tokens, timeout)


# -- scenarios ----------------------------------------------------------------


async def sequential(direct: Side, parley: Side, args: argparse.Namespace, warmup: int) -> None:
    async with StreamClient(2) as client:
        for _ in range(warmup):
            for side in (direct, parley):
                await stream_once(client, side.base, side.model, args.tokens, args.request_timeout)
        if not warmup:
            # Interleaved, so that drift (thermal, other load) hits both sides alike.
            for _ in range(args.requests):
                for side in (direct, parley):
                    side.samples.append(
                        await stream_once(client, side.base, side.model, args.tokens, args.request_timeout)
                    )


async def concurrent(side: Side, args: argparse.Namespace) -> None:
    async with StreamClient(args.concurrency + 4) as client:
        # Warm the connection pools (ours, and Parley's to the upstream) first.
        await asyncio.gather(
            *(stream_once(client, side.base, side.model, 2, args.request_timeout) for _ in range(args.concurrency))
        )
        # Starts spread over one stream's length, so that there are about
        # `concurrency` streams in flight at any time rather than bursts of them.
        stagger = args.paced_tokens * args.delay_ms / 1000 / args.concurrency

        async def client_loop(i: int) -> None:
            await asyncio.sleep(i * stagger)
            for _ in range(args.streams_per_client):
                side.samples.append(
                    await stream_once(client, side.base, side.model, args.paced_tokens, args.request_timeout)
                )

        await asyncio.gather(*(client_loop(i) for i in range(args.concurrency)))


# -- figures ------------------------------------------------------------------


# Scenario A': sequential again, against the paced upstream, with streams this short.
PACED_SEQUENTIAL_TOKENS = 5


def print_report(report: dict[str, Any]) -> None:
    cfg, a, b = report["config"], report["sequential"], report["concurrent"]
    print()
    print(f"A. sequential, unpaced upstream: {cfg['requests']} streams of {cfg['tokens']} chunks each way, interleaved")
    print_comparison(_rows(a))
    if a.get("parley_cpu_us_per_chunk") is not None:
        print(f"   Parley CPU per proxied chunk: {a['parley_cpu_us_per_chunk']:.1f} us")
    a_paced = report["sequential_paced"]
    print()
    print(
        f"A'. sequential, upstream paced at {cfg['delay_ms']:g} ms/chunk: {cfg['requests']} streams of "
        f"{PACED_SEQUENTIAL_TOKENS} chunks each way, interleaved (time to first token without the unpaced burst)"
    )
    print_comparison(_rows(a_paced)[:2] + _rows(a_paced)[4:])
    print()
    print(
        f"B. {cfg['concurrency']} concurrent clients x {cfg['streams_per_client']} streams of "
        f"{cfg['paced_tokens']} chunks, upstream paced at {cfg['delay_ms']:g} ms/chunk"
    )
    print_comparison(_rows(b))
    if b.get("parley_cpu_share") is not None:
        print(f"   Parley CPU while proxying: {b['parley_cpu_share']:.0%} of one core")
    print()
    print_targets_and_errors(report)
    print_footer(report)


def _rows(figures: dict[str, Any]) -> list[Row]:
    return rows(figures, "chunks/s (median)", "chunks_per_s_median")


# -- main ---------------------------------------------------------------------


async def run(args: argparse.Namespace, fast: str, paced: str, parley: str, parley_pid: int) -> dict[str, Any]:
    report: dict[str, Any] = {}

    direct_a = Side("direct", fast, MODEL)
    parley_a = Side("parley", parley, f"fake/{MODEL}")
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

    # A': the same, against the paced upstream. Unpaced, the upstream's burst and Parley's
    # reading of it keep both cores busy while the client waits to be scheduled for its
    # first token; a paced upstream, like a real model, leaves the client a core.
    direct_p = Side("direct", paced, MODEL)
    parley_p = Side("parley", parley, f"paced/{MODEL}")
    paced_args = argparse.Namespace(**{**vars(args), "tokens": PACED_SEQUENTIAL_TOKENS})
    await sequential(direct_p, parley_p, paced_args, warmup=args.warmup)
    await sequential(direct_p, parley_p, paced_args, warmup=0)
    a_paced = {"direct": summarize(direct_p), "parley": summarize(parley_p)}
    a_paced["compare"] = compare(a_paced["direct"], a_paced["parley"])
    report["sequential_paced"] = a_paced

    direct_b = Side("direct", paced, MODEL)
    parley_b = Side("parley", parley, f"paced/{MODEL}")
    await concurrent(direct_b, args)
    cpu_before, wall_before = cpu_seconds(parley_pid), time.perf_counter()
    await concurrent(parley_b, args)
    cpu_after, wall = cpu_seconds(parley_pid), time.perf_counter() - wall_before
    b = {"direct": summarize(direct_b), "parley": summarize(parley_b)}
    b["compare"] = compare(b["direct"], b["parley"])
    if cpu_before is not None and cpu_after is not None:
        b["parley_cpu_share"] = round((cpu_after - cpu_before) / wall, 3)
    report["concurrent"] = b
    report["targets"] = check_targets(TARGETS, a, b, a_paced)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    def start(children: Children) -> Coroutine[Any, Any, dict[str, Any]]:
        fast = start_fake(children, "fake-fast", 0)
        paced = start_fake(children, "fake-paced", args.delay_ms)
        config = parley_config({"fake": (fast, [MODEL]), "paced": (paced, [MODEL])})
        parley, proc = start_parley(children, config)
        print(f"upstream {fast} (unpaced), {paced} ({args.delay_ms:g} ms/chunk); parley {parley}", flush=True)
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
        }
    )
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_report(report)
    return conclude(report, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
