"""Chat completions on the embedded model (SmolLM2-135M through llama.cpp), over HTTP."""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from parley.config import LocalGenerationDefaults
from tests.conftest import ParleyProcess

MODEL = "smollm2-135m"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(embedded: ParleyProcess) -> openai.OpenAI:
    return embedded.client(timeout=120)


# The embedded model as a newcomer meets it ---------------------------------------------------------

HAIKU = "Write a haiku about the sea."
DEFAULT_CAP = LocalGenerationDefaults().max_tokens


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyProcess]:
    """Parley as `make serve` starts it, for itself: the tests below make its first requests.

    llama.cpp draws each completion's seed from the one before, so a fresh
    server samples its first answers as a newcomer's fresh server does. With
    llama.cpp's sampling defaults and no repetition penalty, its first haiku
    repeated lines until the 8,192-token context was full (4 minutes 45 s).
    """
    server = ParleyProcess(tmp_path_factory.mktemp("newcomer"))
    server.start()
    yield server
    server.stop()


def most_repeated_line(text: str) -> int:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return max(collections.Counter(lines).values(), default=0)


def test_the_readme_haiku_ends_by_itself_in_a_few_lines_through_chat_completions(newcomer: ParleyProcess) -> None:
    # The client's timeout ends the test in seconds if the answer runs on.
    completion = newcomer.client(timeout=30).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": HAIKU}]
    )

    text = completion.choices[0].message.content or ""
    assert completion.choices[0].finish_reason == "stop", text
    assert text.strip()
    assert completion.usage is not None and completion.usage.completion_tokens < DEFAULT_CAP
    assert most_repeated_line(text) < 3, text


def test_the_readme_haiku_ends_by_itself_in_a_few_lines_through_responses(newcomer: ParleyProcess) -> None:
    response = newcomer.client(timeout=30).responses.create(model=MODEL, input=HAIKU)

    assert response.status == "completed", response.output_text
    assert response.output_text.strip()
    assert response.usage is not None and response.usage.output_tokens < DEFAULT_CAP
    assert most_repeated_line(response.output_text) < 3, response.output_text


def test_the_readme_first_request_is_answered_in_a_sentence(newcomer: ParleyProcess) -> None:
    completion = newcomer.client(timeout=30).chat.completions.create(model=MODEL, messages=QUESTION)

    assert completion.choices[0].finish_reason == "stop"
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.usage is not None and completion.usage.completion_tokens < 50


REPEAT_ME = [{"role": "user", "content": "Say the word 'sea' ten times."}]


def test_a_repetition_penalty_applies_unless_the_request_sets_its_own(client: openai.OpenAI) -> None:
    def answer(**extra: object) -> str:
        completion = client.chat.completions.create(
            model=MODEL, messages=REPEAT_ME, temperature=0, max_tokens=12, extra_body=extra
        )
        return completion.choices[0].message.content or ""

    default = answer()
    # Greedy decoding with no penalty counts "1. 1. 1. 2. 3."; the default penalty changes that.
    assert answer(repeat_penalty=1.0) != default
    assert answer(repeat_penalty=LocalGenerationDefaults().repeat_penalty) == default


@pytest.mark.parametrize("value", [0, -1, "high", True], ids=["zero", "negative", "string", "boolean"])
def test_a_repetition_penalty_that_is_not_a_positive_number_is_a_400(client: openai.OpenAI, value: object) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=QUESTION, extra_body={"repeat_penalty": value})
    assert raised.value.param == "repeat_penalty"


def test_plain_completion_at_temperature_zero_is_deterministic(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    second = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)

    assert first.object == "chat.completion"
    assert first.model == MODEL
    choice = first.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason in ("stop", "length")
    assert first.usage is not None
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert second.choices[0].message.content == choice.message.content


def test_streamed_completion_matches_the_unstreamed_one(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature=0,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 1, "tokens must arrive as they are generated, not in one piece"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_usage_chunk_only_when_asked(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


@pytest.mark.parametrize("tool_choice", ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_call(client: openai.OpenAI, tool_choice: object) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice=tool_choice, temperature=0
    )

    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls
    call = message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


@pytest.mark.parametrize("tool_choice", ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}])
def test_streamed_tool_call(client: openai.OpenAI, tool_choice: object) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=WEATHER_QUESTION,
            tools=[WEATHER_TOOL],
            tool_choice=tool_choice,
            temperature=0,
            stream=True,
        )
    )

    deltas = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    assert len(deltas) > 2, "arguments must stream in pieces"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.index == 0)
    assert "city" in json.loads(arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice="none", temperature=0, max_tokens=20
    )
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content


