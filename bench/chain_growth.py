"""Chain growth: does a turn cost Parley more as its previous_response_id chain grows?

Starts a fake upstream (tests/fake_upstream.py, unpaced) and Parley in front
of it, each as its own process on 127.0.0.1, then builds --chains chains of
--turns non-streamed responses each (model fake-echo, short inputs), one turn
at a time. Each turn's context is the whole chain so far, which Parley reads
back from its database and sends upstream. Right after each turn, the same
message list goes straight to the upstream, so that its own time, which
grows with the context too, can be told apart from Parley's.

Prints the figures by blocks of ten turns (see bench/README.md) and checks
the target: Parley's added time in the last ten turns is at most 1.5 times
that of the first ten. Run:

    .venv/bin/python bench/chain_growth.py [--turns 100] [--chains 3]
        [--storage-url URL] [--profile FILE] [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from _common import (
    Children,
    client,
    conclude,
    cpu_seconds,
    fmt,
    parley_config,
    print_profile,
    print_targets,
    ratio,
    run_benchmark,
    start_fake,
    start_parley,
    storage_name,
    stream_chat,
    target,
)

MODEL = "fake-echo"
WINDOW = 10  # turns compared at each end of the chain

# Target; see bench/README.md.
MAX_GROWTH = 1.5


@dataclass
class Turn:
    number: int  # from 1
    parley: float | None = None  # seconds for Parley's whole reply
    upstream: float | None = None  # seconds for the same context sent straight upstream
    error: str | None = None

    @property
    def added(self) -> float | None:
        if self.parley is None or self.upstream is None:
            return None
        return self.parley - self.upstream


# -- the chain ----------------------------------------------------------------


async def build_chain(
    http: httpx.AsyncClient, parley: str, upstream: str, turns: int, label: str, timeout: float
) -> list[Turn]:
    """One chain of `turns` responses; stops at the first failed turn, as the chain cannot go on."""
    results: list[Turn] = []
    messages: list[dict[str, str]] = []  # what Parley sends upstream: the chain so far, as chat messages
    previous: str | None = None
    for number in range(1, turns + 1):
        turn = Turn(number)
        results.append(turn)
        text = f"turn {number} of {label}: one more short line"
        request: dict[str, Any] = {"model": f"fake/{MODEL}", "input": text}
        if previous is not None:
            request["previous_response_id"] = previous
        try:
            start = time.perf_counter()
            response = await http.post(f"{parley}/responses", content=orjson.dumps(request), timeout=timeout)
            turn.parley = time.perf_counter() - start
            previous, reply = _read_response(response)
        except (httpx.HTTPError, ValueError) as exc:
            turn.error = f"turn {number}: {type(exc).__name__}: {exc}"
            break
        if reply != text:
            turn.error = f"turn {number}: the echo came back as {reply[:80]!r}"
            break

        messages.append({"role": "user", "content": text})
        body = orjson.dumps(
            {"model": MODEL, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
        )
        sample = await stream_chat(http, f"{upstream}/chat/completions", body, len(text.split()), timeout)
        if sample.error is not None:
            turn.error = f"turn {number}, direct: {sample.error}"
            break
        turn.upstream = sample.total
        messages.append({"role": "assistant", "content": reply})
    return results


def _read_response(response: httpx.Response) -> tuple[str, str]:
    """The response's id and its output text; ValueError if it is not a completed response."""
    if response.status_code != 200:
        raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
    body = orjson.loads(response.content)
    if body.get("status") != "completed":
        raise ValueError(f"status {body.get('status')}: {body.get('error')}")
    text = "".join(
        part.get("text", "")
        for item in body["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )
    return body["id"], text


# -- figures ------------------------------------------------------------------


def _ms(values: list[float], how: str) -> float | None:
    if not values:
        return None
    value = statistics.median(values) if how == "median" else statistics.fmean(values)
    return round(value * 1000, 3)


def block(turns: list[Turn]) -> dict[str, Any]:
    """Medians (and means) over some turns, in milliseconds."""
    done = [t for t in turns if t.added is not None]
    parley = [t.parley for t in done if t.parley is not None]
    upstream = [t.upstream for t in done if t.upstream is not None]
    added = [t.added for t in done if t.added is not None]
    numbers = [t.number for t in turns]
    return {
        "turns": f"{min(numbers)}-{max(numbers)}" if numbers else "-",
        "samples": len(done),
        "parley_ms_median": _ms(parley, "median"),
        "upstream_ms_median": _ms(upstream, "median"),
        "added_ms_median": _ms(added, "median"),
        "added_ms_mean": _ms(added, "mean"),
        "parley_ms_mean": _ms(parley, "mean"),
        "upstream_ms_mean": _ms(upstream, "mean"),
    }


def _growth(first: float | None, last: float | None) -> float | None:
    return round(last / first, 3) if first and last is not None else None


def _numbered(chains: list[list[Turn]], low: int, high: int) -> list[Turn]:
    """The turns numbered `low` to `high` of every chain."""
    return [t for chain in chains for t in chain if low <= t.number <= high]


def summarize(chains: list[list[Turn]], turns: int) -> dict[str, Any]:
    errors = [t.error for chain in chains for t in chain if t.error is not None]
    complete = not errors and all(len(chain) == turns for chain in chains)
    first = block(_numbered(chains, 1, WINDOW))
    last = block(_numbered(chains, max(1, turns - WINDOW + 1), turns))
    return {
        "chains": len(chains),
        "turns": sum(len(chain) for chain in chains),
        "errors": len(errors),
        "error_examples": errors[:3],
        "first": first,
        "last": last,
        "growth_median": _growth(first["added_ms_median"], last["added_ms_median"]) if complete else None,
        "growth_mean": _growth(first["added_ms_mean"], last["added_ms_mean"]) if complete else None,
        "upstream_growth_median": (
            _growth(first["upstream_ms_median"], last["upstream_ms_median"]) if complete else None
        ),
        "blocks": [block(_numbered(chains, low, low + WINDOW - 1)) for low in range(1, turns + 1, WINDOW)],
        "per_turn_ms": [
            [
                [t.number, round(t.parley * 1000, 3), round(t.upstream * 1000, 3)]
                for t in chain
                if t.parley is not None and t.upstream is not None
            ]
            for chain in chains
        ],
    }


def check_targets(chain: dict[str, Any], turns: int) -> list[dict[str, Any]]:
    growth = chain["growth_median"]
    last = f"{max(1, turns - WINDOW + 1)}-{turns}"
    return [
        target("no errors", chain["errors"], chain["errors"] == 0 and chain["growth_median"] is not None),
        target(
            f"added, turns {last} <= {MAX_GROWTH:g}x turns 1-{min(WINDOW, turns)}",
            growth,
            growth is not None and growth <= MAX_GROWTH,
            "x",
        ),
    ]


def print_report(report: dict[str, Any]) -> None:
    cfg, chain = report["config"], report["chain"]
    print()
    chains = f"{cfg['chains']} chains" if cfg["chains"] > 1 else "1 chain"
    print(f"{chains} of {cfg['turns']} turns, {MODEL}, non-streamed, {cfg['storage']}")
    print(f"   {'turns':<10}{'parley':>10}{'upstream':>10}{'added':>10}{'added':>10}   ms, over every chain")
    print(f"   {'':<10}{'median':>10}{'median':>10}{'median':>10}{'mean':>10}")
    for b in chain["blocks"]:
        print(
            f"   {b['turns']:<10}{fmt(b['parley_ms_median']):>10}{fmt(b['upstream_ms_median']):>10}"
            f"{fmt(b['added_ms_median']):>10}{fmt(b['added_ms_mean']):>10}"
        )
    first, last = chain["first"], chain["last"]
    print(
        f"   last {WINDOW} over first {WINDOW}: added {ratio(chain['growth_median'])} (median), "
        f"{ratio(chain['growth_mean'])} (mean); upstream {ratio(chain['upstream_growth_median'])} (median)"
    )
    print(f"   turns {first['turns']} vs {last['turns']}; errors {chain['errors']}/{cfg['chains'] * cfg['turns']}")
    if chain.get("parley_cpu_ms_per_turn") is not None:
        print(f"   Parley CPU per turn, whole chain: {chain['parley_cpu_ms_per_turn']:.2f} ms")
    print()
    print_targets(report["targets"])
    for example in chain["error_examples"]:
        print(f"   error: {example}")
    print(f"\n({report['elapsed_s']:.0f} s, {cfg['cpus']} CPUs, Python {cfg['python']})")


# -- main ---------------------------------------------------------------------


async def run(args: argparse.Namespace, upstream: str, parley: str, parley_pid: int) -> dict[str, Any]:
    chains: list[list[Turn]] = []
    async with client(2) as http:
        if args.warmup:
            # A chain of its own: connections, lazy imports and first queries are paid for here.
            await build_chain(http, parley, upstream, args.warmup, "the warm-up", args.request_timeout)
        cpu_before = cpu_seconds(parley_pid)
        for number in range(1, args.chains + 1):
            chain = await build_chain(http, parley, upstream, args.turns, f"chain {number}", args.request_timeout)
            chains.append(chain)
            if chain[-1].error is not None:
                break
        cpu_after = cpu_seconds(parley_pid)
    figures = summarize(chains, args.turns)
    if cpu_before is not None and cpu_after is not None and figures["turns"]:
        figures["parley_cpu_ms_per_turn"] = round((cpu_after - cpu_before) * 1000 / figures["turns"], 3)
    return {"chain": figures, "targets": check_targets(figures, args.turns)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=100, help="turns in the chain (default 100)")
    parser.add_argument("--chains", type=int, default=3, help="chains, built one after the other (default 3)")
    parser.add_argument("--warmup", type=int, default=5, help="turns of an unmeasured chain first (default 5)")
    parser.add_argument(
        "--storage-url", help="Parley's database, a SQLAlchemy URL (default: a SQLite file in a temporary directory)"
    )
    parser.add_argument("--profile", type=Path, help="run Parley under cProfile, write its stats here, print the top")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="bound on each request, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on the whole run, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    args = parser.parse_args(argv)
    if args.turns < 1 or args.chains < 1 or args.warmup < 0:
        parser.error("--turns and --chains must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    profile = args.profile.resolve() if args.profile else None

    def start(children: Children) -> Coroutine[Any, Any, dict[str, Any]]:
        upstream = start_fake(children, "fake", 0)
        parley, proc = start_parley(
            children, parley_config({"fake": (upstream, [MODEL])}, args.storage_url), profile=profile
        )
        print(f"upstream {upstream}; parley {parley}; storage {storage_name(args.storage_url)}", flush=True)
        return run(args, upstream, parley, proc.pid)

    report = run_benchmark(start, args.max_seconds)
    if isinstance(report, int):
        return report
    report["config"] = {
        "turns": args.turns,
        "chains": args.chains,
        "warmup": args.warmup,
        "storage": storage_name(args.storage_url),
        "profiled": profile is not None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_report(report)
    if profile is not None:
        print_profile(profile)
    return conclude(report, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
