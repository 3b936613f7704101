"""No input gives a 500, and no web page can drive Parley (issue 13: section 1's second bullet, the body-size
limit, and section 2).

Over HTTP against running servers: the session's `upstream` (default settings:
bound to 127.0.0.1, CORS off, the default body limit), `parley` (the same on
SQLite and on PostgreSQL, where a NUL character used to be a 500), and a
module's own server with `server.allowed_hosts`, `server.cors_origins` and a
small `server.max_body_bytes`. The size limits are tried over raw sockets, so
that a test sees when the server answers while the body is still being sent.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream

ECHO = "fake/fake-echo"
HELLO = [{"role": "user", "content": "hi"}]
JSON = {"Content-Type": "application/json"}
APP = "https://app.example.test"
LIMIT = 65536

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[ParleyProcess]:
    """A server that answers to its own names, lets one origin's pages call it, and takes bodies of 64 KiB."""
    config = upstream_config(fake_upstream)
    config["server"] = {
        "allowed_hosts": ["parley.internal", "*.example.test", "127.0.0.1"],
        "cors_origins": [APP],
        "max_body_bytes": LIMIT,
    }
    server = ParleyProcess(tmp_path_factory.mktemp("configured"), config)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(upstream: ParleyProcess) -> Iterator[httpx.Client]:
    with upstream.http() as client:
        yield client


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and list(body["error"]) == ["message", "type", "param", "code"]
    return body["error"]


def nested(depth: int, leaf: Any = None) -> Any:
    """`depth` objects, one inside the next (`{"a": {"a": ...}}`), the innermost holding `leaf` (else nothing)."""
    value: Any = {} if leaf is None else {"a": leaf}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# -- Content-Type --------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_cross_site_text_plain_post_creates_nothing(http: httpx.Client, stream: bool) -> None:
    # What a web page's <form> or fetch(mode: "no-cors") may send to any address without asking.
    before = http.get("/v1/responses", params={"limit": 100}).json()["data"]
    body = json.dumps({"model": ECHO, "input": "from a web page", "stream": stream})

    response = http.post("/v1/responses", content=body, headers={"Content-Type": "text/plain"})

    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_content_type"
    assert http.get("/v1/responses", params={"limit": 100}).json()["data"] == before


def test_a_cross_site_post_adds_no_conversation_item(http: httpx.Client) -> None:
    conversation = http.post("/v1/conversations", json={}).json()["id"]
    item = {"items": [{"role": "user", "content": "planted"}]}

    response = http.post(
        f"/v1/conversations/{conversation}/items",
        content=json.dumps(item),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 415
    assert http.get(f"/v1/conversations/{conversation}/items").json()["data"] == []


def test_a_post_without_a_body_needs_no_content_type(http: httpx.Client) -> None:
    response = http.post("/v1/conversations")

    assert response.status_code == 200
    assert response.json()["object"] == "conversation"


# -- Host ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/responses", {"model": ECHO, "input": "hi"}),
        ("POST", "/v1/chat/completions", {"model": ECHO, "messages": HELLO}),
        ("GET", "/v1/responses", None),
        ("GET", "/v1/models", None),
    ],
    ids=["responses", "chat", "list", "models"],
)
def test_a_rebound_name_is_refused_on_every_route(
    http: httpx.Client, method: str, path: str, body: dict[str, Any] | None
) -> None:
    # DNS rebinding: the attacker's page, its name now pointing at 127.0.0.1, sends its own name.
    response = http.request(method, path, json=body, headers={"Host": "attacker.example:8321"})

    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, "invalid_host")
    assert "'attacker.example'" in error["message"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST.", "[::1]"])
def test_a_loopback_server_answers_to_its_loopback_names(
    upstream: ParleyProcess, http: httpx.Client, host: str
) -> None:
    port = urlsplit(upstream.base_url).port

    response = http.get("/v1/models", headers={"Host": f"{host}:{port}"})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("parley.internal", 200),
        ("api.example.test", 200),
        ("a.b.example.test", 200),
        ("127.0.0.1", 200),
        ("example.test", 400),
        ("localhost", 400),
        ("parley.internal.evil", 400),
    ],
)
def test_allowed_hosts_are_the_names_taken(configured: ParleyProcess, host: str, status: int) -> None:
    with configured.http() as http:
        response = http.post("/v1/responses", json={"model": ECHO, "input": "hi"}, headers={"Host": host})

    assert response.status_code == status


