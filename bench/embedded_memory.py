"""The embedded model's memory: what Parley holds for it, idle and after requests, against the model's own size.

Starts two `parley serve` processes on 127.0.0.1: one serving the embedded
SmolLM2-135M with its default settings, as `make serve` does, and one with
no local model, whose resident memory (RSS) is Parley's own. The
difference is the model's share: its weights (the GGUF file, mapped), its
KV cache for the configured context, llama.cpp's buffers, and whatever a
request leaves behind. It is read idle, then after each of these requests:

- a newcomer's first request, "Write a haiku about the sea.", through chat
  completions and the Responses API, then the README's ("What is the capital
  of France?"), with no sampling settings and no token limit: each must end
  by itself (`stop`, `completed`), under the model's default cap, with no
  line repeated three times, within seconds;
- a request for logprobs, whose logits are kept while it runs, and let go;
- a long prompt (--long-prompt-tokens), which fills llama.cpp's compute buffers.

Sizes are in MB (10^6 bytes). Targets (see bench/README.md): the model's
share, idle and after every request, at most 1.5 times the model's own size
(its file plus its KV cache at the configured context, both measured in this
run), and every answer above complete and sane. Run:

    .venv/bin/python bench/embedded_memory.py [--long-prompt-tokens 1500] [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import collections
import struct
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Children,
    conclude,
    fmt,
    print_footer,
    print_targets,
    report_config,
    run_benchmark,
    start_parley,
    target,
)

from parley.config import EMBEDDED_MODEL, LocalModelConfig
from parley.inference.local_loading import embedded_model_path

MB = 1_000_000
# The most a model's share of Parley's memory may be, in multiples of its own size (file and KV cache).
SHARE_TARGET = 1.5
# A newcomer's first request must be answered in seconds.
ANSWER_SECONDS_TARGET = 10.0

HAIKU = "Write a haiku about the sea."
CAPITAL = "What is the capital of France?"

# Parley with no local model: a provider that is never reached (port 9, discard, is closed).
BARE_CONFIG = """\
inference:
  providers:
    none: {type: openai, base_url: "http://127.0.0.1:9/v1", models: [none]}
  aliases: {}
"""
# The embedded model with its default settings, and nothing else (the default configuration
# serves an embedding model besides, whose memory is not this one's).
EMBEDDED_CONFIG = f"""\
inference:
  providers:
    local: {{type: local, models: {{{EMBEDDED_MODEL}: {{}}}}}}
  aliases: {{{EMBEDDED_MODEL}: local/{EMBEDDED_MODEL}}}
"""


def memory(pid: int) -> dict[str, int]:
    """The process's resident memory now (VmRSS, RssAnon, RssFile) and at its peak (VmHWM), in bytes."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            figures[key] = int(value.split()[0]) * 1024
    return figures


