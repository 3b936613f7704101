"""The reasoning round trip of stateless callers: `include: ["reasoning.encrypted_content"]`, `store: false`.

Codex and other callers that keep nothing on the server ask for each
reasoning item's `encrypted_content` and send the items back as input on the
next turn, without their `content`. Parley seals the item's reasoning in a
Fernet token under its key (`engine.reasoning_key`, or one it generates and
keeps in its data directory), reads it back when the item returns, and sends
the reasoning to providers that take it (`reasoning_field`). A blob it did not
make (changed, cut, another key's) is a 400 naming its place.

The first turn runs on the scripted upstream of `test_responses_output_kinds`
(`s/reasoning` streams "The user greets me.", then "Hello!"); the next on the
shared fake upstream, which records what it was sent
(`fake_upstream.requests[-1]["messages"]`). Every stream is checked by the
stream validator.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from cryptography.fernet import Fernet

from parley.config import ConfigError, load_settings
from tests import test_responses_output_kinds as output_kinds
from tests.conftest import ParleyProcess
from tests.fake_upstream import MODELS, FakeUpstream

INCLUDE: Any = ["reasoning.encrypted_content"]
KEY = base64.b64encode(bytes(range(32))).decode()  # as `openssl rand -base64 32` writes one
OTHER_KEY = base64.b64encode(bytes(range(224, 256))).decode()  # with "+" and "/", which Fernet spells "-" and "_"
THOUGHT = "The user greets me."
# What the model is sent on the next turn: the reasoning rides on the assistant message after it.
NEXT_TURN = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "Hello!", "reasoning_content": THOUGHT},
    {"role": "user", "content": "and now?"},
]


def _config(workdir: Path, scripted: str, fake: FakeUpstream, key: str | None) -> dict[str, Any]:
    """`s/reasoning` on the scripted upstream, `ds/fake-echo` on the fake one (which takes reasoning back)."""
    config: dict[str, Any] = {
        "inference": {
            "providers": {
                "s": {"type": "openai", "base_url": scripted, "models": ["reasoning"]},
                "ds": {
                    "type": "openai",
                    "base_url": fake.base_url,
                    "models": list(MODELS),
                    "reasoning_field": "reasoning_content",
                },
            },
            "aliases": {},
        },
        "storage": {"url": f"sqlite:///{workdir / 'parley.db'}"},
    }
    if key is not None:
        config["engine"] = {"reasoning_key": key}
    return config


@pytest.fixture(scope="module")
def scripted() -> Iterator[str]:
    with output_kinds.scripted_upstream() as base_url:
        yield base_url


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, scripted: str, fake_upstream: FakeUpstream
) -> Iterator[ParleyProcess]:
    """Parley with `KEY` in its configuration file."""
    workdir = tmp_path_factory.mktemp("sealing")
    with ParleyProcess(workdir, _config(workdir, scripted, fake_upstream, KEY)) as parley:
        yield parley


def _first_turn(client: openai.OpenAI, *, stream: bool = False) -> Any:
    """The scripted reasoning turn, `store: false`, with encrypted content asked for; its response."""
    if not stream:
        return client.responses.create(model="s/reasoning", input="hi", store=False, include=INCLUDE)
    events = list(client.responses.create(model="s/reasoning", input="hi", store=False, include=INCLUDE, stream=True))
    return events[-1].response


def _as_codex_sends(reasoning: Any) -> dict[str, Any]:
    """A reasoning item as Codex sends it back: no id, no content, an empty summary, the blob."""
    return {"type": "reasoning", "summary": [], "encrypted_content": reasoning.encrypted_content}


def _next_turn(reasoning_item: dict[str, Any]) -> list[Any]:
    return [
        {"role": "user", "content": "hi"},
        reasoning_item,
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "and now?"},
    ]


def _open(blob: str, key: str = KEY) -> Any:
    """The blob's contents, read with `key` as the module docstring of parley.engine.encrypted_reasoning says.

    `key` is in base64 of either alphabet (a configured key, or the generated one, a Fernet key).
    """
    return json.loads(Fernet(key.strip().replace("+", "-").replace("/", "_")).decrypt(blob))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_reasoning_items_carry_their_reasoning_encrypted_when_asked(client: openai.OpenAI, stream: bool) -> None:
    if stream:
        events = list(
            client.responses.create(model="s/reasoning", input="hi", store=False, include=INCLUDE, stream=True)
        )
        added = next(e.item for e in events if e.type == "response.output_item.added" and e.item.type == "reasoning")
        done = next(e.item for e in events if e.type == "response.output_item.done" and e.item.type == "reasoning")
        assert added.encrypted_content is None  # sealed once the reasoning is whole
        response = events[-1].response
        assert events[-1].type == "response.completed"
        assert response.output[0].encrypted_content == done.encrypted_content
    else:
        response = _first_turn(client)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert [part.text for part in reasoning.content or ()] == [THOUGHT]  # still shown in the clear
    blob = reasoning.encrypted_content
    assert isinstance(blob, str) and blob.startswith("gAAAAA")  # a Fernet token, as OpenAI's look
    assert THOUGHT not in blob and THOUGHT.encode() not in base64.urlsafe_b64decode(blob)
    assert _open(blob) == {"summary": [], "content": [THOUGHT]}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_without_the_include_there_is_no_encrypted_content(client: openai.OpenAI, stream: bool) -> None:
    if stream:
        events = list(client.responses.create(model="s/reasoning", input="hi", store=False, stream=True))
        items = [e.item for e in events if e.type in ("response.output_item.added", "response.output_item.done")]
        assert [item.encrypted_content for item in items if item.type == "reasoning"] == [None, None]
        response = events[-1].response
    else:
        response = client.responses.create(model="s/reasoning", input="hi", store=False)
    assert response.output[0].type == "reasoning"
    assert response.output[0].encrypted_content is None


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("shape", ["as-codex-sends", "content-empty", "as-returned"])
def test_reasoning_sent_back_encrypted_reaches_the_model(
    client: openai.OpenAI, fake_upstream: FakeUpstream, stream: bool, shape: str
) -> None:
    """The next turn, stateless too, sends the reasoning to the model in the provider's `reasoning_field`."""
    reasoning = _first_turn(client, stream=stream).output[0]
    if shape == "as-codex-sends":
        item = _as_codex_sends(reasoning)
    elif shape == "content-empty":
        item = {**_as_codex_sends(reasoning), "id": reasoning.id, "content": []}
    else:
        item = reasoning.to_dict()
    client.responses.create(model="ds/fake-echo", input=_next_turn(item), store=False, include=INCLUDE)
    assert fake_upstream.requests[-1]["messages"] == NEXT_TURN


