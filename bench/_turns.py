"""What the turn-growth benchmarks share: take turns, time each against the upstream, report the growth.

bench/chain_growth.py threads its turns by previous_response_id,
bench/conversation_turns.py by a conversation. Each turn goes to Parley's
/responses as one non-streamed request; right after it, the same message list
goes straight to the upstream, so that the upstream's own time, which grows
with the context too, can be told apart from Parley's. A `Series` says what a
benchmark calls its runs of turns and where its figures go in the report.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
from _common import (
    Children,
    StreamClient,
    client,
    conclude,
    cpu_seconds,
    fmt,
    parley_config,
    print_footer,
    print_profile,
    print_targets,
    ratio,
    report_config,
    run_benchmark,
    start_fake,
    start_parley,
    storage_name,
    stream_chat,
    target,
)

MODEL = "fake-echo"
WINDOW = 10  # turns compared at each end of a run of turns

# Target; see bench/README.md.
MAX_GROWTH = 1.5


@dataclass(frozen=True)
class Series:
    """What a benchmark calls one run of turns, and how its report words the figures."""

    noun: str  # "chain": the option and config key are its plural, `--chains`
    report_key: str  # where the figures stand in the report
    means_of_each_side: bool  # whether each block also gives Parley's and the upstream's mean
    table_note: str  # after the table's heading
    cpu_scope: str  # after "Parley CPU per turn"

    @property
    def plural(self) -> str:
        return f"{self.noun}s"


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


class Thread(Protocol):
    """How one run of turns ties each turn to the ones before it."""

    def request(self, text: str) -> dict[str, Any]:
        """The /responses request body for a turn whose input is `text`."""
        ...

    def read(self, response: httpx.Response) -> str:
        """The reply's output text; ValueError if the response is not what the turn asked for."""
        ...


# -- the turns ----------------------------------------------------------------


async def take_turns(
    http: httpx.AsyncClient,
    streams: StreamClient,
    parley: str,
    upstream: str,
    turns: int,
    label: str,
    timeout: float,
    thread: Thread,
) -> tuple[list[Turn], list[dict[str, str]]]:
    """`turns` turns, each timed through Parley and then straight upstream; stops at the first failed turn.

    Returns the turns and the chat messages they made, as Parley sends them upstream.
    """
    results: list[Turn] = []
    messages: list[dict[str, str]] = []
    for number in range(1, turns + 1):
        turn = Turn(number)
        results.append(turn)
        text = f"turn {number} of {label}: one more short line"
        try:
            start = time.perf_counter()
            response = await http.post(
                f"{parley}/responses", content=orjson.dumps(thread.request(text)), timeout=timeout
            )
            turn.parley = time.perf_counter() - start
            reply = thread.read(response)
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
        sample = await stream_chat(streams, f"{upstream}/chat/completions", body, len(text.split()), timeout)
        if sample.error is not None:
            turn.error = f"turn {number}, direct: {sample.error}"
            break
        turn.upstream = sample.total
        messages.append({"role": "assistant", "content": reply})
    return results, messages


def completed(response: httpx.Response) -> dict[str, Any]:
    """The response's body; ValueError if it is not a completed response."""
    if response.status_code != 200:
        raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
    body: dict[str, Any] = orjson.loads(response.content)
    if body.get("status") != "completed":
        raise ValueError(f"status {body.get('status')}: {body.get('error')}")
    return body