def kv_cache_bytes(model: Path, n_ctx: int) -> int:
    """The KV cache llama.cpp allocates for the model at `n_ctx` tokens: K and V, in f16, for every layer."""
    metadata = gguf_metadata(model)
    arch = metadata["general.architecture"]
    layers = metadata[f"{arch}.block_count"]
    heads = metadata[f"{arch}.attention.head_count"]
    kv_heads = metadata.get(f"{arch}.attention.head_count_kv", heads)
    head_dim = metadata.get(f"{arch}.attention.key_length", metadata[f"{arch}.embedding_length"] // heads)
    return 2 * layers * n_ctx * kv_heads * head_dim * 2


# GGUF's scalar value types (gguf.md, `gguf_metadata_value_type`): struct format by type number.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_metadata(path: Path) -> dict[str, Any]:
    """A GGUF file's metadata: its scalar and string values (arrays are skipped), read from its header alone."""
    with path.open("rb") as file:

        def read(fmt: str) -> Any:
            return struct.unpack("<" + fmt, file.read(struct.calcsize("<" + fmt)))[0]

        def string() -> str:
            return file.read(read("Q")).decode("utf-8", errors="replace")

        def value(kind: int) -> Any:
            if kind == _GGUF_STRING:
                return string()
            if kind == _GGUF_ARRAY:
                item_kind, count = read("I"), read("Q")
                for _ in range(count):
                    value(item_kind)
                return None
            return read(_GGUF_SCALARS[kind])

        if file.read(4) != b"GGUF":
            raise RuntimeError(f"{path} is not a GGUF file")
        read("I")  # version
        read("Q")  # tensor count
        metadata = {}
        for _ in range(read("Q")):
            key = string()
            metadata[key] = value(read("I"))
        return metadata


def most_repeated_line(text: str) -> int:
    """How often the answer's most frequent non-blank line occurs in it."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return max(collections.Counter(lines).values(), default=0)


async def ask_chat(http: httpx.AsyncClient, base: str, prompt: str, **options: Any) -> dict[str, Any]:
    started = time.perf_counter()
    answer = await http.post(
        f"{base}/chat/completions",
        json={"model": EMBEDDED_MODEL, "messages": [{"role": "user", "content": prompt}], **options},
    )
    seconds = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"chat completion: HTTP {answer.status_code}: {answer.text[:300]}")
    body = answer.json()
    choice = body["choices"][0]
    text = choice["message"]["content"] or ""
    return {
        "seconds": round(seconds, 2),
        "end": choice["finish_reason"],
        "tokens": body["usage"]["completion_tokens"],
        "prompt_tokens": body["usage"]["prompt_tokens"],
        "most_repeated_line": most_repeated_line(text),
        "text": text,
    }


async def ask_responses(http: httpx.AsyncClient, base: str, prompt: str) -> dict[str, Any]:
    started = time.perf_counter()
    answer = await http.post(f"{base}/responses", json={"model": EMBEDDED_MODEL, "input": prompt, "store": False})
    seconds = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"response: HTTP {answer.status_code}: {answer.text[:300]}")
    body = answer.json()
    text = "".join(
        part.get("text", "") for item in body["output"] if item["type"] == "message" for part in item["content"]
    )
    return {
        "seconds": round(seconds, 2),
        "end": body["status"],
        "tokens": body["usage"]["output_tokens"],
        "prompt_tokens": body["usage"]["input_tokens"],
        "most_repeated_line": most_repeated_line(text),
        "text": text,
    }


async def scenario(bare_pid: int, bare: str, pid: int, base: str, args: argparse.Namespace) -> dict[str, Any]:
    model = embedded_model_path()
    config = LocalModelConfig()
    file_bytes = model.stat().st_size
    kv_bytes = kv_cache_bytes(model, config.n_ctx)
    own_size = file_bytes + kv_bytes
    cap = config.defaults.max_tokens

    async with httpx.AsyncClient(timeout=args.request_timeout) as http:
        # The route modules Parley imports on first use count in its own memory, on both sides.
        for path, body in (
            ("chat/completions", {"model": "none/none", "messages": [{"role": "user", "content": "hi"}]}),
            ("responses", {"model": "none/none", "input": "hi", "store": False}),
        ):
            await http.post(f"{bare}/{path}", json=body)
        parley_own = memory(bare_pid)["VmRSS"]

        points: list[dict[str, Any]] = []
        requests: list[dict[str, Any]] = []

        def measure(label: str, request: dict[str, Any] | None = None) -> None:
            rss = memory(pid)["VmRSS"]
            share = rss - parley_own
            points.append(
                {
                    "after": label,
                    "rss_mb": round(rss / MB, 1),
                    "share_mb": round(share / MB, 1),
                    "share_of_file": round(share / file_bytes, 3),
                    "share_of_own_size": round(share / own_size, 3),
                }
            )
            if request is not None:
                requests.append({"request": label, **request})

        measure("idle")
        # The haiku first: llama.cpp draws each answer's seed from the one before, so this is
        # sampled as a newcomer's first request is (it once ran to 8,175 tokens).
        measure("haiku (chat)", await ask_chat(http, base, HAIKU))
        measure("haiku (responses)", await ask_responses(http, base, HAIKU))
        measure("README's first (chat)", await ask_chat(http, base, CAPITAL))
        story = "Write a short story about a dragon."
        measure("logprobs (chat)", await ask_chat(http, base, story, logprobs=True, top_logprobs=5, max_tokens=100))
        if args.long_prompt_tokens:
            # About one token a word: "word " is one token of SmolLM2's vocabulary.
            long = "word " * args.long_prompt_tokens + "\nHow many times is 'word' written above?"
            measure("long prompt (chat)", await ask_chat(http, base, long, max_tokens=20))
        final = memory(pid)

    answers = [r for r in requests if r["request"] != "logprobs (chat)" and r["request"] != "long prompt (chat)"]
    shares = [p["share_of_own_size"] for p in points]
    worst = max(shares)
    targets = [
        target(f"model's share <= {SHARE_TARGET}x its own size", worst, worst <= SHARE_TARGET, "x"),
        target(
            "answers end by themselves",
            sum(r["end"] in ("stop", "completed") for r in answers),
            all(r["end"] in ("stop", "completed") for r in answers),
            f"of {len(answers)}",
        ),
        target(
            f"answers under the default cap ({cap})",
            max(r["tokens"] for r in answers),
            cap is None or all(r["tokens"] < cap for r in answers),
            "tokens",
        ),
        target(
            "no line repeated 3 times",
            max(r["most_repeated_line"] for r in answers),
            all(r["most_repeated_line"] < 3 for r in answers),
            "at most",
        ),
        target(
            f"answers within {ANSWER_SECONDS_TARGET:g} s",
            max(r["seconds"] for r in answers),
            all(r["seconds"] <= ANSWER_SECONDS_TARGET for r in answers),
            "s",
        ),
    ]
    return {
        "model": {
            "file": str(model),
            "file_mb": round(file_bytes / MB, 1),
            "n_ctx": config.n_ctx,
            "kv_cache_mb": round(kv_bytes / MB, 1),
            "own_size_mb": round(own_size / MB, 1),
        },
        "parley_without_model_mb": round(parley_own / MB, 1),
        "points": points,
        "peak_rss_mb": round(final["VmHWM"] / MB, 1),
        "peak_share_of_own_size": round((final["VmHWM"] - parley_own) / own_size, 3),
        "requests": requests,
        "targets": targets,
        "config": report_config(
            {
                "long_prompt_tokens": args.long_prompt_tokens,
                "request_timeout": args.request_timeout,
                "max_seconds": args.max_seconds,
            }
        ),
    }


def print_report(report: dict[str, Any]) -> None:
    model = report["model"]
    print(f"Model: {Path(model['file']).name}, {model['file_mb']} MB")
    print(f"   KV cache at n_ctx {model['n_ctx']}: {model['kv_cache_mb']} MB (K and V in f16)")
    print(f"   its own size (file + KV cache): {model['own_size_mb']} MB")
    print(f"Parley without a local model: {report['parley_without_model_mb']} MB")
    print()
    print(f"   {'after':<24}{'RSS':>9}{'share':>9}{'/ file':>9}{'/ own size':>12}   MB; share: RSS less Parley's own")
    for p in report["points"]:
        print(
            f"   {p['after']:<24}{p['rss_mb']:>9.1f}{p['share_mb']:>9.1f}"
            f"{p['share_of_file']:>9.2f}{p['share_of_own_size']:>12.2f}"
        )
    print(f"   peak RSS {report['peak_rss_mb']} MB: the share {report['peak_share_of_own_size']:.2f}x the own size")
    print()
    print(f"   {'request':<24}{'seconds':>9}{'end':>11}{'tokens':>8}{'repeats':>9}   answer")
    for r in report["requests"]:
        answer = " ".join(r["text"].split())
        answer = answer if len(answer) <= 60 else answer[:57] + "..."
        print(
            f"   {r['request']:<24}{fmt(r['seconds']):>9}{r['end']:>11}{r['tokens']:>8}"
            f"{r['most_repeated_line']:>9}   {answer}"
        )
    print()
    print_targets(report["targets"])
    print_footer(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--long-prompt-tokens", type=int, default=1500, help="the long prompt's length in tokens (0: none)"
    )
    parser.add_argument("--request-timeout", type=float, default=120, help="bound on each request, in seconds")
    parser.add_argument("--max-seconds", type=float, default=600, help="bound on the whole run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    args = parser.parse_args(argv)

    def start(children: Children) -> Any:
        bare, bare_proc = start_parley(children, BARE_CONFIG, name="parley-bare")
        base, proc = start_parley(children, EMBEDDED_CONFIG, name="parley")
        return scenario(bare_proc.pid, bare, proc.pid, base, args)

    started = time.perf_counter()
    report = run_benchmark(start, args.max_seconds)
    if isinstance(report, int):
        return report
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_report(report)
    return conclude(report, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
