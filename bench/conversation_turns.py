"""Conversation turns: does a turn cost Parley more as its conversation grows?

Starts a fake upstream (tests/fake_upstream.py, unpaced) and Parley in front
of it, each as its own process on 127.0.0.1, creates a conversation and runs
--turns non-streamed responses in it (model fake-echo, short inputs), one at
a time. Each turn's context is every item of the conversation so far, which
Parley reads in one query and sends upstream; the turn then appends its input
and output. Right after each turn, the same message list goes straight to the
upstream, so that its own time, which grows with the context too, can be told
apart from Parley's.

Prints the figures by blocks of ten turns (see bench/README.md) and checks
the target: Parley's added time in the last ten turns is at most 1.5 times
that of the first ten. Run:

    .venv/bin/python bench/conversation_turns.py [--turns 200] [--conversations 1]
        [--storage-url URL] [--profile FILE] [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx
import orjson
from _common import StreamClient
from _turns import MODEL, Series, Turn, add_common_options, completed, output_text, run_series, take_turns

CONVERSATION = Series(
    noun="conversation",
    report_key="figures",
    means_of_each_side=False,
    table_note="",
    cpu_scope="",
)


class InConversation:
    """Each turn names the conversation, which holds the turns before it."""

    def __init__(self, conversation: str) -> None:
        self.conversation = conversation

    def request(self, text: str) -> dict[str, Any]:
        return {"model": f"fake/{MODEL}", "input": text, "conversation": self.conversation}

    def read(self, response: httpx.Response) -> str:
        body = completed(response)
        if (body.get("conversation") or {}).get("id") != self.conversation:
            raise ValueError(f"the response names conversation {body.get('conversation')}")
        return output_text(body)


async def converse(
    http: httpx.AsyncClient, streams: StreamClient, parley: str, upstream: str, turns: int, label: str, timeout: float
) -> list[Turn]:
    """One conversation of `turns` turns; stops at the first failed turn."""
    created = await http.post(f"{parley}/conversations", content=orjson.dumps({"metadata": {"bench": label}}))
    if created.status_code != 200:
        return [Turn(1, error=f"creating the conversation: HTTP {created.status_code}: {created.text[:200]}")]
    conversation = orjson.loads(created.content)["id"]
    thread = InConversation(conversation)
    results, messages = await take_turns(http, streams, parley, upstream, turns, label, timeout, thread)
    if results and results[-1].error is None:
        error = await _check_items(http, parley, conversation, messages, timeout)
        if error is not None:
            results[-1].error = error
    return results


async def _check_items(
    http: httpx.AsyncClient, parley: str, conversation: str, messages: list[dict[str, str]], timeout: float
) -> str | None:
    """None if the conversation holds exactly the turns' messages, in order; what differs otherwise."""
    texts: list[str] = []
    params: dict[str, Any] = {"order": "asc", "limit": 100}
    while True:
        answer = await http.get(f"{parley}/conversations/{conversation}/items", params=params, timeout=timeout)
        if answer.status_code != 200:
            return f"listing the items: HTTP {answer.status_code}: {answer.text[:200]}"
        page = orjson.loads(answer.content)
        texts += [item["content"][0]["text"] for item in page["data"]]
        if not page["has_more"]:
            break
        params["after"] = page["last_id"]
    if texts != [m["content"] for m in messages]:
        return f"the conversation holds {len(texts)} items, not the {len(messages)} its turns made"
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=200, help="turns in the conversation (default 200)")
    parser.add_argument(
        "--conversations", type=int, default=1, help="conversations, run one after the other (default 1)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="turns of an unmeasured conversation first (default 5)")
    add_common_options(parser)
    args = parser.parse_args(argv)
    if args.turns < 1 or args.conversations < 1 or args.warmup < 0:
        parser.error("--turns and --conversations must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_series(CONVERSATION, converse, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
