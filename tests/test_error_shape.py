"""Every error Parley answers has OpenAI's body: `{"error": {"message", "type", "param", "code"}}`.

One table of failing requests, one assertion of the shape. Requests the openai
client can express go through it (its exception carries the raw response);
the rest (bodies that are not JSON, missing required fields, other routes and
methods) go through httpx.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ParleyProcess

HELLO = [{"role": "user", "content": "hi"}]
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}

pytestmark = pytest.mark.timeout(60)

Send = Callable[[openai.OpenAI, httpx.Client], Any]


@dataclass(frozen=True)
class Case:
    id: str
    send: Send
    status: int
    param: str | None = None
    code: str | None = None
    type: str = "invalid_request_error"


def chat(**fields: Any) -> Send:
    """A chat completion through the openai client, `fields` over a valid request."""
    arguments = {"model": "echo", "messages": HELLO, **fields}

    def send(client: openai.OpenAI, http: httpx.Client) -> Any:
        try:
            client.chat.completions.create(**arguments)
        except openai.APIStatusError as exc:
            return exc.response
        pytest.fail(f"the request succeeded: {arguments}")

    return send


def raw(method: str, path: str, **kwargs: Any) -> Send:
    """A request through httpx; a body given as bytes is sent as JSON (Content-Type) unless headers say otherwise."""
    if "content" in kwargs:
        kwargs["headers"] = {"Content-Type": "application/json", **kwargs.get("headers", {})}

    def send(client: openai.OpenAI, http: httpx.Client) -> Any:
        return http.request(method, path, **kwargs)

    return send


def retrieve(model: str) -> Send:
    def send(client: openai.OpenAI, http: httpx.Client) -> Any:
        try:
            client.models.retrieve(model)
        except openai.APIStatusError as exc:
            return exc.response
        pytest.fail(f"model {model} was found")

    return send


CASES = [
    # The body is not a JSON object.
    Case("invalid-json", raw("POST", "/v1/chat/completions", content=b'{"model": "echo",'), 400),
    Case("json-array", raw("POST", "/v1/chat/completions", json=[{"model": "echo"}]), 400),
    Case("json-null", raw("POST", "/v1/chat/completions", content=b"null"), 400),
    Case("empty-body", raw("POST", "/v1/chat/completions"), 400),
    Case("not-utf8", raw("POST", "/v1/chat/completions", content=b'{"model": "\xff"}'), 400),
    # Fields missing or invalid.
    Case(
        "missing-model",
        raw("POST", "/v1/chat/completions", json={"messages": HELLO}),
        400,
        "model",
        "missing_required_parameter",
    ),
    Case(
        "missing-messages",
        raw("POST", "/v1/chat/completions", json={"model": "echo"}),
        400,
        "messages",
        "missing_required_parameter",
    ),
    Case(
        "model-not-a-string",
        raw("POST", "/v1/chat/completions", json={"model": 5, "messages": HELLO}),
        400,
        "model",
        "invalid_value",
    ),
    Case(
        "message-without-role",
        raw("POST", "/v1/chat/completions", json={"model": "echo", "messages": [{"content": "hi"}]}),
        400,
        "messages[0].role",
        "missing_required_parameter",
    ),
    Case("empty-messages", chat(messages=[]), 400, "messages", "invalid_value"),
    Case(
        "invalid-role",
        chat(messages=[{"role": "robot", "content": "hi"}]),
        400,
        "messages[0].role",
        "invalid_value",
    ),
    Case(
        "invalid-role-streamed",
        chat(messages=[HELLO[0], {"role": "robot", "content": "hi"}], stream=True),
        400,
        "messages[1].role",
        "invalid_value",
    ),
    Case("temperature-5", chat(temperature=5), 400, "temperature", "invalid_value"),
    Case("temperature-5-streamed", chat(temperature=5, stream=True), 400, "temperature", "invalid_value"),
    Case("top-p-2", chat(top_p=2), 400, "top_p", "invalid_value"),
    Case("max-tokens-0", chat(max_tokens=0), 400, "max_tokens", "invalid_value"),
    Case(
        "tool-name-with-space",
        chat(tools=[{"type": "function", "function": {"name": "get weather"}}]),
        400,
        "tools[0].function.name",
        "invalid_value",
    ),
    Case(
        "json-schema-without-schema",
        chat(response_format={"type": "json_schema"}),
        400,
        "response_format",
        "invalid_value",
    ),
    # Fields that contradict each other.
    Case("top-logprobs-without-logprobs", chat(top_logprobs=2), 400, "top_logprobs", "invalid_value"),
    Case("tool-choice-without-tools", chat(tool_choice="auto"), 400, "tool_choice", "invalid_value"),
    Case(
        "tool-choice-not-among-tools",
        chat(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_time"}}),
        400,
        "tool_choice",
        "invalid_value",
    ),
    Case(
        "stream-options-without-stream",
        chat(stream_options={"include_usage": True}),
        400,
        "stream_options",
        "invalid_value",
    ),
    Case("five-stop-sequences", chat(stop=["a", "b", "c", "d", "e"]), 400, "stop", "invalid_value"),
    # Routes, methods and models that do not exist.
    Case("unknown-route", raw("GET", "/v1/nope"), 404),
    Case("unknown-route-post", raw("POST", "/v1/nope", json={}), 404),
    Case("wrong-method", raw("GET", "/v1/chat/completions"), 405),
    Case("wrong-method-models", raw("DELETE", "/v1/models"), 405),
    Case("unknown-model", chat(model="nope"), 404, "model", "model_not_found"),
    Case("unknown-model-streamed", chat(model="fake/nope", stream=True), 404, "model", "model_not_found"),
    Case("unknown-model-retrieved", retrieve("fake/nope"), 404, "model", "model_not_found"),
    # The upstream fails.
    Case("upstream-400", chat(model="fake/fake-error-400"), 400, "messages", "fake_code"),
    Case("upstream-400-streamed", chat(model="fake/fake-error-400", stream=True), 400, "messages", "fake_code"),
    Case(
        "upstream-429",
        chat(model="fake/fake-error-429"),
        429,
        None,
        "rate_limit_exceeded",
        "rate_limit_exceeded",
    ),
    Case("upstream-500", chat(model="fake/fake-error-500"), 502, None, "upstream_unavailable", "upstream_error"),
    Case(
        "upstream-500-streamed",
        chat(model="fake/fake-error-500", stream=True),
        502,
        None,
        "upstream_unavailable",
        "upstream_error",
    ),
    Case("upstream-down", chat(model="down/any"), 502, None, "upstream_unavailable", "upstream_error"),
    Case(
        "upstream-malformed",
        chat(model="fake/fake-malformed"),
        502,
        None,
        "upstream_protocol_error",
        "upstream_error",
    ),
    Case("upstream-hang", chat(model="fake/fake-hang"), 504, None, "upstream_timeout", "upstream_error"),
    # What parley.api.guard refuses before any route.
    Case(
        "text-plain-body",
        raw("POST", "/v1/responses", content=b'{"model": "echo"}', headers={"Content-Type": "text/plain"}),
        415,
        None,
        "unsupported_content_type",
    ),
    Case("another-host", raw("GET", "/v1/models", headers={"Host": "rebound.example"}), 400, None, "invalid_host"),
    Case("nul-in-path", raw("GET", "/v1/responses/resp_%00x"), 404),
    Case("nul-in-query", raw("GET", "/v1/responses?after=%00"), 400, "after", "invalid_value"),
    Case(
        "nested-too-deep",
        raw(
            "POST",
            "/v1/chat/completions",
            json={"model": "echo", "messages": HELLO, "x": json.loads("[" * 70 + "]" * 70)},
        ),
        400,
        "x" + "[0]" * 63,  # the first array inside 64 others
        "invalid_value",
    ),
]

PARAMS = [pytest.param(case, id=case.id) for case in CASES] + [
    pytest.param(
        Case("tool-choice-unknown-string", chat(tool_choice="sometimes"), 400, "tool_choice", "invalid_value"),
        id="tool-choice-unknown-string",
    ),
    pytest.param(
        Case(
            "tool-choice-without-function",
            chat(tools=[WEATHER_TOOL], tool_choice={"type": "function"}),
            400,
            "tool_choice.function",
            "missing_required_parameter",
        ),
        id="tool-choice-without-function",
    ),
]


@pytest.fixture(scope="module")
def client(upstream: ParleyProcess) -> Iterator[openai.OpenAI]:
    with upstream.client(timeout=20) as c:
        yield c


@pytest.fixture(scope="module")
def http(upstream: ParleyProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.base_url, timeout=20) as c:
        yield c


@pytest.mark.parametrize("case", PARAMS)
def test_error_body_has_openai_shape(client: openai.OpenAI, http: httpx.Client, case: Case) -> None:
    response = case.send(client, http)

    assert response.status_code == case.status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert isinstance(error["message"], str) and error["message"]
    assert {k: error[k] for k in ("type", "param", "code")} == {
        "type": case.type,
        "param": case.param,
        "code": case.code,
    }


ODD_BODIES = [
    b"\xef\xbb\xbf" + json.dumps({"model": "echo", "messages": HELLO}).encode(),  # a UTF-8 byte order mark
    b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}]} trailing',
    b'"just a string"',
    b"[]",
    b"42",
    *(
        json.dumps({"model": "echo", "messages": HELLO, **fields}).encode()
        for fields in (
            {"messages": ["hi"]},
            {"messages": [{"role": "user", "content": 5}]},
            {"messages": [{"role": "user", "content": [1]}]},
            {"messages": {"role": "user", "content": "hi"}},
            {"stop": 5},
            {"tools": "x"},
            {"tools": [{"type": "function"}]},
            {"tools": [{"type": "retrieval"}]},
            {"seed": 1.5},
            {"logprobs": "maybe"},
            {"user": 5},
            {"n": 0},
            {"max_tokens": 10**30},
            {"stream_options": "yes", "stream": True},
            {"response_format": {"type": "xml"}},
            {"response_format": "json"},
            {"tool_choice": {"type": "function"}},
            {"model": None},
            {"model": ["echo"]},
        )
    ),
]


@pytest.mark.parametrize("body", ODD_BODIES, ids=[f"odd-{i}" for i in range(len(ODD_BODIES))])
def test_odd_bodies_are_a_400_in_openai_shape(http: httpx.Client, body: bytes) -> None:
    response = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert error["type"] == "invalid_request_error"


def test_error_messages_name_the_problem(http: httpx.Client) -> None:
    def message(body: Any) -> str:
        return http.post("/v1/chat/completions", json=body).json()["error"]["message"]

    assert message({"messages": HELLO}) == "Missing required parameter: 'model'."
    assert message({"model": "echo", "messages": HELLO, "temperature": 5}) == (
        "Invalid value for 'temperature': Input should be less than or equal to 2"
    )
    assert message({"model": "nope", "messages": HELLO}) == "The model `nope` does not exist."
    assert http.get("/v1/nope").json()["error"]["message"] == "Invalid URL (GET /v1/nope)"


def test_wrong_method_says_which_methods_are_allowed(http: httpx.Client) -> None:
    response = http.get("/v1/chat/completions")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
    ids=["text-plain", "form-urlencoded-as-curl-d-sends", "multipart", "no-content-type"],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/conversations"])
def test_a_body_not_sent_as_json_is_a_415(http: httpx.Client, content_type: str | None, path: str) -> None:
    # What a web page may send anywhere without a preflight: text/plain, forms and multipart.
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"model": "echo", "messages": HELLO, "input": "hi"})

    response = http.post(path, content=body, headers=headers)

    assert response.status_code == 415
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, "unsupported_content_type")
    if content_type:
        media_type = content_type.split(";")[0]
        assert error["message"].startswith(f"Unsupported content type: '{media_type}'. This API method only accepts")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_json_body_is_read_with_any_spelling_of_its_content_type(
    http: httpx.Client, content_type: str, stream: bool
) -> None:
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "plain text body"}], "stream": stream})

    response = http.post("/v1/chat/completions", content=body, headers={"Content-Type": content_type})

    assert response.status_code == 200
    if stream:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.text.endswith("data: [DONE]\n\n")
    else:
        assert response.json()["choices"][0]["message"]["content"] == "plain text body"
