"""WebSocket mode of `/v1/responses` (issue 16), over openai-python's `client.responses.connect()` and raw
WebSockets (`websockets`), on both databases.

The server needs keys (two owners), so that the handshake's authentication and the owners' scoping are tested
on every connection; its body limit is small, so that a message past it is cheap to send. `fake/*` models answer
at once; `slow/fake-long` streams `max_output_tokens` tokens, a chunk every 20 ms, so that a response is still
running when a test acts on it. Every response a socket carries goes through the stream validator
(`ParleyProcess.websocket_streams`), as every SSE stream does.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket as socket_module
import time
import zlib
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.resources.responses.responses import ResponsesConnection
from openai.types.responses.responses_server_event import ResponseWsError
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from parley.api.websocket import QUEUED
from parley.engine.chains import HELD_RESPONSES
from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import MODELS, FakeUpstream
from tests.support import collect_stream
from tests.support.own_server import own_database, owners_auth
from tests.support.validating_transport import WebSocketStreams

ALICE = "sk-alice-websocket-0123456789abcdef00"
BOB = "sk-bob-websocket-0123456789abcdef0000"
ECHO = "fake/fake-echo"
SLOW = "slow/fake-long"
MAX_BODY_BYTES = 64 * 1024
TERMINAL = ("response.completed", "response.failed", "response.incomplete")
database_url = own_database("websocket")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, paced: FakeUpstream, database_url: str
) -> Iterator[ParleyProcess]:
    config = upstream_config(fake_upstream)
    config["inference"]["providers"]["slow"] = {"type": "openai", "base_url": paced.base_url, "models": list(MODELS)}
    config["storage"] = {"url": database_url}
    config["auth"] = owners_auth(alice=ALICE, bob=BOB)
    config["server"] = {"max_body_bytes": MAX_BODY_BYTES}
    with ParleyProcess(tmp_path_factory.mktemp("websocket"), config) as parley:
        yield parley


class Socket:
    """A WebSocket on `/v1/responses` (the openai client's connection or a raw one), its messages validated."""

    def __init__(self, server: ParleyProcess, send: Any, receive: Any, close: Any, send_event: Any = None) -> None:
        self.streams: WebSocketStreams = server.websocket_streams()
        self._send = send
        self._send_event = send_event or (lambda event: send(json.dumps(event)))
        self._receive = receive
        self.close = close

    def create(self, **fields: Any) -> None:
        self._send_event({"type": "response.create", **fields})

    def receive(self) -> dict[str, Any]:
        message = self._receive()
        event = self.streams.feed(message)
        # What openai-python makes of it (its connection's parser, which uses nothing of the connection): an error
        # refusing a message is its ResponseWsError.
        parsed = ResponsesConnection.parse_event(None, message)  # type: ignore[arg-type]
        assert parsed.type == event["type"]
        if event["type"] == "error" and "error" in event:
            assert isinstance(parsed, ResponseWsError)
        return event

    def response(self) -> list[dict[str, Any]]:
        """The events up to a terminal one, or the one error that refused the message."""
        events = [self.receive()]
        while events[-1]["type"] not in TERMINAL and "error" not in events[-1]:
            events.append(self.receive())
        return events

    def refusal(self) -> dict[str, Any]:
        event = self.receive()
        assert event["type"] == "error" and "error" in event, event
        return event

    def send_raw(self, message: str | bytes) -> None:
        self._send(message)


@contextlib.contextmanager
def official(server: ParleyProcess, key: str = ALICE) -> Iterator[Socket]:
    """A WebSocket of openai-python's `client.responses.connect()`: messages sent with its `send`, received with
    its `recv_bytes` (which its `recv` parses, as `Socket.receive` does too)."""
    with server.client(api_key=key).responses.connect() as connection:
        yield Socket(server, connection.send_raw, connection.recv_bytes, connection.close, connection.send)


def raw(server: ParleyProcess, key: str | None = ALICE, host: str | None = None, **options: Any) -> ClientConnection:
    """A raw WebSocket on `/v1/responses`; `host` is the name the handshake gives (its Host header)."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    address = server.base_url.removeprefix("http://")
    if host is not None:
        name, port = address.rsplit(":", 1)
        options["sock"] = socket_module.create_connection((name, int(port)))
        address = f"{host}:{port}"
    return ws_connect(f"ws://{address}/v1/responses", additional_headers=headers, **options)


def raw_socket(server: ParleyProcess, connection: ClientConnection) -> Socket:
    return Socket(server, connection.send, connection.recv, connection.close)


@pytest.fixture
def socket(server: ParleyProcess) -> Iterator[Socket]:
    with official(server) as connection:
        yield connection


@pytest.fixture
def alice(server: ParleyProcess) -> openai.OpenAI:
    return server.client(api_key=ALICE)


def completed(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events[-1]["type"] == "response.completed", events[-1]
    return events[-1]["response"]


def text_of(response: dict[str, Any]) -> str:
    return "".join(part["text"] for item in response["output"] if item["type"] == "message" for part in item["content"])


def test_responses_one_after_another_carry_the_events_of_their_sse_streams(
    server: ParleyProcess, socket: Socket, alice: openai.OpenAI
) -> None:
    for words in ("one two three", "four five", "six"):
        socket.create(model=ECHO, input=words)
        events = socket.response()
        response = completed(events)
        assert [event["sequence_number"] for event in events] == list(range(len(events)))
        assert text_of(response) == words
        # Stored as over HTTP; the same request streamed over HTTP has the same events.
        assert alice.responses.retrieve(response["id"]).output_text == words
        sse = collect_stream(
            server.http(),
            "/v1/responses",
            {"model": ECHO, "input": words, "stream": True},
            {"Authorization": f"Bearer {ALICE}"},
        )
        assert [event["type"] for event in events] == sse.types
    assert len(socket.streams.validated) == 3


def test_a_store_false_chain_continues_within_its_connection(
    server: ParleyProcess, socket: Socket, fake_upstream: FakeUpstream, alice: openai.OpenAI
) -> None:
    socket.create(model=ECHO, input="first turn", store=False)
    first = completed(socket.response())
    socket.create(model=ECHO, input="second turn", store=False, previous_response_id=first["id"])
    second = completed(socket.response())
    socket.create(model=ECHO, input="third turn", store=False, previous_response_id=second["id"])
    completed(socket.response())
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "first turn"},
        {"role": "assistant", "content": "first turn"},
        {"role": "user", "content": "second turn"},
        {"role": "assistant", "content": "second turn"},
        {"role": "user", "content": "third turn"},
    ]
    # Nothing of them was stored; another connection, even the owner's, cannot continue them.
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(first["id"])
    with official(server) as other:
        other.create(model=ECHO, input="elsewhere", store=False, previous_response_id=second["id"])
        refusal = other.refusal()
    # The status is the one POST /v1/responses answers with (parley.engine.service.ResponseNotFoundError).
    assert refusal["status"] == 404
    assert refusal["error"] == {
        "type": "invalid_request_error",
        "code": "previous_response_not_found",
        "message": f"Response with id '{second['id']}' not found.",
        "param": "previous_response_id",
    }


def test_a_connection_holds_its_last_eight_unstored_responses(socket: Socket) -> None:
    made = []
    for number in range(HELD_RESPONSES + 1):
        socket.create(model=ECHO, input=f"turn {number}", store=False)
        made.append(completed(socket.response())["id"])
    # The oldest has gone to make room; the others go on.
    socket.create(model=ECHO, input="from the oldest", store=False, previous_response_id=made[0])
    assert socket.refusal()["error"]["code"] == "previous_response_not_found"
    socket.create(model=ECHO, input="from the next", store=False, previous_response_id=made[1])
    assert text_of(completed(socket.response())) == "from the next"


def test_after_a_reconnect_a_store_false_chain_is_not_found_and_the_full_input_recovers(
    server: ParleyProcess, fake_upstream: FakeUpstream
) -> None:
    with official(server) as before:
        before.create(model=ECHO, input="remember this", store=False)
        first = completed(before.response())
    with official(server) as after:
        after.create(model=ECHO, input="and this", store=False, previous_response_id=first["id"])
        assert after.refusal()["error"]["code"] == "previous_response_not_found"
        # As OpenAI documents: start a new chain with the whole input.
        history = [
            {"role": "user", "content": "remember this"},
            *first["output"],
            {"role": "user", "content": "and this"},
        ]
        after.create(model=ECHO, input=history, store=False)
        assert text_of(completed(after.response())) == "and this"
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "remember this"},
        {"role": "assistant", "content": "remember this"},
        {"role": "user", "content": "and this"},
    ]


def test_an_unknown_previous_response_is_an_error_and_the_connection_stays_usable(socket: Socket) -> None:
    missing = "resp_" + "0" * 48
    socket.create(model=ECHO, input="hello", store=False, previous_response_id=missing)
    assert socket.refusal()["error"]["code"] == "previous_response_not_found"
    socket.create(model=ECHO, input="still here")
    assert text_of(completed(socket.response())) == "still here"


@pytest.mark.parametrize("failing", ["fake/fake-error-500", "fake/fake-midstream-error"])
def test_a_failed_continuation_drops_the_context_it_started_from(socket: Socket, failing: str) -> None:
    socket.create(model=ECHO, input="start", store=False)
    first = completed(socket.response())
    socket.create(model=failing, input="fails", store=False, previous_response_id=first["id"])
    ending = socket.response()[-1]
    if failing.endswith("500"):  # before its first event: a refusal
        assert ending["status"] == 502
    else:  # mid-stream: its stream ends failed
        assert ending["type"] == "response.failed"
    socket.create(model=ECHO, input="again", store=False, previous_response_id=first["id"])
    assert socket.refusal()["error"]["code"] == "previous_response_not_found"


def test_stored_responses_continue_through_the_store_from_any_connection_for_their_owner_only(
    server: ParleyProcess, socket: Socket, fake_upstream: FakeUpstream, alice: openai.OpenAI
) -> None:
    socket.create(model=ECHO, input="kept turn")
    kept = completed(socket.response())
    with official(server) as other:
        other.create(model=ECHO, input="next turn", previous_response_id=kept["id"])
        assert text_of(completed(other.response())) == "next turn"
    assert fake_upstream.requests[-1]["messages"][:2] == [
        {"role": "user", "content": "kept turn"},
        {"role": "assistant", "content": "kept turn"},
    ]
    # Over HTTP too; and not for another owner.
    assert alice.responses.create(model=ECHO, input="over http", previous_response_id=kept["id"]).output_text
    with official(server, BOB) as bobs:
        bobs.create(model=ECHO, input="not mine", previous_response_id=kept["id"])
        assert bobs.refusal()["error"]["code"] == "previous_response_not_found"
    # A stored response continues through the store only, where an unstored one is not.
    socket.create(model=ECHO, input="unstored", store=False)
    unstored = completed(socket.response())
    socket.create(model=ECHO, input="stored after it", previous_response_id=unstored["id"])
    assert socket.refusal()["error"]["code"] == "previous_response_not_found"


def test_a_compacting_chain_held_by_the_connection_goes_on_as_the_same_chain_stored(
    socket: Socket, alice: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    # Past 1,000 tokens, the second turn compacts (tests/test_compaction.py); the third starts from there.
    managed: Any = [{"type": "compaction", "compact_threshold": 1000}]
    turns: list[dict[str, Any]] = [
        {"model": "fake/fake-long", "input": "apples: 3", "max_output_tokens": 600},
        {"model": ECHO, "input": "pears: 2"},
        {"model": ECHO, "input": "plums: 4"},
    ]
    sent: dict[str, list[Any]] = {"held": [], "stored": []}
    outputs: dict[str, list[list[str]]] = {"held": [], "stored": []}
    previous: dict[str, str | None] = {"held": None, "stored": None}
    for turn in turns:
        since = len(fake_upstream.requests)
        socket.create(**turn, store=False, previous_response_id=previous["held"], context_management=managed)
        held = completed(socket.response())
        sent["held"].append([request["messages"] for request in fake_upstream.requests[since:]])
        since = len(fake_upstream.requests)
        stored = alice.responses.create(**turn, previous_response_id=previous["stored"], context_management=managed)
        sent["stored"].append([request["messages"] for request in fake_upstream.requests[since:]])
        previous = {"held": held["id"], "stored": stored.id}
        outputs["held"].append([item["type"] for item in held["output"]])
        outputs["stored"].append([item.type for item in stored.output])
    assert outputs["held"] == outputs["stored"] == [["message"], ["compaction", "message"], ["message"]]
    assert sent["held"] == sent["stored"]
    assert len(sent["held"][1]) == 2  # the summary written, then the model called on the compacted context


def test_a_response_create_sent_while_one_runs_waits_its_turn(socket: Socket) -> None:
    socket.create(model=SLOW, input="long", max_output_tokens=20)
    # More than the server queues (parley.api.websocket.QUEUED): the rest wait in the socket.
    for number in range(QUEUED + 4):
        socket.create(model=ECHO, input=f"queued {number}")
    first = socket.response()
    assert first[0]["type"] == "response.created"
    assert completed(first)["model"] == SLOW
    for number in range(QUEUED + 4):
        assert text_of(completed(socket.response())) == f"queued {number}"
    assert len(socket.streams.validated) == QUEUED + 5


def test_closing_the_socket_mid_response_still_completes_and_stores_it(
    server: ParleyProcess, alice: openai.OpenAI
) -> None:
    with official(server) as socket:
        socket.create(model=SLOW, input="long", max_output_tokens=30)
        events = [socket.receive()]
        while events[-1]["type"] != "response.output_text.delta":
            events.append(socket.receive())
    response_id = events[0]["response"]["id"]
    deadline = time.monotonic() + 20
    while (response := alice.responses.retrieve(response_id)).status == "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert response.status == "completed"
    assert response.output_text == "".join(f"tok{i} " for i in range(30))


def _frames(server: ParleyProcess, message: dict[str, Any]) -> Iterator[tuple[bool, bytes]]:
    """The data frames a raw socket that offers permessage-deflate gets for `message`: (compressed, payload)."""
    address = server.base_url.removeprefix("http://")
    name, port = address.rsplit(":", 1)
    with socket_module.create_connection((name, int(port)), timeout=20) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /v1/responses HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {ALICE}\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n".encode()
        )
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" in head.lower(), head
        payload = json.dumps(message).encode()
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        sock.sendall(bytes((0x81, 0x80 | 126)) + len(payload).to_bytes(2, "big") + mask + masked)
        while True:
            while len(buffer) < 2 or len(buffer) < _frame_end(buffer):
                buffer += sock.recv(65536)
            end = _frame_end(buffer)
            length = buffer[1] & 0x7F
            start = 2 if length < 126 else 4 if length == 126 else 10
            yield bool(buffer[0] & 0x40), buffer[start:end]
            buffer = buffer[end:]


def _frame_end(buffer: bytes) -> int:
    """Where the unmasked frame at the start of `buffer` ends (past its end while its header is incomplete)."""
    length = buffer[1] & 0x7F
    if length == 126:
        return 4 + int.from_bytes(buffer[2:4], "big") if len(buffer) >= 4 else 1 << 30
    if length == 127:
        return 10 + int.from_bytes(buffer[2:10], "big") if len(buffer) >= 10 else 1 << 30
    return 2 + length


def test_events_go_as_frames_of_their_own_uncompressed_and_in_order_under_permessage_deflate(
    server: ParleyProcess,
) -> None:
    """The events of a batch are framed by Parley (parley.api.websocket.text_frame) and leave in one write,
    uncompressed as RFC 7692 lets a message go; the last of each batch leaves through `websockets`, which
    compresses it. A client that negotiated compression (as openai-python's does) reads both, in order: the
    official client's tests above read them so. Here the frames themselves: if the server no longer let Parley
    frame a batch's events, every frame would be compressed."""
    streams = server.websocket_streams()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # the client's side of permessage-deflate, context kept
    compressed = plain = 0
    for is_compressed, payload in _frames(
        server, {"type": "response.create", "model": "fake/fake-long", "input": "long", "max_output_tokens": 300}
    ):
        if is_compressed:
            compressed += 1
            payload = inflater.decompress(payload + b"\x00\x00\xff\xff")
        else:
            plain += 1
        event = streams.feed(payload.decode())
        if event["type"] in TERMINAL:
            break
    assert event["type"] == "response.completed"
    assert "".join(event["response"]["output"][0]["content"][0]["text"]) == "".join(f"tok{i} " for i in range(300))
    assert len(streams.validated) == 1
    assert plain > compressed > 0, (plain, compressed)


def test_a_warm_up_calls_no_model_and_the_next_turn_continues_from_it(
    socket: Socket, fake_upstream: FakeUpstream
) -> None:
    """`generate: false` (OpenAI's warm-up, which the Codex CLI sends before a turn): a response with no model
    output, whose context a later `previous_response_id` continues, held by the connection when unstored."""
    since = len(fake_upstream.requests)
    socket.create(model=ECHO, input="the warm context", store=False, generate=False)
    events = socket.response()
    assert [event["type"] for event in events] == ["response.created", "response.in_progress", "response.completed"]
    warm = completed(events)
    assert warm["output"] == []
    assert warm["usage"]["input_tokens"] == warm["usage"]["output_tokens"] == 0
    assert len(fake_upstream.requests) == since  # no model was called
    socket.create(model=ECHO, input="now the turn", store=False, previous_response_id=warm["id"])
    assert text_of(completed(socket.response())) == "now the turn"
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "the warm context"},
        {"role": "user", "content": "now the turn"},
    ]
    assert len(fake_upstream.requests) == since + 1