def test_streamed_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    options = {"model": MODEL, "messages": WEATHER_QUESTION, "tools": [WEATHER_TOOL], "tool_choice": "none"}
    whole = client.chat.completions.create(**options, temperature=0, max_tokens=20)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(**options, temperature=0, max_tokens=20, stream=True))  # type: ignore[call-overload]

    assert all(not c.choices[0].delta.tool_calls for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]


def test_tool_result_reaches_the_model(client: openai.OpenAI) -> None:
    messages = [
        *WEATHER_QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees Celsius"},
    ]
    completion = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="none", temperature=0, max_tokens=40
    )
    assert completion.choices[0].message.content


def test_json_object_response_format(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": 'Return a JSON object with the key "animal" set to "cat".'}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_json_schema_response_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
        temperature=0,
        max_tokens=80,
    )
    person = json.loads(completion.choices[0].message.content or "")
    assert set(person) == {"name", "age"}
    assert isinstance(person["age"], int)


def test_logprobs(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3
    )
    entries = completion.choices[0].logprobs.content
    assert len(entries) == completion.usage.completion_tokens
    assert "".join(e.token for e in entries) == completion.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy decoding picks the most likely token.
        assert entry.top_logprobs[0].token == entry.token
        assert bytes(entry.bytes).decode() == entry.token


def test_logprobs_of_a_prompt_the_model_has_just_read_without_them(client: openai.OpenAI) -> None:
    """Logits are kept only for a request that asks: a prompt the model holds without them is read again."""
    colour = [{"role": "user", "content": "Name a colour."}]
    options = {"model": MODEL, "messages": colour, "temperature": 0, "max_tokens": 1}
    client.chat.completions.create(**{**options, "messages": QUESTION})  # type: ignore[call-overload]
    fresh = client.chat.completions.create(**options, logprobs=True, top_logprobs=3)  # type: ignore[call-overload]
    # One token generated and not read back: the model holds exactly the prompt, without its logits.
    client.chat.completions.create(**options)  # type: ignore[call-overload]
    held = client.chat.completions.create(**options, logprobs=True, top_logprobs=3)  # type: ignore[call-overload]

    assert held.choices[0].logprobs.content == fresh.choices[0].logprobs.content
    [entry] = held.choices[0].logprobs.content
    assert entry.top_logprobs[0].token == entry.token and entry.logprob > -5


def test_streamed_logprobs(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=QUESTION, temperature=0, max_tokens=5, logprobs=True, stream=True
        )
    )
    with_logprobs = [c for c in chunks if c.choices and c.choices[0].logprobs]
    assert len(with_logprobs) == 5
    assert all(c.choices[0].logprobs.content[0].top_logprobs == [] for c in with_logprobs)


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_completion_tokens=3,
        temperature=0,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_stop_sequence(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    text = whole.choices[0].message.content or ""
    word = "Paris"
    assert word in text
    stopped = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30, stop=[word])
    assert stopped.choices[0].message.content == text[: text.index(word)]
    assert stopped.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me a short poem."}]
    runs = [
        client.chat.completions.create(model=MODEL, messages=messages, temperature=1.0, seed=42, max_tokens=20)
        for _ in range(2)
    ]
    assert runs[0].choices[0].message.content == runs[1].choices[0].message.content


def test_context_length_exceeded_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 9000}], max_tokens=10
        )
    assert raised.value.code == "context_length_exceeded"


def test_several_choices_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=QUESTION, n=2)
    assert raised.value.param == "n"


@contextlib.contextmanager
def _model_busy(server: ParleyProcess) -> Iterator[None]:
    """While an endless generation holds the model (its worker serves one request at a time, in order)."""
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=ENDLESS) as running:
            lines = running.iter_lines()  # kept: let go, it closes the response, and the generation stops
            while not next(lines).startswith("data:"):
                pass
            yield


IMAGE = "data:image/png;base64,AAAA"


def test_images_are_refused_on_arrival_naming_their_place(embedded: ParleyProcess) -> None:
    """Not once the worker takes the request, after every one queued before it."""
    client = embedded.client(timeout=60)
    with _model_busy(embedded), pytest.raises(openai.BadRequestError) as raised:
        started = time.monotonic()
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": IMAGE}},
                    ],
                }
            ],
        )
    assert time.monotonic() - started < 2
    assert (raised.value.param, raised.value.code) == ("messages[0].content[1]", "unsupported_value")
    assert "'image_url'" in raised.value.message and "reads text only" in raised.value.message