def test_the_blob_stands_for_whatever_content_comes_with_it(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    """What the model thought is what the blob holds: `content` and `summary` sent beside it do not change it.

    A stored turn keeps the item with its reasoning restored and the blob as it was sent.
    """
    reasoning = _first_turn(client).output[0]
    item = {
        **_as_codex_sends(reasoning),
        "id": reasoning.id,
        "summary": [{"type": "summary_text", "text": "Something else."}],
        "content": [{"type": "reasoning_text", "text": "Not what I thought."}],
    }
    response = client.responses.create(model="ds/fake-echo", input=_next_turn(item))
    assert fake_upstream.requests[-1]["messages"] == NEXT_TURN
    stored = client.responses.input_items.list(response.id, order="asc").data[1].to_dict()
    assert stored == {
        "id": reasoning.id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": THOUGHT}],
        "encrypted_content": reasoning.encrypted_content,
        "status": "completed",
    }


def _tampered(blob: str) -> str:
    middle = len(blob) // 2
    return blob[:middle] + ("A" if blob[middle] != "A" else "B") + blob[middle + 1 :]


BAD_BLOBS = {
    "tampered": _tampered,
    "truncated": lambda blob: blob[:-12],
    "not-a-token": lambda blob: "opaque",
    "empty": lambda blob: "",
    "not-ascii": lambda blob: blob[:-4] + "ééé=",
}


@pytest.mark.parametrize("damage", list(BAD_BLOBS))
def test_a_blob_that_was_changed_is_a_400_naming_its_place(
    client: openai.OpenAI, fake_upstream: FakeUpstream, damage: str
) -> None:
    blob = BAD_BLOBS[damage](_first_turn(client).output[0].encrypted_content)
    sent = len(fake_upstream.requests)
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(
            model="ds/fake-echo",
            input=_next_turn({"type": "reasoning", "summary": [], "encrypted_content": blob}),
            store=False,
        )
    error = raised.value
    assert (error.status_code, error.type, error.code, error.param) == (
        400,
        "invalid_request_error",
        "invalid_encrypted_content",
        "input[1].encrypted_content",
    )
    # OpenAI's words, the blob named by its ends (a short one whole).
    shown = f"{blob[:4]}...{blob[-4:]}" if len(blob) > 12 else repr(blob)
    assert error.body == {
        "message": f"The encrypted content {shown} could not be verified. "
        "Reason: Encrypted content could not be decrypted or parsed.",
        "type": "invalid_request_error",
        "param": "input[1].encrypted_content",
        "code": "invalid_encrypted_content",
    }
    assert len(fake_upstream.requests) == sent  # refused before the model was called


def test_a_conversation_takes_encrypted_reasoning_and_refuses_a_bad_blob(client: openai.OpenAI) -> None:
    blob = _first_turn(client).output[0].encrypted_content
    conversation = client.conversations.create()
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.create(
            conversation.id,
            items=[
                {"role": "user", "content": "hi"},
                {"type": "reasoning", "summary": [], "encrypted_content": _tampered(blob)},
            ],
        )
    assert (raised.value.code, raised.value.param) == ("invalid_encrypted_content", "items[1].encrypted_content")

    client.conversations.items.create(
        conversation.id, items=[{"type": "reasoning", "summary": [], "encrypted_content": blob}]
    )
    [item] = client.conversations.items.list(conversation.id).data
    assert item.type == "reasoning"
    assert [part.text for part in item.content or ()] == [THOUGHT] and item.encrypted_content == blob


def _start(workdir: Path, scripted: str, fake: FakeUpstream, key: str | None, **env: str) -> ParleyProcess:
    parley = ParleyProcess(workdir, _config(workdir, scripted, fake, key), env=env)
    parley.start()
    return parley


def test_servers_that_share_the_key_read_each_others_blobs(
    client: openai.OpenAI, tmp_path: Path, scripted: str, fake_upstream: FakeUpstream
) -> None:
    """A replica with the same key, given here in the environment, reads the blob; one with another key refuses it."""
    blob = _first_turn(client).output[0].encrypted_content
    item = {"type": "reasoning", "summary": [], "encrypted_content": blob}

    replica = _start(tmp_path / "replica", scripted, fake_upstream, None, PARLEY_ENGINE__REASONING_KEY=KEY)
    stranger = _start(tmp_path / "stranger", scripted, fake_upstream, OTHER_KEY)
    try:
        replica.client().responses.create(model="ds/fake-echo", input=_next_turn(item), store=False)
        assert fake_upstream.requests[-1]["messages"] == NEXT_TURN
        # Nor did it keep a key of its own: it was given one.
        assert not (replica.workdir / "data" / "reasoning.key").exists()

        sent = len(fake_upstream.requests)
        with pytest.raises(openai.BadRequestError) as raised:
            stranger.client().responses.create(
                model="ds/fake-echo", input=[{"role": "user", "content": "one"}, *_next_turn(item)], store=False
            )
        assert (raised.value.code, raised.value.param) == ("invalid_encrypted_content", "input[2].encrypted_content")
        assert len(fake_upstream.requests) == sent
        # And what the stranger seals, the first server cannot read.
        foreign = _first_turn(stranger.client()).output[0].encrypted_content
        assert _open(foreign, OTHER_KEY) == {"summary": [], "content": [THOUGHT]}
        with pytest.raises(openai.BadRequestError):
            client.responses.create(
                model="ds/fake-echo", input=_next_turn({**item, "encrypted_content": foreign}), store=False
            )
    finally:
        replica.stop()
        stranger.stop()
    # The key is a secret: it is never printed.
    output = "".join(replica.output + stranger.output)
    assert KEY not in output and OTHER_KEY not in output


def test_a_generated_key_is_kept_in_the_data_dir_and_outlives_a_restart(
    tmp_path: Path, scripted: str, fake_upstream: FakeUpstream
) -> None:
    parley = _start(tmp_path, scripted, fake_upstream, None)
    try:
        key_file = tmp_path / "data" / "reasoning.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text()
        blob = _first_turn(parley.client()).output[0].encrypted_content
        assert _open(blob, key) == {"summary": [], "content": [THOUGHT]}
        parley.stop()

        parley.start()
        item = {"type": "reasoning", "summary": [], "encrypted_content": blob}
        parley.client().responses.create(model="ds/fake-echo", input=_next_turn(item), store=False)
        assert fake_upstream.requests[-1]["messages"] == NEXT_TURN
        assert key_file.read_text() == key
        assert [name for name in os.listdir(tmp_path / "data") if "reasoning" in name] == ["reasoning.key"]  # no draft
        assert key.strip() not in "".join(parley.output)
    finally:
        parley.stop()


def test_a_configured_key_must_be_32_bytes_of_base64_and_is_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "parley.yaml"
    for good in (KEY, KEY.rstrip("="), Fernet.generate_key().decode()):
        config.write_text(f"engine:\n  reasoning_key: '{good}'\n")
        settings = load_settings(config)
        assert settings.engine.reasoning_key is not None
        assert settings.engine.reasoning_key.get_secret_value() == good
        assert good not in repr(settings) and good not in str(settings.model_dump(mode="json"))

    short = base64.b64encode(b"sixteen bytes!!!").decode()
    for bad in (short, "not base64 at all!", KEY + KEY):
        config.write_text(f"engine:\n  reasoning_key: '{bad}'\n")
        with pytest.raises(ConfigError) as raised:
            load_settings(config)
        assert "engine.reasoning_key: must be 32 random bytes in base64" in str(raised.value)
        assert bad not in str(raised.value)

    monkeypatch.setenv("PARLEY_ENGINE__REASONING_KEY", short)
    config.write_text(f"engine:\n  reasoning_key: '{KEY}'\n")
    with pytest.raises(ConfigError, match=r"engine\.reasoning_key: must be 32"):
        load_settings(config)  # the environment wins over the file
