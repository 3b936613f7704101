"""MCP tool round trips: what Parley adds to each call the model makes to an MCP server.

Starts a fake upstream (tests/fake_upstream.py, model fake-script), the MCP
test server (tests/mcp_servers.py) and Parley, each as its own process on
127.0.0.1. A response whose script makes N sequential calls to the server's
`echo` tool costs Parley N tool round trips, each: the model's tool call,
the MCP call on the response's one session, the result back to the model,
and the next model call. Timing responses of 1 and of 1 + --steps calls, the
difference per step, less one model call's and one tool call's own time
(both measured directly, in the same run), is what Parley adds per round trip.

Target: under 5 ms at the median. Run:

    .venv/bin/python bench/mcp_tool.py [--steps 10] [--requests 30] [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ROOT,
    Children,
    _read_line,
    conclude,
    fmt,
    parley_config,
    print_targets,
    run_benchmark,
    start_fake,
    start_parley,
    target,
)

STEP = 'echo {"text": "ping"}'


def start_tool_server(children: Children) -> str:
    proc = children.spawn("mcp", [sys.executable, str(ROOT / "tests" / "mcp_servers.py")])
    try:
        return _read_line(proc, 30)
    except RuntimeError as exc:
        raise RuntimeError(f"the MCP test server did not start: {exc}\n{children.log_tail('mcp')}") from exc


async def response_time(http: httpx.AsyncClient, parley: str, mcp_url: str, steps: int) -> float:
    body = {
        "model": "fake/fake-script",
        "input": " | ".join([STEP] * steps),
        "tools": [{"type": "mcp", "server_label": "tools", "server_url": mcp_url, "require_approval": "never"}],
        "store": False,
    }
    started = time.perf_counter()
    answer = await http.post(f"{parley}/responses", json=body)
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    output = answer.json()["output"]
    calls = [item for item in output if item["type"] == "mcp_call" and item["status"] == "completed"]
    if len(calls) != steps:
        raise RuntimeError(f"expected {steps} completed calls, got {len(calls)}: {output}")
    return elapsed


async def model_call_time(http: httpx.AsyncClient, upstream: str) -> float:
    """One fake-script model call of a round trip, made directly: the upstream's own time."""
    call = {"id": "call_1", "type": "function", "function": {"name": "echo", "arguments": '{"text": "ping"}'}}
    body = {
        "model": "fake-script",
        "messages": [
            {"role": "user", "content": " | ".join([STEP] * 2)},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ping"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    async with http.stream("POST", f"{upstream}/chat/completions", json=body) as answer:
        async for _ in answer.aiter_raw():
            pass
    return time.perf_counter() - started


async def tool_call_times(mcp_url: str, count: int) -> list[float]:
    """The tool's own time: `echo` called directly, on one reused session."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    times = []
    async with Client(streamable_http_client(mcp_url)) as client:
        await client.list_tools()
        for _ in range(count):
            started = time.perf_counter()
            await client.call_tool("echo", {"text": "ping"})
            times.append(time.perf_counter() - started)
    return times


async def scenario(upstream: str, parley: str, mcp_url: str, args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(3):  # warm up: connections, the model's first use
            await response_time(http, parley, mcp_url, 1)
        short, long, model = [], [], []
        for _ in range(args.requests):
            short.append(await response_time(http, parley, mcp_url, 1))
            long.append(await response_time(http, parley, mcp_url, 1 + args.steps))
            model.append(await model_call_time(http, upstream))
    tool = await tool_call_times(mcp_url, args.requests * 3)
    per_step = (statistics.median(long) - statistics.median(short)) / args.steps
    model_ms, tool_ms = statistics.median(model) * 1000, statistics.median(tool) * 1000
    added = per_step * 1000 - model_ms - tool_ms
    report = {
        "steps": args.steps,
        "requests": args.requests,
        "response_1_call_ms": statistics.median(short) * 1000,
        "response_n_calls_ms": statistics.median(long) * 1000,
        "per_round_trip_ms": per_step * 1000,
        "model_call_ms": model_ms,
        "tool_call_ms": tool_ms,
        "added_per_round_trip_ms": added,
    }
    report["targets"] = [target("median added per tool round trip < 5 ms", added, added < 5, " ms")]
    return report


def print_report(report: dict[str, Any]) -> None:
    steps = report["steps"]
    print(f"MCP tool round trips: responses of 1 and {1 + steps} calls, {report['requests']} each, medians")
    print(f"   response with 1 call (ms)            {fmt(report['response_1_call_ms']):>8}")
    print(f"   response with {1 + steps} calls (ms)          {fmt(report['response_n_calls_ms']):>8}")
    print(f"   per round trip (ms)                  {fmt(report['per_round_trip_ms']):>8}")
    print(f"     of which the model call (direct)   {fmt(report['model_call_ms']):>8}")
    print(f"     of which the tool call (direct)    {fmt(report['tool_call_ms']):>8}")
    print(f"   added by Parley per round trip (ms)  {fmt(report['added_per_round_trip_ms']):>8}")
    print()
    print_targets(report["targets"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="extra calls in the long response (default 10)")
    parser.add_argument("--requests", type=int, default=30, help="responses of each length (default 30)")
    parser.add_argument("--max-seconds", type=float, default=300, help="bound on the whole run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if the target is missed")
    args = parser.parse_args(argv)

    def start(children: Children) -> Any:
        upstream = start_fake(children, "fake", delay_ms=0)
        mcp_url = start_tool_server(children)
        config = parley_config({"fake": (upstream, ["fake-script"])})
        # The benchmark's MCP server is on this machine, which Parley refuses to reach by default.
        config += "tools:\n  mcp:\n    allow_loopback: true\n"
        parley, _ = start_parley(children, config)
        return scenario(upstream, parley, mcp_url, args)

    report = run_benchmark(start, args.max_seconds)
    if isinstance(report, int):
        return report
    print_report(report)
    return conclude(report, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
