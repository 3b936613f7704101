"""What the two streaming benchmarks share: their targets, their table rows and the end of their report.

bench/chat_stream.py counts content chunks, bench/responses_stream.py SSE
events; each runs scenario A (sequential, unpaced), A' (sequential, paced)
and B (concurrent, paced), and holds them to the same three kinds of target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from _common import Row, print_targets, ratio, signed_ms, target


@dataclass(frozen=True)
class Targets:
    """One benchmark's bounds; see bench/README.md."""

    max_added_ttft_p50_ms: float
    min_rate_ratio: float
    max_added_ttft_p99_concurrent_ms: float
    unit: str  # what the rate counts: "chunk" or "event"


def check_targets(
    targets: Targets, a: dict[str, Any], b: dict[str, Any], a_paced: dict[str, Any]
) -> list[dict[str, Any]]:
    added_a = a["compare"]["added_ttft_p50_ms"]
    added_a_paced = a_paced["compare"]["added_ttft_p50_ms"]
    rate_ratio = a["compare"]["rate_ratio"]
    errors_b = b["direct"]["errors"] + b["parley"]["errors"]
    added_b = b["compare"]["added_ttft_p99_ms"]
    p50, p99 = targets.max_added_ttft_p50_ms, targets.max_added_ttft_p99_concurrent_ms
    return [
        target(f"A: median added TTFT < {p50:g} ms", added_a, added_a is not None and added_a < p50, "ms"),
        target(
            f"A': median added TTFT < {p50:g} ms, paced",
            added_a_paced,
            added_a_paced is not None and added_a_paced < p50,
            "ms",
        ),
        target(
            f"A: parley {targets.unit} rate >= {targets.min_rate_ratio:.0%} of direct",
            rate_ratio,
            rate_ratio is not None and rate_ratio >= targets.min_rate_ratio,
            "x",
        ),
        target("B: no errors", errors_b, errors_b == 0),
        target(f"B: p99 added TTFT < {p99:g} ms", added_b, added_b is not None and added_b < p99, "ms"),
    ]


def rows(figures: dict[str, Any], rate_label: str, rate_key: str) -> list[Row]:
    """One scenario's table: TTFT, the median rate under `rate_label`, stream time and errors."""
    d, p, c = figures["direct"], figures["parley"], figures["compare"]
    return [
        ("TTFT p50 (ms)", d["ttft_p50_ms"], p["ttft_p50_ms"], signed_ms(c["added_ttft_p50_ms"]), ".2f"),
        ("TTFT p99 (ms)", d["ttft_p99_ms"], p["ttft_p99_ms"], signed_ms(c["added_ttft_p99_ms"]), ".2f"),
        (rate_label, d[rate_key], p[rate_key], ratio(c["rate_ratio"]), ".0f"),
        ("stream time (s, median)", d["stream_s_median"], p["stream_s_median"], "", ".3f"),
        ("errors / requests", f"{d['errors']}/{d['requests']}", f"{p['errors']}/{p['requests']}", "", ".2f"),
    ]


def print_targets_and_errors(report: dict[str, Any]) -> None:
    """The targets, then up to three error examples of each scenario and side."""
    print_targets(report["targets"])
    scenarios = (("A", "sequential"), ("A'", "sequential_paced"), ("B", "concurrent"))
    for phase, key in scenarios:
        for side in ("direct", "parley"):
            for example in report[key][side]["error_examples"]:
                print(f"   {phase} {side} error: {example}")