# -- CORS ----------------------------------------------------------------------


def preflight(http: httpx.Client, origin: str) -> httpx.Response:
    return http.options(
        "/v1/responses",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_cors_is_off_by_default(http: httpx.Client) -> None:
    refused = preflight(http, APP)
    read = http.post("/v1/responses", json={"model": ECHO, "input": "hi"}, headers={"Origin": APP})

    assert refused.status_code == 405
    assert "access-control-allow-origin" not in refused.headers
    assert read.status_code == 200
    assert "access-control-allow-origin" not in read.headers


def test_a_listed_origin_passes_its_preflight(configured: ParleyProcess) -> None:
    with configured.http() as http:
        allowed = preflight(http, APP)
        other = preflight(http, "https://elsewhere.example")

    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == APP
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert allowed.headers["access-control-allow-headers"] == "authorization, content-type"
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("stream", [False, True])
def test_a_listed_origin_may_read_the_answers(configured: ParleyProcess, stream: bool) -> None:
    body = {"model": ECHO, "input": "hi", "stream": stream}
    with configured.http() as http:
        answered = http.post("/v1/responses", json=body, headers={"Origin": APP})
        refused = http.post("/v1/responses", content=json.dumps(body), headers={"Origin": APP})
        other = http.post("/v1/responses", json=body, headers={"Origin": "https://elsewhere.example"})

    assert answered.status_code == 200 and answered.headers["access-control-allow-origin"] == APP
    assert refused.status_code == 415 and refused.headers["access-control-allow-origin"] == APP
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


# -- Size ----------------------------------------------------------------------

BODY_ROUTES = [
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/conversations",
    "/v1/conversations/conv_123/items",
    "/v1/embeddings",
]


def _address(server: ParleyProcess) -> tuple[str, int]:
    url = urlsplit(server.base_url)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


def _read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the answer on `sock`."""
    sock.setblocking(True)
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"the connection closed before an answer: {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        piece = sock.recv(65536)
        assert piece
        body += piece
    return int(lines[0].split()[1]), json.loads(body)


def _head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post_declared(server: ParleyProcess, path: str, length: int) -> tuple[int, dict[str, Any]]:
    """POSTs only the head of a request whose Content-Length is `length`: the answer comes with no body sent."""
    with socket.create_connection(_address(server), timeout=30) as sock:
        sock.sendall(_head(path, Content_Length=str(length)))
        return _read_response(sock)


def post_chunked(server: ParleyProcess, path: str, total: int) -> tuple[int, dict[str, Any], int]:
    """POSTs a chunked body of `total` bytes until an answer comes: its status and body, and the bytes sent."""
    chunk = b"x" * 65536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    with socket.create_connection(_address(server), timeout=30) as sock:
        sock.sendall(_head(path, Transfer_Encoding="chunked"))
        sock.setblocking(False)
        watch = select.poll()
        watch.register(sock, select.POLLIN | select.POLLOUT)
        pending, sent = bytearray(), 0
        while True:
            if not pending:
                if sent >= total:
                    pending += b"0\r\n\r\n"
                else:
                    pending += frame
                    sent += len(chunk)
            # poll, not select: select takes no descriptor past 1,024, which a long session's may be.
            ready = dict(watch.poll(30_000))
            if ready.get(sock.fileno(), 0) & select.POLLIN:
                break
            if ready.get(sock.fileno(), 0) & select.POLLOUT:
                del pending[: sock.send(pending)]
        status, body = _read_response(sock)
        return status, body, sent


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_body_declared_too_large_is_refused_before_it_is_sent(upstream: ParleyProcess, path: str) -> None:
    status, body = post_declared(upstream, path, 200 * 1024 * 1024)

    assert status == 413
    assert body["error"]["code"] == "request_too_large"
    assert body["error"]["type"] == "invalid_request_error"
    assert "33554432 bytes" in body["error"]["message"]  # 32 MiB, server.max_body_bytes's default


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_chunked_body_is_refused_once_it_passes_the_limit(configured: ParleyProcess, path: str) -> None:
    total = 64 * 1024 * 1024

    status, body, sent = post_chunked(configured, path, total)

    assert status == 413 and body["error"]["code"] == "request_too_large"
    # Answered while the body was still being sent: read no further than the limit (and the sockets' buffers).
    assert sent < total


def test_a_200_mb_chunked_body_is_not_read_whole(upstream: ParleyProcess) -> None:
    total = 200 * 1024 * 1024

    status, _, sent = post_chunked(upstream, "/v1/responses", total)

    assert status == 413
    assert sent < 64 * 1024 * 1024


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_within_the_limit_is_taken(configured: ParleyProcess, chunked: bool) -> None:
    body = json.dumps({"model": ECHO, "input": "hi", "metadata": {"pad": "x" * 500}, "instructions": "y" * 60000})
    assert len(body) < LIMIT
    content: Any = iter([body.encode()]) if chunked else body
    with configured.http() as http:
        response = http.post("/v1/responses", content=content, headers=JSON)

    assert response.status_code == 200
    assert response.json()["status"] == "completed"


# -- Nesting -------------------------------------------------------------------


def _tools(parameters: Any) -> dict[str, Any]:
    # {"tools": [{"parameters": ...}]}: the parameters are 3 levels in.
    return {"model": ECHO, "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": parameters}]}


DEEP_PLACES = [
    pytest.param("/v1/responses", lambda value: _tools(value), "tools[0].parameters", 3, id="tool-parameters"),
    pytest.param(
        "/v1/responses",
        lambda value: {
            "model": ECHO,
            "input": "hi",
            "text": {"format": {"type": "json_schema", "name": "s", "schema": value}},
        },
        "text.format.schema",
        3,
        id="text-format-schema",
    ),
    pytest.param(
        "/v1/chat/completions",
        lambda value: {
            "model": ECHO,
            "messages": HELLO,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": value}}],
        },
        "tools[0].function.parameters",
        4,
        id="chat-tools",
    ),
    pytest.param(
        "/v1/conversations/{conversation}/items",
        lambda value: {
            "items": [{"role": "assistant", "content": [{"type": "output_text", "text": "x", "annotations": [value]}]}]
        },
        "items[0].content[0].annotations[0]",
        6,
        id="item-annotations",
    ),
]


@pytest.mark.parametrize(("path", "make", "place", "levels_in"), DEEP_PLACES)
def test_nesting_past_64_levels_is_a_400_naming_its_place(
    parley: ParleyProcess, path: str, make: Any, place: str, levels_in: int
) -> None:
    with parley.http() as http:
        conversation = http.post("/v1/conversations", json={}).json()["id"]
        url = path.format(conversation=conversation)
        # The object at `place` is inside `levels_in` others: 64 levels in all are taken, 65 are not.
        deepest = nested(64 - levels_in)
        too_deep = nested(65 - levels_in)

        taken = http.post(url, json=make(deepest))
        refused = http.post(url, json=make(too_deep))

    assert taken.status_code == 200, taken.text
    assert refused.status_code == 400
    error = error_of(refused)
    expected = place + ".a" * (64 - levels_in)
    assert (error["param"], error["code"]) == (expected, "invalid_value")
    assert "nested more than 64 levels deep" in error["message"]


@pytest.mark.parametrize("depth", [250, 253, 600, 1020])
def test_a_deep_tool_schema_is_refused_and_listing_still_works(parley: ParleyProcess, depth: int) -> None:
    # A schema 250 levels deep used to be stored, and every page of the list that held it was a 500.
    with parley.http() as http:
        kept = http.post("/v1/responses", json=_tools(nested(61))).json()["id"]  # 64 levels in all
        # Written by hand: Python's json module writes about 1,000 levels at most, orjson 254.
        parameters = '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)
        body = json.dumps(_tools("PARAMETERS")).replace('"PARAMETERS"', parameters)
        refused = http.post("/v1/responses", content=body, headers=JSON)
        listing = http.get("/v1/responses", params={"limit": 100})

    assert refused.status_code == 400
    assert error_of(refused)["param"] == "tools[0].parameters" + ".a" * 61
    assert listing.status_code == 200
    assert kept in [response["id"] for response in listing.json()["data"]]


def test_nesting_past_what_json_parsers_read_is_a_400(http: httpx.Client) -> None:
    body = b'{"model": "fake/fake-echo", "input": "hi", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"

    response = http.post("/v1/responses", content=body, headers=JSON)

    assert response.status_code == 400
    assert "nested more than 64 levels deep" in error_of(response)["message"]


def test_a_deep_conversation_item_leaves_the_items_list_readable(parley: ParleyProcess) -> None:
    with parley.http() as http:
        conversation = http.post("/v1/conversations", json={}).json()["id"]
        item = {"role": "assistant", "content": [{"type": "output_text", "text": "x", "annotations": []}]}
        item["content"][0]["annotations"] = [nested(250)]
        refused = http.post(f"/v1/conversations/{conversation}/items", json={"items": [item]})
        listing = http.get(f"/v1/conversations/{conversation}/items")

    assert refused.status_code == 400
    assert listing.status_code == 200 and listing.json()["data"] == []


# -- A `type` that is an object or an array -------------------------------------

TYPE_PLACES = [
    ({"text": {"format": {"type": {}}}}, "text.format.type"),
    ({"tools": [{"type": []}]}, "tools[0].type"),
    ({"tools": [{"type": {"function": True}, "name": "f"}]}, "tools[0].type"),
    ({"input": [{"role": "user", "content": [{"type": {}, "text": "hi"}]}]}, "input[0].content[0].type"),
    (
        {"input": [{"role": "assistant", "content": [{"type": ["output_text"], "text": "hi"}]}]},
        "input[0].content[0].type",
    ),
    ({"input": [{"type": "reasoning", "summary": [{"type": [], "text": "x"}]}]}, "input[0].summary[0].type"),
    ({"input": [{"type": "reasoning", "summary": [], "content": [{"type": {}}]}]}, "input[0].content[0].type"),
    (
        {"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": {}, "text": "x"}]}]},
        "input[0].output[0].type",
    ),
    ({"tool_choice": {"type": {}}}, "tool_choice"),
]


@pytest.mark.parametrize(("fields", "place"), TYPE_PLACES, ids=[place for _, place in TYPE_PLACES])
def test_a_type_that_is_not_a_string_is_a_400_naming_it(http: httpx.Client, fields: dict[str, Any], place: str) -> None:
    response = http.post("/v1/responses", json={"model": ECHO, "input": "hi", **fields})

    assert response.status_code == 400
    assert error_of(response)["param"].startswith(place)


@pytest.mark.parametrize("kind", [{}, [], ["input_text"]], ids=["object", "array", "list-of-type"])
def test_a_conversation_item_whose_content_type_is_not_a_string_is_a_400(http: httpx.Client, kind: Any) -> None:
    items = [{"type": "message", "role": "user", "content": [{"type": kind, "text": "hi"}]}]

    created = http.post("/v1/conversations", json={"items": items})
    conversation = http.post("/v1/conversations", json={}).json()["id"]
    added = http.post(f"/v1/conversations/{conversation}/items", json={"items": items})

    assert (created.status_code, error_of(created)["param"]) == (400, "items[0].content[0].type")
    assert (added.status_code, error_of(added)["param"]) == (400, "items[0].content[0].type")
    assert error_of(added)["code"] == "invalid_type"


# -- NUL in a path or a query ---------------------------------------------------

NUL_TARGETS = [
    ("GET", "/v1/responses/resp_%00x", 404, None),
    ("DELETE", "/v1/responses/resp_%00x", 404, None),
    ("GET", "/v1/responses/resp_%00x/input_items", 404, None),
    ("GET", "/v1/conversations/conv_%00x", 404, None),
    ("GET", "/v1/conversations/conv_x/items/msg_%00", 404, None),
    ("GET", "/v1/responses?after=%00", 400, "after"),
    ("GET", "/v1/responses?before=resp_%00", 400, "before"),
    ("GET", "/v1/responses/resp_x/input_items?after=a%00b", 400, "after"),
    ("GET", "/v1/conversations/conv_x/items?after=%00", 400, "after"),
]


@pytest.mark.parametrize(("method", "target", "status", "param"), NUL_TARGETS, ids=[t[1] for t in NUL_TARGETS])
def test_a_nul_in_a_path_or_query_is_not_a_500(
    parley: ParleyProcess, method: str, target: str, status: int, param: str | None
) -> None:
    with parley.http() as http:
        response = http.request(method, target)

    assert response.status_code == status
    assert error_of(response)["param"] == param


# -- Loose types ----------------------------------------------------------------

LOOSE = [
    ({"stream": "yes"}, "stream", "invalid_value"),
    ({"store": "no"}, "store", "invalid_value"),
    ({"store": 0}, "store", "invalid_value"),
    ({"parallel_tool_calls": "true"}, "parallel_tool_calls", "invalid_value"),
    ({"temperature": "0.5"}, "temperature", "invalid_value"),
    ({"max_output_tokens": 2**63}, "max_output_tokens", "integer_above_max_value"),
    ({"max_output_tokens": 64.0}, "max_output_tokens", "invalid_value"),
    ({"max_output_tokens": "64"}, "max_output_tokens", "invalid_value"),
    ({"max_output_tokens": 15}, "max_output_tokens", "integer_below_min_value"),
    ({"max_output_tokens": 0}, "max_output_tokens", "integer_below_min_value"),
    ({"text": {"format": []}}, "text.format", "invalid_value"),
    ({"text": {"format": {"type": "json_schema", "name": "s", "schema": {}, "strict": "yes"}}}, "text.format.strict"),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=json.dumps(case[0])[:60]) for case in LOOSE])
def test_a_value_of_the_wrong_type_is_refused_not_coerced(http: httpx.Client, case: tuple[Any, ...]) -> None:
    fields, param, *code = case

    response = http.post("/v1/responses", json={"model": ECHO, "input": "hi", **fields})

    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param
    assert error["code"] == (code[0] if code else "invalid_value")


def test_max_output_tokens_below_16_is_refused_in_openais_words(http: httpx.Client) -> None:
    refused = http.post("/v1/responses", json={"model": ECHO, "input": "hi", "max_output_tokens": 10})
    taken = http.post("/v1/responses", json={"model": ECHO, "input": "hi", "max_output_tokens": 16})

    assert error_of(refused) == {
        "message": "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 10 "
        "instead.",
        "type": "invalid_request_error",
        "param": "max_output_tokens",
        "code": "integer_below_min_value",
    }
    assert taken.status_code == 200 and taken.json()["max_output_tokens"] == 16


# -- /openapi.json ---------------------------------------------------------------


def test_openapi_documents_the_errors_with_their_schema(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/Error"}

    assert document["components"]["schemas"]["Error"]["required"] == ["error"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            expected = {"400", "404"} | ({"413", "415"} if "requestBody" in operation else set())
            expected |= set() if path == "/v1/health" else {"401"}
            responses = operation["responses"]
            assert expected <= set(responses), f"{method} {path}"
            assert "422" not in responses
            for status in expected:
                assert responses[status]["content"]["application/json"]["schema"] == error, f"{method} {path}"
    assert "413" in document["paths"]["/v1/responses"]["post"]["responses"]


# -- Configuration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "named"),
    [
        ({"cors_origins": ["app.example.test"]}, "server.cors_origins"),
        ({"cors_origins": ["https://app.example.test/path"]}, "server.cors_origins"),
        ({"allowed_hosts": ["http://parley.internal"]}, "server.allowed_hosts"),
        ({"allowed_hosts": ["parley.internal:8321"]}, "server.allowed_hosts"),
        ({"max_body_bytes": 10}, "server.max_body_bytes"),
    ],
)
def test_a_bad_server_setting_is_refused_at_start(tmp_path: Path, server: dict[str, Any], named: str) -> None:
    process = ParleyProcess(tmp_path, {"server": server})

    with pytest.raises(RuntimeError, match="did not start") as refused:
        process.start()

    assert named in str(refused.value)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_chat_token_limit_past_32_bits_is_a_400(http: httpx.Client, field: str) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], field: 2**63}
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == field