def test_a_stored_warm_up_is_retrieved_and_continued_over_http(
    socket: Socket, alice: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    socket.create(model=ECHO, input="stored warm context", generate=False)
    warm = completed(socket.response())
    retrieved = alice.responses.retrieve(warm["id"])
    assert retrieved.status == "completed" and retrieved.output == []
    assert [item.type for item in alice.responses.input_items.list(warm["id"]).data] == ["message"]
    after = alice.responses.create(model=ECHO, input="over http", previous_response_id=warm["id"])
    assert after.output_text == "over http"
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "stored warm context"},
        {"role": "user", "content": "over http"},
    ]


def test_generate_is_a_websocket_field_only_and_a_boolean(socket: Socket, alice: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        alice.responses.create(model=ECHO, input="over http", extra_body={"generate": False})
    assert refused.value.code == "unknown_parameter"
    socket.create(model=ECHO, input="warm", generate="no")
    refusal = socket.refusal()
    assert refusal["status"] == 400
    assert (refusal["error"]["param"], refusal["error"]["code"]) == ("generate", "invalid_type")
    socket.create(model=ECHO, input="still usable", generate=True)
    assert text_of(completed(socket.response())) == "still usable"


def test_background_is_refused_with_an_error_event(socket: Socket) -> None:
    socket.create(model=ECHO, input="later", background=True)
    refusal = socket.refusal()
    assert refusal["status"] == 400
    assert refusal["error"]["param"] == "background"
    socket.create(model=ECHO, input="now")
    assert text_of(completed(socket.response())) == "now"


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = [
    ("not json", 400, None),
    ("[1, 2, 3]", 400, None),
    (b"\xff\xfe\x00binary", 400, None),
    ('{"model": "fake/fake-echo", "input": "no type"}', 400, "type"),
    ('{"type": "session.update", "session": {}}', 400, "type"),
    ('{"type": 7}', 400, "type"),
    (json.dumps({"type": "response.create", "model": ECHO, "input": "x", "temperature": "hot"}), 400, "temperature"),
    (json.dumps({"type": "response.create", "model": ECHO, "input": 42}), 400, "input"),
    (json.dumps({"type": "response.create", "model": ECHO, "input": "x", "surprise": 1}), 400, "surprise"),
    (json.dumps({"type": "response.create", "model": ECHO, "input": "nul \u0000 here"}), 400, "input"),
    (json.dumps({"type": "response.create", "model": ECHO, "input": "x", "stream_id": "lane"}), 400, "stream_id"),
    (json.dumps({"type": "response.create", "model": ECHO, "input": "x", "generate": [False]}), 400, "generate"),
    (json.dumps({"type": "response.create", "model": "nobody/nothing", "input": "x"}), 404, "model"),
    (json.dumps({"type": "response.create", "model": ECHO, "input": "x", "metadata": _nested(100)}), 400, "metadata"),
    (json.dumps({"type": "response.create", "model": ECHO, "input": "x" * MAX_BODY_BYTES}), 413, None),
]


def test_hostile_messages_get_error_events_and_the_connection_stays_usable(server: ParleyProcess) -> None:
    with raw(server) as connection:
        socket = raw_socket(server, connection)
        for message, status, param in HOSTILE:
            socket.send_raw(message)
            refusal = socket.refusal()
            # A value nested too deep is named where it goes past the limit: `metadata[0][0]...`.
            got = refusal["error"]["param"]
            assert refusal["status"] == status and (got == param or got.startswith(f"{param}[")), (message[:80], got)
            assert set(refusal["error"]) == {"type", "code", "message", "param"}
        socket.create(model=ECHO, input="after all that")
        assert text_of(completed(socket.response())) == "after all that"
    # A message past what the server reads at all closes that socket (1009, too big), not the server.
    with raw(server) as connection:
        connection.send(json.dumps({"input": "x" * (MAX_BODY_BYTES + 2 * 1024 * 1024)}))
        with pytest.raises(ConnectionClosed) as closed:
            connection.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with official(server) as socket:
        socket.create(model=ECHO, input="the server is fine")
        assert text_of(completed(socket.response())) == "the server is fine"


def test_the_handshake_is_authenticated_like_http(server: ParleyProcess) -> None:
    http_refusals = {}
    for key in (None, "sk-wrong-0123456789abcdef0123456789"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        http_refusals[key] = server.http().post("/v1/responses", json={"model": ECHO, "input": "x"}, headers=headers)
        with pytest.raises(InvalidStatus) as refused:
            raw(server, key)
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body) == http_refusals[key].json()
    assert http_refusals[None].json()["error"]["code"] is None
    assert http_refusals["sk-wrong-0123456789abcdef0123456789"].json()["error"]["code"] == "invalid_api_key"
    # The official client's own connect fails the same way.
    with pytest.raises(InvalidStatus):
        with server.client(api_key="sk-wrong-0123456789abcdef0123456789").responses.connect():
            pass


def test_a_web_page_cannot_open_a_socket_nor_a_rebound_host(server: ParleyProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        raw(server, origin="http://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["error"]["code"] == "origin_not_allowed"
    with pytest.raises(InvalidStatus) as rebound:
        raw(server, host="evil.example")
    assert rebound.value.response.status_code == 400
    assert json.loads(rebound.value.response.body)["error"]["code"] == "invalid_host"