def test_a_responses_image_is_refused_on_arrival_naming_its_input_place(embedded: ParleyProcess) -> None:
    """The place is the request's (`input[0].content[1]`, an `input_image`), not that of Parley's chat request."""
    client = embedded.client(timeout=60)
    content = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": IMAGE}]
    with _model_busy(embedded), pytest.raises(openai.BadRequestError) as raised:
        started = time.monotonic()
        client.responses.create(model=MODEL, input=[{"role": "user", "content": content}], store=False)
    assert time.monotonic() - started < 2
    assert (raised.value.param, raised.value.code) == ("input[0].content[1]", "unsupported_value")
    assert "'input_image'" in raised.value.message and "reads text only" in raised.value.message


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "assistant", "tool_calls": 5}, "messages[0].tool_calls"),
        ({"role": "assistant", "tool_calls": [5]}, "messages[0].tool_calls[0]"),
        ({"role": "user", "content": [{"type": "text", "text": 5}]}, "messages[0].content[0].text"),
    ],
    ids=["tool-calls-not-a-list", "tool-call-not-an-object", "text-part-not-a-string"],
)
def test_malformed_message_is_a_400_naming_it_not_a_model_failure(
    embedded: ParleyProcess, message: dict[str, object], param: str
) -> None:
    with embedded.http() as http:
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [message]})

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_either_token_limit_ends_with_length(client: openai.OpenAI, field: str) -> None:
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    completion = client.chat.completions.create(model=MODEL, messages=story, temperature=0, **{field: 5})  # type: ignore[call-overload]

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens <= 6


def test_server_answers_while_a_generation_runs(embedded: ParleyProcess) -> None:
    """Generation runs off the event loop: the server stays responsive."""
    client = embedded.client(timeout=120)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=300,
        stream=True,
    )
    iterator = iter(stream)
    next(iterator)
    with embedded.http() as http:
        started = time.monotonic()
        assert http.get("/v1/health").status_code == 200
        assert time.monotonic() - started < 1.0
    stream.close()


def test_concurrent_requests_queue_and_all_complete(embedded: ParleyProcess) -> None:
    client = embedded.client(timeout=180)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            completion = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20)
            results[i] = completion.choices[0].message.content or ""
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors
    assert len(set(results.values())) == 1 and len(results) == 4


# At temperature 0 and with no repetition penalty, this repeats itself to its 2,000 tokens: about
# 30 s on two shared cores, long enough to hold the model while a test queues requests behind it.
ENDLESS = {
    "model": MODEL,
    "messages": [
        {"role": "user", "content": "Write a very long essay about the history of Europe, with many chapters."}
    ],
    "temperature": 0,
    "repeat_penalty": 1.0,
    "max_tokens": 2000,
    "stream": True,
}


def test_disconnect_mid_generation_frees_the_model(embedded: ParleyProcess) -> None:
    with httpx.Client(base_url=embedded.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=ENDLESS) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    break
        started = time.monotonic()
        completion = embedded.client(timeout=60).chat.completions.create(
            model=MODEL, messages=QUESTION, temperature=0, max_tokens=5
        )
        assert completion.choices[0].message.content
        # The abandoned 2000-token generation was stopped, not run to its end.
        assert time.monotonic() - started < 10


def test_client_leaving_a_non_streamed_request_frees_the_model(embedded: ParleyProcess) -> None:
    with pytest.raises(openai.APITimeoutError):
        embedded.client(timeout=2).chat.completions.create(
            model=MODEL,
            messages=ENDLESS["messages"],  # type: ignore[arg-type]
            temperature=0,
            max_tokens=2000,
            extra_body={"repeat_penalty": 1.0},
        )

    started = time.monotonic()
    completion = embedded.client(timeout=60).chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=5
    )
    assert completion.choices[0].message.content
    # The abandoned essay was stopped, not written to its end first.
    assert time.monotonic() - started < 10


# The worker's own log line for a request it skips: the only trace of a request that was never generated.
DROPPED = "dropped a queued request whose caller stopped waiting"


def _dropped(server: ParleyProcess) -> int:
    return "".join(server.output).count(DROPPED)


def _dropped_once_more(server: ParleyProcess, before: int) -> bool:
    """Whether the server logged one more dropped request; waits a little for its log to be read."""
    deadline = time.monotonic() + 3
    while _dropped(server) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return _dropped(server) == before + 1