def output_text(body: dict[str, Any]) -> str:
    return "".join(
        part.get("text", "")
        for item in body["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


# -- figures ------------------------------------------------------------------


def _ms(values: list[float], how: str) -> float | None:
    if not values:
        return None
    value = statistics.median(values) if how == "median" else statistics.fmean(values)
    return round(value * 1000, 3)


def block(turns: list[Turn], means_of_each_side: bool) -> dict[str, Any]:
    """Medians (and means) over some turns, in milliseconds."""
    done = [t for t in turns if t.added is not None]
    parley = [t.parley for t in done if t.parley is not None]
    upstream = [t.upstream for t in done if t.upstream is not None]
    added = [t.added for t in done if t.added is not None]
    numbers = [t.number for t in turns]
    figures = {
        "turns": f"{min(numbers)}-{max(numbers)}" if numbers else "-",
        "samples": len(done),
        "parley_ms_median": _ms(parley, "median"),
        "upstream_ms_median": _ms(upstream, "median"),
        "added_ms_median": _ms(added, "median"),
        "added_ms_mean": _ms(added, "mean"),
    }
    if means_of_each_side:
        figures["parley_ms_mean"] = _ms(parley, "mean")
        figures["upstream_ms_mean"] = _ms(upstream, "mean")
    return figures


def _growth(first: float | None, last: float | None) -> float | None:
    return round(last / first, 3) if first and last is not None else None


def _numbered(runs: list[list[Turn]], low: int, high: int) -> list[Turn]:
    """The turns numbered `low` to `high` of every run."""
    return [t for run in runs for t in run if low <= t.number <= high]


def summarize(series: Series, runs: list[list[Turn]], turns: int) -> dict[str, Any]:
    errors = [t.error for run in runs for t in run if t.error is not None]
    complete = not errors and all(len(run) == turns for run in runs)
    means = series.means_of_each_side
    first = block(_numbered(runs, 1, WINDOW), means)
    last = block(_numbered(runs, max(1, turns - WINDOW + 1), turns), means)
    return {
        series.plural: len(runs),
        "turns": sum(len(run) for run in runs),
        "errors": len(errors),
        "error_examples": errors[:3],
        "first": first,
        "last": last,
        "growth_median": _growth(first["added_ms_median"], last["added_ms_median"]) if complete else None,
        "growth_mean": _growth(first["added_ms_mean"], last["added_ms_mean"]) if complete else None,
        "upstream_growth_median": (
            _growth(first["upstream_ms_median"], last["upstream_ms_median"]) if complete else None
        ),
        "blocks": [block(_numbered(runs, low, low + WINDOW - 1), means) for low in range(1, turns + 1, WINDOW)],
        "per_turn_ms": [
            [
                [t.number, round(t.parley * 1000, 3), round(t.upstream * 1000, 3)]
                for t in run
                if t.parley is not None and t.upstream is not None
            ]
            for run in runs
        ],
    }


def check_targets(figures: dict[str, Any], turns: int) -> list[dict[str, Any]]:
    growth = figures["growth_median"]
    last = f"{max(1, turns - WINDOW + 1)}-{turns}"
    return [
        target("no errors", figures["errors"], figures["errors"] == 0 and growth is not None),
        target(
            f"added, turns {last} <= {MAX_GROWTH:g}x turns 1-{min(WINDOW, turns)}",
            growth,
            growth is not None and growth <= MAX_GROWTH,
            "x",
        ),
    ]


def print_report(series: Series, report: dict[str, Any]) -> None:
    cfg, figures = report["config"], report[series.report_key]
    count = cfg[series.plural]
    print()
    runs = f"{count} {series.plural}" if count > 1 else f"1 {series.noun}"
    print(f"{runs} of {cfg['turns']} turns, {MODEL}, non-streamed, {cfg['storage']}")
    print(f"   {'turns':<10}{'parley':>10}{'upstream':>10}{'added':>10}{'added':>10}   ms{series.table_note}")
    print(f"   {'':<10}{'median':>10}{'median':>10}{'median':>10}{'mean':>10}")
    for b in figures["blocks"]:
        print(
            f"   {b['turns']:<10}{fmt(b['parley_ms_median']):>10}{fmt(b['upstream_ms_median']):>10}"
            f"{fmt(b['added_ms_median']):>10}{fmt(b['added_ms_mean']):>10}"
        )
    first, last = figures["first"], figures["last"]
    print(
        f"   last {WINDOW} over first {WINDOW}: added {ratio(figures['growth_median'])} (median), "
        f"{ratio(figures['growth_mean'])} (mean); upstream {ratio(figures['upstream_growth_median'])} (median)"
    )
    print(f"   turns {first['turns']} vs {last['turns']}; errors {figures['errors']}/{count * cfg['turns']}")
    if figures.get("parley_cpu_ms_per_turn") is not None:
        print(f"   Parley CPU per turn{series.cpu_scope}: {figures['parley_cpu_ms_per_turn']:.2f} ms")
    print()
    print_targets(report["targets"])
    for example in figures["error_examples"]:
        print(f"   error: {example}")
    print_footer(report)


# -- running ------------------------------------------------------------------

# One run of turns: (JSON client, streaming client, Parley's base URL, the upstream's, turns, label,
# request timeout) -> its turns.
RunTurns = Callable[[httpx.AsyncClient, StreamClient, str, str, int, str, float], Awaitable[list[Turn]]]


async def measure(
    series: Series, run_turns: RunTurns, args: argparse.Namespace, upstream: str, parley: str, parley_pid: int
) -> dict[str, Any]:
    """An unmeasured warm-up run, then the runs one after the other, and Parley's CPU time over them."""
    runs: list[list[Turn]] = []
    async with client(2) as http, StreamClient(1) as streams:
        if args.warmup:
            # A run of its own: connections, lazy imports and first queries are paid for here.
            await run_turns(http, streams, parley, upstream, args.warmup, "the warm-up", args.request_timeout)
        cpu_before = cpu_seconds(parley_pid)
        for number in range(1, getattr(args, series.plural) + 1):
            label = f"{series.noun} {number}"
            turns = await run_turns(http, streams, parley, upstream, args.turns, label, args.request_timeout)
            runs.append(turns)
            if turns[-1].error is not None:
                break
        cpu_after = cpu_seconds(parley_pid)
    figures = summarize(series, runs, args.turns)
    if cpu_before is not None and cpu_after is not None and figures["turns"]:
        figures["parley_cpu_ms_per_turn"] = round((cpu_after - cpu_before) * 1000 / figures["turns"], 3)
    return {series.report_key: figures, "targets": check_targets(figures, args.turns)}


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """The options after --turns, --<runs> and --warmup, which each benchmark words for its own runs."""
    parser.add_argument(
        "--storage-url", help="Parley's database, a SQLAlchemy URL (default: a SQLite file in a temporary directory)"
    )
    parser.add_argument("--profile", type=Path, help="run Parley under cProfile, write its stats here, print the top")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="bound on each request, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on the whole run, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")


def run_series(series: Series, run_turns: RunTurns, args: argparse.Namespace) -> int:
    """Starts the fake upstream and Parley, measures, prints the report; the exit status."""
    started = time.perf_counter()
    profile = args.profile.resolve() if args.profile else None

    def start(children: Children) -> Coroutine[Any, Any, dict[str, Any]]:
        upstream = start_fake(children, "fake", 0)
        parley, proc = start_parley(
            children, parley_config({"fake": (upstream, [MODEL])}, args.storage_url), profile=profile
        )
        print(f"upstream {upstream}; parley {parley}; storage {storage_name(args.storage_url)}", flush=True)
        return measure(series, run_turns, args, upstream, parley, proc.pid)

    report = run_benchmark(start, args.max_seconds)
    if isinstance(report, int):
        return report
    report["config"] = report_config(
        {
            "turns": args.turns,
            series.plural: getattr(args, series.plural),
            "warmup": args.warmup,
            "storage": storage_name(args.storage_url),
            "profiled": profile is not None,
        }
    )
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_report(series, report)
    if profile is not None:
        print_profile(profile)
    return conclude(report, args.json, args.check)
