"""API keys and per-owner isolation (issue 13, section 1).

Over HTTP with the official client, on SQLite and on PostgreSQL: a Parley
with configured keys for two owners, alice and bob, and an admin key (owner
ops); `parley keys` makes, lists and revokes keys in the same database while
it runs. Each owner is tried against the other on every endpoint: what one
has is, to the other, not found (a 404 like that for an id nobody has, never
a 403); the admin sees everything.

The database is this module's own rather than the session's `storage_url`:
the servers other modules run on that one have no keys, and would start
asking for them once a key was made in it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ROOT, ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream
from tests.support.migrations import migrate_to
from tests.support.own_server import own_database

ECHO = "fake/fake-echo"
HANG = "fake/fake-hang"

ALICE = "sk-alice-" + "a1b2" * 6
BOB = "sk-bob-" + "c3d4" * 6
OPS = "sk-ops-" + "e5f6" * 6  # an admin key

MISSING_KEY = {
    "message": "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY). Ask the operator of this server for a key "
    "(`parley keys create`).",
    "type": "invalid_request_error",
    "param": None,
    "code": None,  # as OpenAI answers a request without a key
}


def incorrect_key(shown: str) -> dict[str, Any]:
    return {
        "message": f"Incorrect API key provided: {shown}. Ask the operator of this server for a key "
        "(`parley keys create`).",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }


database_url = own_database("auth")


@dataclass
class Ownerless:
    """A response and a conversation from before owners were kept: rows with no owner."""

    response_id: str
    conversation_id: str
    output: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def ownerless(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, database_url: str) -> Ownerless:
    config = upstream_config(fake_upstream)
    config["storage"] = {"url": database_url}
    server = ParleyProcess(tmp_path_factory.mktemp("auth-off"), config)
    server.start()
    try:
        # The client sends a key ("test-key"); a server with no keys asks for none and reads none.
        client = server.client()
        response = client.responses.create(model=ECHO, input="made with authentication off")
        conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "old"}])
    finally:
        server.stop()
    # Back to the schema before owners: the keyed server migrates these rows as an upgrade would.
    migrate_to(database_url, "0003")
    return Ownerless(response.id, conversation.id, server.output)


def keyed_config(fake: FakeUpstream, database_url: str) -> dict[str, Any]:
    config = upstream_config(fake)
    config["storage"] = {"url": database_url}
    config["auth"] = {
        "keys": [
            {"key": ALICE, "owner": "alice"},
            {"key": BOB, "owner": "bob", "name": "bob's laptop"},
            {"key": OPS, "owner": "ops", "admin": True},
        ]
    }
    return config


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, database_url: str, ownerless: Ownerless
) -> Iterator[ParleyProcess]:
    """Parley with keys, on the database where `ownerless` left its rows."""
    server = ParleyProcess(tmp_path_factory.mktemp("auth-keys"), keyed_config(fake_upstream, database_url))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def alice(keyed: ParleyProcess) -> openai.OpenAI:
    return keyed.client(api_key=ALICE)


@pytest.fixture
def bob(keyed: ParleyProcess) -> openai.OpenAI:
    return keyed.client(api_key=BOB)


@pytest.fixture
def ops(keyed: ParleyProcess) -> openai.OpenAI:
    return keyed.client(api_key=OPS)


def http(server: ParleyProcess, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=60)


def listed_ids(server: ParleyProcess, key: str, **params: Any) -> list[str]:
    """Every response the key's owner sees in `GET /v1/responses` (Parley's list), newest first."""
    ids: list[str] = []
    with http(server, key) as client:
        while True:
            page = client.get("/v1/responses", params={"limit": 100, **params}).json()
            ids += [response["id"] for response in page["data"]]
            if not page["has_more"]:
                return ids
            params["after"] = page["last_id"]


def not_found(call: Callable[[], Any]) -> openai.NotFoundError:
    with pytest.raises(openai.NotFoundError) as raised:
        call()
    return raised.value


# Keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/responses", {"model": ECHO, "input": "hi"}),
        ("POST", "/v1/responses", {"model": ECHO, "input": "hi", "stream": True}),
        ("POST", "/v1/chat/completions", {"model": ECHO, "messages": [{"role": "user", "content": "hi"}]}),
        ("GET", "/v1/responses", None),
        ("GET", "/v1/responses/resp_x/input_items", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/embeddings", {"model": ECHO, "input": "hi"}),
        ("POST", "/v1/conversations", {}),
        ("DELETE", "/v1/conversations/conv_x/items/msg_x", None),
        ("GET", "/v1/no-such-route", None),
    ],
)
def test_a_request_without_a_key_is_a_401_in_openais_words(
    keyed: ParleyProcess, method: str, path: str, body: dict[str, Any] | None
) -> None:
    no_key: list[dict[str, str]] = [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}]
    with http(keyed, None) as client:
        for headers in no_key:
            answer = client.request(method, path, json=body, headers=headers)
            assert (answer.status_code, answer.json()) == (401, {"error": MISSING_KEY}), headers


def test_the_openai_client_without_a_key_raises_authentication_error(keyed: ParleyProcess) -> None:
    client = keyed.client()
    with pytest.raises(openai.AuthenticationError) as raised:
        client.responses.create(model=ECHO, input="hi", extra_headers={"Authorization": openai.Omit()})
    assert raised.value.body == MISSING_KEY


def test_a_wrong_key_is_a_401_invalid_api_key_that_shows_only_its_ends(keyed: ParleyProcess) -> None:
    wrong = "sk-not-a-key-of-this-server-9f3k"
    client = keyed.client(api_key=wrong)
    calls: list[Callable[[], Any]] = [
        lambda: client.responses.create(model=ECHO, input="hi"),
        lambda: client.responses.create(model=ECHO, input="hi", stream=True),
        lambda: client.chat.completions.create(model=ECHO, messages=[{"role": "user", "content": "hi"}]),
        lambda: client.chat.completions.create(model=ECHO, messages=[{"role": "user", "content": "hi"}], stream=True),
        lambda: client.responses.retrieve("resp_x"),
        lambda: client.models.list(),
        lambda: client.conversations.create(),
        lambda: client.conversations.items.list("conv_x"),
    ]
    for call in calls:
        with pytest.raises(openai.AuthenticationError) as raised:
            call()
        assert raised.value.status_code == 401
        assert raised.value.body == incorrect_key("sk-...9f3k")
        assert wrong not in str(raised.value.response.text)


def test_a_short_wrong_key_is_not_shown_at_all(keyed: ParleyProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as raised:
        keyed.client(api_key="hunter2").models.list()
    assert raised.value.body == incorrect_key("***")


def test_health_and_the_api_description_need_no_key(keyed: ParleyProcess) -> None:
    with http(keyed, None) as client:
        assert client.get("/v1/health").status_code == 200
        assert client.get("/openapi.json").json()["info"]["title"] == "Parley"


def test_a_key_reaches_every_route_the_fast_ones_too(alice: openai.OpenAI) -> None:
    assert alice.responses.create(model=ECHO, input="plain answer").output_text == "plain answer"
    with alice.responses.stream(model=ECHO, input="streamed answer") as stream:
        assert stream.get_final_response().output_text == "streamed answer"
    chunks = alice.chat.completions.create(model=ECHO, messages=[{"role": "user", "content": "a b"}], stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "a b"
    assert ECHO in [model.id for model in alice.models.list()]


def test_a_config_key_too_short_or_an_owner_not_plain_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "parley.yaml"
    config.write_text(json.dumps({"auth": {"keys": [{"key": "tiny-9x", "owner": "bob smith"}]}}))
    result = parley_cli("serve", "--port", "0", "--config", str(config), env={"PARLEY_DATA_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "auth.keys[0].key: must be at least 20 characters" in result.stderr
    assert "auth.keys[0].owner: must be 1 to 64 letters" in result.stderr
    assert "tiny-9x" not in result.stderr  # a key, even a bad one, is not repeated


# Responses -------------------------------------------------------------------------------------


def test_another_owner_finds_none_of_a_response(alice: openai.OpenAI, bob: openai.OpenAI) -> None:
    made = alice.responses.create(model=ECHO, input="alice's plan")
    nobodys = "resp_" + "0" * 48

    for response_id in (made.id, nobodys):
        for call in (bob.responses.retrieve, bob.responses.delete, bob.responses.input_items.list):
            error = not_found(lambda: call(response_id))  # noqa: B023
            assert error.body == {
                "message": f"Response with id '{response_id}' not found.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        for stream in (False, True):
            error = not_found(
                lambda: bob.responses.create(
                    model=ECHO,
                    input="go on",
                    previous_response_id=response_id,  # noqa: B023
                    stream=stream,  # noqa: B023
                )
            )
            assert (error.code, error.param) == ("previous_response_not_found", "previous_response_id")

    # All of it is still alice's, untouched.
    assert alice.responses.retrieve(made.id).output_text == "alice's plan"
    assert [item.id for item in alice.responses.input_items.list(made.id)] != []
    assert alice.responses.create(model=ECHO, input="go on", previous_response_id=made.id).output_text == "go on"


def test_a_list_holds_only_the_callers_responses(
    keyed: ParleyProcess, alice: openai.OpenAI, bob: openai.OpenAI
) -> None:
    alices = alice.responses.create(model=ECHO, input="in alice's list")
    bobs = bob.responses.create(model=ECHO, input="in bob's list")

    alice_sees, bob_sees = listed_ids(keyed, ALICE), listed_ids(keyed, BOB)
    assert alices.id in alice_sees and bobs.id not in alice_sees
    assert bobs.id in bob_sees and alices.id not in bob_sees
    assert not set(alice_sees) & set(bob_sees)

    # Another owner's id is no cursor of this list, as an id nobody has is not.
    with http(keyed, ALICE) as client:
        for cursor in ("after", "before"):
            answer = client.get("/v1/responses", params={cursor: bobs.id})
            assert answer.status_code == 400
            assert answer.json()["error"] == {
                "message": f"Invalid value for '{cursor}': '{bobs.id}' is not an id in this list.",
                "type": "invalid_request_error",
                "param": cursor,
                "code": "invalid_value",
            }


def test_item_reference_reaches_only_the_callers_items(alice: openai.OpenAI, bob: openai.OpenAI) -> None:
    made = alice.responses.create(model=ECHO, input="alice's words")
    input_id = alice.responses.input_items.list(made.id).data[0].id
    for item_id in (made.output[0].id, input_id):
        reference = [{"type": "item_reference", "id": item_id}, {"role": "user", "content": "and?"}]
        error = not_found(lambda: bob.responses.create(model=ECHO, input=reference))  # noqa: B023
        assert (error.body["message"], error.param) == (f"Item with id '{item_id}' not found.", "input[0].id")  # type: ignore[index]
        assert alice.responses.create(model=ECHO, input=reference).output_text == "and?"


def test_a_response_in_progress_is_hidden_from_another_owner(
    keyed: ParleyProcess, alice: openai.OpenAI, bob: openai.OpenAI, ops: openai.OpenAI
) -> None:
    tag = f"in-progress-{time.monotonic_ns()}"
    failures: list[BaseException] = []

    def hang() -> None:  # the fake upstream never answers; Parley gives up at its read timeout (3 s)
        try:
            alice.responses.create(model=HANG, input="wait", metadata={"tag": tag})
        except openai.APIStatusError as exc:
            failures.append(exc)

    thread = threading.Thread(target=hang)
    thread.start()
    try:
        response_id = None
        deadline = time.monotonic() + 5
        while response_id is None and time.monotonic() < deadline:
            with http(keyed, OPS) as client:
                page = client.get("/v1/responses", params={"limit": 100}).json()["data"]
            response_id = next((r["id"] for r in page if r["metadata"] == {"tag": tag}), None)
            time.sleep(0.05)
        assert response_id is not None

        # This server is producing it, and answers for it from memory: only to those who see it.
        assert alice.responses.retrieve(response_id).status == "in_progress"
        assert ops.responses.retrieve(response_id).status == "in_progress"
        not_found(lambda: bob.responses.retrieve(response_id))
        not_found(lambda: bob.responses.input_items.list(response_id))
        not_found(lambda: bob.responses.create(model=ECHO, input="x", previous_response_id=response_id))
    finally:
        thread.join(30)
    assert [type(failure) for failure in failures] == [openai.InternalServerError]  # 504, the upstream's timeout


def test_an_admin_key_sees_and_continues_every_owners_responses(
    keyed: ParleyProcess, alice: openai.OpenAI, bob: openai.OpenAI, ops: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    alices = alice.responses.create(model=ECHO, input="alice's first words")
    bobs = bob.responses.create(model=ECHO, input="bob's first words")

    assert ops.responses.retrieve(alices.id).output_text == "alice's first words"
    assert [item.id for item in ops.responses.input_items.list(bobs.id)] != []
    assert {alices.id, bobs.id} <= set(listed_ids(keyed, OPS))
    message_id = alices.output[0].id
    reference = [{"type": "item_reference", "id": message_id}, {"role": "user", "content": "ok"}]
    referenced = ops.responses.create(model=ECHO, input=reference)  # type: ignore[arg-type]
    assert referenced.output_text == "ok"

    # The admin continues alice's response: what it makes is its own owner's, not alice's.
    continued = ops.responses.create(model=ECHO, input="the admin's turn", previous_response_id=alices.id)
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "alice's first words"},
        {"role": "assistant", "content": "alice's first words"},
        {"role": "user", "content": "the admin's turn"},
    ]
    not_found(lambda: alice.responses.retrieve(continued.id))
    assert continued.id not in listed_ids(keyed, ALICE)

    ops.responses.delete(bobs.id)
    not_found(lambda: bob.responses.retrieve(bobs.id))


# Conversations ---------------------------------------------------------------------------------


def test_another_owner_finds_none_of_a_conversation_or_its_items(alice: openai.OpenAI, bob: openai.OpenAI) -> None:
    conversation = alice.conversations.create(
        items=[{"type": "message", "role": "user", "content": "alice's note"}], metadata={"topic": "plans"}
    )
    item_id = alice.conversations.items.list(conversation.id).data[0].id
    item = [{"type": "message", "role": "user", "content": "bob was here"}]
    cid = conversation.id

    calls: list[Callable[[], Any]] = [
        lambda: bob.conversations.retrieve(cid),
        lambda: bob.conversations.update(cid, metadata={"topic": "bob's now"}),
        lambda: bob.conversations.delete(cid),
        lambda: bob.conversations.items.list(cid),
        lambda: bob.conversations.items.create(cid, items=item),  # type: ignore[arg-type]
        lambda: bob.conversations.items.retrieve(item_id, conversation_id=cid),
        lambda: bob.conversations.items.delete(item_id, conversation_id=cid),
    ]
    for call in calls:
        assert not_found(call).body == {
            "message": f"Conversation with id '{cid}' not found.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    for stream in (False, True):
        error = not_found(lambda: bob.responses.create(model=ECHO, input="hi", conversation=cid, stream=stream))  # noqa: B023
        assert (error.body["message"], error.param) == (f"Conversation with id '{cid}' not found.", "conversation")  # type: ignore[index]
    error = not_found(lambda: bob.responses.create(model=ECHO, input=[{"type": "item_reference", "id": item_id}]))
    assert error.param == "input[0].id"

    # Untouched.
    assert alice.conversations.retrieve(cid).metadata == {"topic": "plans"}
    assert [i.id for i in alice.conversations.items.list(cid)] == [item_id]
    turn = alice.responses.create(model=ECHO, input=[{"type": "item_reference", "id": item_id}])
    assert turn.output_text == "alice's note"


def test_an_admin_key_sees_every_owners_conversations(alice: openai.OpenAI, ops: openai.OpenAI) -> None:
    conversation = alice.conversations.create(items=[{"type": "message", "role": "user", "content": "alice's"}])
    cid = conversation.id

    assert ops.conversations.retrieve(cid).id == cid
    assert [item.type for item in ops.conversations.items.list(cid)] == ["message"]
    ops.conversations.items.create(cid, items=[{"type": "message", "role": "user", "content": "from ops"}])
    turn = ops.responses.create(model=ECHO, input="the admin's turn", conversation=cid)

    # What the admin adds to alice's conversation is in alice's conversation; its response is the admin's.
    texts = [item.content[0].text for item in alice.conversations.items.list(cid, order="asc")]  # type: ignore[union-attr]
    assert texts == ["alice's", "from ops", "the admin's turn", "the admin's turn"]
    not_found(lambda: alice.responses.retrieve(turn.id))

    assert ops.conversations.delete(cid).deleted
    not_found(lambda: alice.conversations.retrieve(cid))


def test_rows_from_before_owners_are_seen_by_admin_keys_only(
    keyed: ParleyProcess, ownerless: Ownerless, alice: openai.OpenAI, ops: openai.OpenAI
) -> None:
    not_found(lambda: alice.responses.retrieve(ownerless.response_id))
    not_found(lambda: alice.conversations.retrieve(ownerless.conversation_id))
    assert ownerless.response_id not in listed_ids(keyed, ALICE)

    assert ops.responses.retrieve(ownerless.response_id).output_text == "made with authentication off"
    assert ops.conversations.retrieve(ownerless.conversation_id).id == ownerless.conversation_id
    # The migration kept every row: the items too.
    old = ops.conversations.items.list(ownerless.conversation_id)
    assert [item.content[0].text for item in old] == ["old"]  # type: ignore[union-attr]
    assert [item.type for item in ops.responses.input_items.list(ownerless.response_id)] == ["message"]
    assert ownerless.response_id in listed_ids(keyed, OPS)


# `parley keys` ---------------------------------------------------------------------------------


def parley_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def everything_stored(database_url: str) -> str:
    """The whole database as text: the SQLite files' bytes, or every row of every PostgreSQL table."""
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        # The database, its WAL and shared memory (not the directory of sockets beside them: parley.store.signals).
        files = [file for file in path.parent.iterdir() if file.name.startswith(path.name) and file.is_file()]
        return "".join(file.read_bytes().decode("latin-1") for file in files)
    import asyncpg

    async def dump() -> str:
        connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            tables = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            rows = [await connection.fetch(f'SELECT * FROM "{table["tablename"]}"') for table in tables]
            return repr(rows)
        finally:
            await connection.close()

    return asyncio.run(dump())