def _leave_while_queued(server: ParleyProcess, path: str, body: dict[str, object]) -> None:
    """Sends a request while an endless generation holds the model, and leaves before its turn comes.

    The model serves one request at a time, in order: this one waits until
    the generation ahead of it ends, which is when the client of that one
    leaves, after this one's client has given up.
    """
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=ENDLESS) as running:
            # Kept: a line iterator let go closes the response, and the client of the generation leaves.
            lines = running.iter_lines()
            while not next(lines).startswith("data:"):
                pass
            with httpx.Client(base_url=server.base_url, timeout=httpx.Timeout(60, read=2)) as leaving:
                with pytest.raises(httpx.ReadTimeout):
                    if body.get("stream"):
                        with leaving.stream("POST", path, json=body) as response:
                            response.read()
                    else:
                        leaving.post(path, json=body)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_queued_request_whose_client_leaves_is_dropped_not_generated(embedded: ParleyProcess, stream: bool) -> None:
    before = _dropped(embedded)
    _leave_while_queued(
        embedded, "/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "max_tokens": 20, "stream": stream}
    )

    # The next request is served once the worker has passed the one that left.
    completion = embedded.client().chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=5)
    assert completion.choices[0].message.content
    assert _dropped_once_more(embedded, before)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_queued_response_whose_client_leaves_is_dropped_not_generated(embedded: ParleyProcess, stream: bool) -> None:
    # Not stored and in no conversation: nobody could read it once its client has left.
    before = _dropped(embedded)
    body = {"model": MODEL, "input": "Hello!", "max_output_tokens": 16, "store": False, "stream": stream}
    _leave_while_queued(embedded, "/v1/responses", body)

    completion = embedded.client().chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=5)
    assert completion.choices[0].message.content
    assert _dropped_once_more(embedded, before)


# llama.cpp's own chat formats ------------------------------------------------------------------


PLAIN = {"chat_format": "chatml", "n_ctx": 2048}


@pytest.fixture(scope="module")
def chatml(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyProcess]:
    """The embedded file through llama.cpp's `chatml` format rather than Parley's function-calling one."""
    providers = {"local": {"type": "local", "models": {"plain": PLAIN}}}
    server = ParleyProcess(tmp_path_factory.mktemp("chatml"), {"inference": {"providers": providers}})
    server.start()
    yield server
    server.stop()


def test_template_chat_format_reports_usage_streamed_and_not(chatml: ParleyProcess) -> None:
    client = chatml.client(timeout=120)
    whole = client.chat.completions.create(model="local/plain", messages=QUESTION, temperature=0, max_tokens=20)
    chunks = list(
        client.chat.completions.create(
            model="local/plain",
            messages=QUESTION,
            temperature=0,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert whole.choices[0].message.content
    assert whole.usage is not None
    assert whole.usage.prompt_tokens > 5 and whole.usage.completion_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage


@pytest.fixture(scope="module")
def reference() -> object:
    """The same file and chat format, run by llama-cpp-python itself in this process.

    Loaded as Parley loads it: its `Llama` class as Parley subclasses it, which
    changes nothing of the usage it reports, only how a prompt is split for
    evaluation (its last token alone), and with the same settings, so that
    both generate the same text.
    """
    from parley.config import LocalModelConfig
    from parley.inference.local_loading import embedded_model_path, load

    return load(embedded_model_path(), LocalModelConfig(**PLAIN))


@pytest.mark.parametrize(
    ("messages", "options"),
    [
        (QUESTION, {"max_tokens": 4}),
        ([{"role": "user", "content": "Say hello."}], {"max_tokens": 200}),
        # The tokens of the stop sequence are generated, and counted, though their text is not sent.
        (QUESTION, {"max_tokens": 40, "stop": ["Paris"]}),
        (QUESTION, {"max_tokens": 40, "stop": [" capital"]}),
    ],
    ids=["length", "end-of-generation", "stop-sequence", "stop-at-a-token-boundary"],
)
def test_template_chat_format_usage_is_llama_cpps_own(
    chatml: ParleyProcess, reference: object, messages: list[dict[str, str]], options: dict[str, object]
) -> None:
    # Sampled as Parley samples a request that sets no repetition penalty of its own.
    penalty = LocalGenerationDefaults().repeat_penalty
    expected = reference.create_chat_completion(messages=messages, temperature=0, repeat_penalty=penalty, **options)  # type: ignore[attr-defined]
    client = chatml.client(timeout=120)
    whole = client.chat.completions.create(model="local/plain", messages=messages, temperature=0, **options)  # type: ignore[call-overload]
    chunks = list(
        client.chat.completions.create(  # type: ignore[call-overload]
            model="local/plain",
            messages=messages,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            **options,
        )
    )

    assert whole.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert whole.choices[0].finish_reason == expected["choices"][0]["finish_reason"]
    usage = whole.usage
    assert usage is not None
    own = expected["usage"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        own["prompt_tokens"],
        own["completion_tokens"],
        own["total_tokens"],
    )
    assert chunks[-1].usage == usage


# Models with settings of their own: a small context, a small default cap ------------------------


@pytest.fixture(scope="module")
def small_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyProcess]:
    capped = {"n_ctx": 512, "defaults": {"max_tokens": 6, "temperature": 0}, "logprobs": False}
    models = {"tiny": {"n_ctx": 256}, "capped": capped}
    providers = {"local": {"type": "local", "models": models}}
    server = ParleyProcess(tmp_path_factory.mktemp("small-models"), {"inference": {"providers": providers}})
    server.start()
    yield server
    server.stop()


STORY = [{"role": "user", "content": "Write a long story about a dragon."}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_model_default_cap_ends_a_request_that_sets_no_limit(small_models: ParleyProcess, stream: bool) -> None:
    client = small_models.client(timeout=60)
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="local/capped", messages=STORY, stream=True, stream_options={"include_usage": True}
            )
        )
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
    else:
        completion = client.chat.completions.create(model="local/capped", messages=STORY)
        finish, usage = [completion.choices[0].finish_reason], completion.usage

    assert finish == ["length"]
    assert usage is not None and usage.completion_tokens == 6


