"""Chain growth: does a turn cost Parley more as its previous_response_id chain grows?

Starts a fake upstream (tests/fake_upstream.py, unpaced) and Parley in front
of it, each as its own process on 127.0.0.1, then builds --chains chains of
--turns non-streamed responses each (model fake-echo, short inputs), one turn
at a time. Each turn's context is the whole chain so far, which Parley sends
upstream (kept from the turn before, or read back from its database). Right after each turn, the same
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
import sys
from typing import Any

import httpx
from _common import StreamClient
from _turns import MODEL, Series, Turn, add_common_options, completed, output_text, run_series, take_turns

CHAIN = Series(
    noun="chain",
    report_key="chain",
    means_of_each_side=True,
    table_note=", over every chain",
    cpu_scope=", whole chain",
)


class PreviousResponse:
    """Each turn names the response before it as its previous_response_id."""

    def __init__(self) -> None:
        self.previous: str | None = None

    def request(self, text: str) -> dict[str, Any]:
        request: dict[str, Any] = {"model": f"fake/{MODEL}", "input": text}
        if self.previous is not None:
            request["previous_response_id"] = self.previous
        return request

    def read(self, response: httpx.Response) -> str:
        body = completed(response)
        self.previous = body["id"]
        return output_text(body)


async def build_chain(
    http: httpx.AsyncClient, streams: StreamClient, parley: str, upstream: str, turns: int, label: str, timeout: float
) -> list[Turn]:
    """One chain of `turns` responses; stops at the first failed turn, as the chain cannot go on."""
    results, _ = await take_turns(http, streams, parley, upstream, turns, label, timeout, PreviousResponse())
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=100, help="turns in the chain (default 100)")
    parser.add_argument("--chains", type=int, default=3, help="chains, built one after the other (default 3)")
    parser.add_argument("--warmup", type=int, default=5, help="turns of an unmeasured chain first (default 5)")
    add_common_options(parser)
    args = parser.parse_args(argv)
    if args.turns < 1 or args.chains < 1 or args.warmup < 0:
        parser.error("--turns and --chains must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_series(CHAIN, build_chain, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