def refused_within(client: openai.OpenAI, seconds: float) -> openai.AuthenticationError:
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.models.list()
        except openai.AuthenticationError as refused:
            return refused
        assert time.monotonic() < deadline, "the revoked key was still taken"
        time.sleep(0.1)


def test_keys_are_made_listed_and_revoked_with_the_cli(
    keyed: ParleyProcess, database_url: str, alice: openai.OpenAI, ops: openai.OpenAI
) -> None:
    config = str(keyed.workdir / "parley.yaml")

    made = parley_cli("keys", "create", "--owner", "carol", "--name", "ci runner", "--config", config)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert made.stdout == secret + "\n"  # the secret alone on stdout, for KEY=$(parley keys create ...)
    assert re.fullmatch(r"sk-parley-[A-Za-z0-9_-]{43}", secret)
    key_id = re.fullmatch(r"Made key (key_[0-9a-f]{16}) for carol\. .*\n", made.stderr).group(1)  # type: ignore[union-attr]

    # The running server takes it at once, as carol's.
    carol = keyed.client(api_key=secret)
    carols = carol.responses.create(model=ECHO, input="carol's words")
    alices = alice.responses.create(model=ECHO, input="alice's words")
    not_found(lambda: carol.responses.retrieve(alices.id))
    not_found(lambda: alice.responses.retrieve(carols.id))

    # Never stored, nor listed, in clear.
    stored = everything_stored(database_url)
    assert secret not in stored and secret[14:] not in stored
    assert hashlib.sha256(secret.encode()).hexdigest() in stored
    listed = parley_cli("keys", "list", "--config", config)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split("\t") == [
        "id",
        "owner",
        "name",
        "key",
        "admin",
        "created",
        "revoked",
    ]
    row = next(line.split("\t") for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert row[:6] == [key_id, "carol", "ci runner", secret[:14] + "...", "-", row[5]]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[5]) and row[6] == "-"
    assert secret[14:] not in listed.stdout + listed.stderr
    assert listed.stderr == "and 3 key(s) in the configuration (auth.keys)\n"

    revoked = parley_cli("keys", "revoke", key_id, "--config", config)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"Revoked {key_id} (carol, ci runner) at ")
    # Every server re-reads the keys each second.
    assert refused_within(carol, 5).body == incorrect_key(f"sk-...{secret[-4:]}")
    assert ops.responses.retrieve(carols.id).output_text == "carol's words"  # what carol made stays, hers
    listed = parley_cli("keys", "list", "--config", config)
    row = next(line.split("\t") for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert row[6] != "-"

    unknown = parley_cli("keys", "revoke", "key_0000000000000000", "--config", config)
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == "Error: there is no key key_0000000000000000 (`parley keys list` lists them)\n"


def test_an_admin_key_made_with_the_cli_sees_every_owner(keyed: ParleyProcess, alice: openai.OpenAI) -> None:
    made = parley_cli("keys", "create", "--owner", "root", "--admin", "--config", str(keyed.workdir / "parley.yaml"))
    assert made.returncode == 0, made.stderr
    assert made.stderr.startswith("Made admin key key_")
    alices = alice.responses.create(model=ECHO, input="for the admin's eyes")
    assert keyed.client(api_key=made.stdout.strip()).responses.retrieve(alices.id).id == alices.id


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["create"], "Missing option '--owner'"),
        (["create", "--owner", "two words"], "Invalid value for '--owner': must be 1 to 64 letters"),
        (["revoke"], "Missing argument 'KEY_ID'"),
    ],
)
def test_the_keys_cli_refuses_what_it_cannot_do(tmp_path: Path, args: list[str], problem: str) -> None:
    result = parley_cli("keys", *args, env={"PARLEY_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert problem in result.stderr
    assert not (tmp_path / "parley.db").exists()


# Where the server may listen --------------------------------------------------------------------


def test_a_server_without_keys_on_loopback_says_auth_is_off_and_asks_for_none(ownerless: Ownerless) -> None:
    output = "".join(ownerless.output)
    assert "WARNING parley.app: Authentication is off: there are no API keys" in output
    # (and `ownerless` made its rows with the client's key, which the server did not read)


def test_serving_beyond_loopback_without_keys_is_refused(tmp_path: Path) -> None:
    started = time.monotonic()
    result = parley_cli("serve", "--host", "0.0.0.0", "--port", "0", env={"PARLEY_DATA_DIR": str(tmp_path)})

    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: refusing to serve on 0.0.0.0: there are no API keys")
    for advice in ("parley keys create --owner NAME", "auth.keys", "127.0.0.1", "auth: {disabled: true}"):
        assert advice in result.stderr
    assert "Traceback" not in result.stderr


def test_serving_beyond_loopback_with_auth_disabled_starts_saying_so(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    config = upstream_config(fake_upstream)
    config.update(server={"host": "0.0.0.0"}, auth={"disabled": True})
    server = ParleyProcess(tmp_path, config)
    server.start()
    try:
        assert "WARNING parley.app: Authentication is disabled (auth.disabled)" in "".join(server.output)
        with http(server, None) as client:
            answer = client.post("/v1/responses", json={"model": ECHO, "input": "open to all"})
        assert answer.status_code == 200
    finally:
        server.stop()


def test_keys_from_the_environment_let_a_server_serve_beyond_loopback(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    config = upstream_config(fake_upstream)
    config["server"] = {"host": "0.0.0.0"}
    deploy = "deploy-key-" + "x9" * 10
    keys = json.dumps([{"key": deploy, "owner": "deploy"}])
    server = ParleyProcess(tmp_path, config, env={"PARLEY_AUTH__KEYS": keys})
    server.start()
    try:
        assert "Authentication is" not in "".join(server.output)
        assert server.client(api_key=deploy).responses.create(model=ECHO, input="deployed").output_text == "deployed"
        with pytest.raises(openai.AuthenticationError):
            server.client(api_key="deploy-key-but-not-quite").models.list()
        with http(server, None) as client:
            assert client.get("/v1/models").status_code == 401
    finally:
        server.stop()


def test_a_revoked_key_keeps_authentication_on(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    env = {"PARLEY_DATA_DIR": str(tmp_path / "data")}
    made = parley_cli("keys", "create", "--owner", "once", env=env)
    key_id = made.stderr.split()[2]
    assert parley_cli("keys", "revoke", key_id, env=env).returncode == 0

    # Revoking the last key does not open a server that others can reach: it still starts, asking for keys.
    config = upstream_config(fake_upstream)
    config["server"] = {"host": "0.0.0.0"}
    server = ParleyProcess(tmp_path, config)
    server.start()
    try:
        with http(server, None) as client:
            assert client.get("/v1/models").json() == {"error": MISSING_KEY}
        with pytest.raises(openai.AuthenticationError):
            server.client(api_key=made.stdout.strip()).models.list()
    finally:
        server.stop()


def test_the_keys_commands_say_what_they_do() -> None:
    result = parley_cli("keys", "--help")
    assert result.returncode == 0, result.stderr
    for fragment in ("Make, list and revoke the API keys", "create", "list", "revoke"):
        assert fragment in result.stdout
    created = parley_cli("keys", "create", "--help")
    for fragment in ("--owner", "--name", "--admin", "--config", "the only time it is shown"):
        assert fragment in created.stdout