def test_a_request_limit_wins_over_the_model_default_cap(small_models: ParleyProcess) -> None:
    client = small_models.client(timeout=60)
    completion = client.chat.completions.create(model="local/capped", messages=STORY, max_tokens=9)
    response = client.responses.create(model="local/capped", input=STORY[0]["content"], max_output_tokens=16)

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 9
    assert response.status == "incomplete" and response.usage is not None and response.usage.output_tokens == 16


def test_logprobs_from_a_model_configured_without_them_are_a_400(small_models: ParleyProcess) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        small_models.client().chat.completions.create(model="local/capped", messages=QUESTION, logprobs=True)
    assert raised.value.param == "logprobs"


def test_the_model_default_temperature_applies_to_a_request_that_sets_none(small_models: ParleyProcess) -> None:
    client = small_models.client(timeout=60)
    animal = [{"role": "user", "content": "Name an animal."}]
    # The model's default is 0: greedy, the same answer whatever the seed. At the usual
    # default, 0.2, six seeds gave four different answers.
    answers = {
        client.chat.completions.create(model="local/capped", messages=animal, seed=seed).choices[0].message.content
        for seed in range(6)
    }
    greedy = client.chat.completions.create(model="local/capped", messages=animal, temperature=0)

    assert answers == {greedy.choices[0].message.content}


# Padded so that the prompt (241 tokens with the tools) and the call's arguments fill the
# 256-token context: there is no room left to choose whether to make another call.
FILLING_QUESTION = [{"role": "user", "content": "Paris " * 40 + "What is the weather in Paris?"}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_call_filling_the_context_ends_the_turn_not_the_request(small_models: ParleyProcess, stream: bool) -> None:
    client = small_models.client(timeout=120)
    options = {"model": "local/tiny", "messages": FILLING_QUESTION, "tools": [WEATHER_TOOL], "tool_choice": "required"}
    if stream:
        chunks = list(client.chat.completions.create(**options, temperature=0, stream=True))  # type: ignore[call-overload]
        deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
        calls = [("".join(d.function.name or "" for d in deltas), "".join(d.function.arguments or "" for d in deltas))]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    else:
        completion = client.chat.completions.create(**options, temperature=0)  # type: ignore[call-overload]
        calls = [(c.function.name, c.function.arguments) for c in completion.choices[0].message.tool_calls or ()]
        finish = [completion.choices[0].finish_reason]

    assert finish == ["tool_calls"]
    assert [(name, json.loads(arguments)) for name, arguments in calls] == [("get_weather", {"city": "Paris"})]


def test_a_response_echoes_the_sampling_the_model_used(embedded: ParleyProcess) -> None:
    # The embedded model's own defaults, not OpenAI's 1, when the request sets none; the request's own else.
    client = embedded.client()
    default = client.responses.create(model=MODEL, input="Hi!", max_output_tokens=16)
    assert (default.temperature, default.top_p) == (0.2, 0.9)
    chosen = client.responses.create(model=MODEL, input="Hi!", max_output_tokens=16, temperature=0.7, top_p=0.5)
    assert (chosen.temperature, chosen.top_p) == (0.7, 0.5)
