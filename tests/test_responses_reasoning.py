"""Reasoning items sent back to OpenAI-compatible upstreams, in the field each provider is configured with.

Chat completions has no standard field for it: DeepSeek and older vLLM read
`reasoning_content`, newer vLLM, Ollama and OpenRouter `reasoning`, and OpenAI
refuses unknown message fields. `fake_upstream.requests[-1]["messages"]` is what
the model was sent. The scripted upstream of `test_responses_output_kinds`
streams reasoning, so that what Parley read comes back in the next turn. On
SQLite and on PostgreSQL; every stream is checked by the stream validator.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from parley.config import ConfigError, OpenAIProviderConfig, load_settings
from tests import test_responses_output_kinds as output_kinds
from tests.conftest import ParleyProcess, parley_config
from tests.fake_upstream import MODELS, FakeUpstream
from tests.support.tools import WEATHER

FIELDS = ["reasoning_content", "reasoning"]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, storage_url: str
) -> Iterator[ParleyProcess]:
    """Parley with the fake upstream once per reasoning field (`reasoning_content/...`, `reasoning/...`, and
    `fake/...` without one), and the scripted upstream's reasoning model (`s/reasoning`)."""
    config = parley_config(fake_upstream, storage_url)
    providers = config["inference"]["providers"]
    for field in FIELDS:
        providers[field.replace("_", "-")] = {
            "type": "openai",
            "base_url": fake_upstream.base_url,
            "models": list(MODELS),
            "reasoning_field": field,
        }
    with output_kinds.scripted_upstream() as base_url:
        providers["s"] = {"type": "openai", "base_url": base_url, "models": ["reasoning"]}
        with ParleyProcess(tmp_path_factory.mktemp("reasoning-field"), config) as parley:
            yield parley


def model(field: str | None, name: str = "fake-echo") -> str:
    return f"{field.replace('_', '-')}/{name}" if field else f"fake/{name}"


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def reasoning(text: str | None = None, summary: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": s} for s in summary or ()],
        **({"content": [{"type": "reasoning_text", "text": text}]} if text is not None else {}),
    }


@pytest.mark.parametrize("field", FIELDS)
def test_reasoning_rides_on_the_assistant_message_after_it(
    client: openai.OpenAI, fake_upstream: FakeUpstream, field: str
) -> None:
    client.responses.create(
        model=model(field),
        input=[
            user("How many legs has a spider?"),
            reasoning("Spiders are arachnids."),
            {"role": "assistant", "content": "Eight."},
            user("And an ant?"),
        ],
    )
    assert fake_upstream.requests[-1]["messages"] == [
        user("How many legs has a spider?"),
        {"role": "assistant", "content": "Eight.", field: "Spiders are arachnids."},
        user("And an ant?"),
    ]


@pytest.mark.parametrize("field", FIELDS)
def test_reasoning_before_a_call_rides_on_the_message_with_the_call(
    client: openai.OpenAI, fake_upstream: FakeUpstream, field: str
) -> None:
    """DeepSeek's tool loop needs the turn's reasoning back on the message that made the call."""
    response = client.responses.create(
        model=model(field, "fake-tool"),
        tools=[WEATHER],
        input=[
            user("Weather in Paris?"),
            # No reasoning text: the summary stands in for it.
            reasoning(summary=["I should look it up.", "With the tool."]),
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
        ],
    )
    assert response.output_text == "The tool said: Sunny"
    assert fake_upstream.requests[-1]["messages"] == [
        user("Weather in Paris?"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
            field: "I should look it up.\n\nWith the tool.",
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    ]


@pytest.mark.parametrize("field", FIELDS)
def test_reasoning_with_no_assistant_message_gets_an_empty_one(
    client: openai.OpenAI, fake_upstream: FakeUpstream, field: str
) -> None:
    client.responses.create(
        model=model(field),
        input=[user("one"), reasoning("first thought"), reasoning("second thought"), user("two")],
    )
    assert fake_upstream.requests[-1]["messages"] == [
        user("one"),
        {"role": "assistant", "content": "", field: "first thought\n\nsecond thought"},
        user("two"),
    ]
    # Reasoning that nothing follows is left out: a last assistant message would be a reply to continue.
    client.responses.create(model=model(field), input=[user("three"), reasoning("a thought")])
    assert fake_upstream.requests[-1]["messages"] == [user("three")]


def test_reasoning_is_left_out_without_a_reasoning_field(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    """OpenAI's chat completions refuses unknown message fields: by default, reasoning is not sent."""
    for field in FIELDS:
        client.responses.create(
            model=model(field), input=[user("one"), reasoning("a thought"), {"role": "assistant", "content": "hm"}]
        )
        assert fake_upstream.requests[-1]["messages"][-1] == {"role": "assistant", "content": "hm", field: "a thought"}
    client.responses.create(
        model=model(None), input=[user("one"), reasoning("a thought"), user("two"), reasoning("another")]
    )
    assert fake_upstream.requests[-1]["messages"] == [user("one"), user("two")]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("history", ["previous_response_id", "conversation"])
def test_reasoning_read_from_the_upstream_goes_back_to_it(
    client: openai.OpenAI, fake_upstream: FakeUpstream, field: str, history: str
) -> None:
    """The scripted upstream streams `reasoning_content`; the next turn sends it back in the provider's field."""
    continues: dict[str, Any] = {}
    if history == "conversation":
        continues["conversation"] = client.conversations.create().id
    events = list(client.responses.create(model="s/reasoning", input="hi", stream=True, **continues))
    first = events[-1].response
    assert [item.type for item in first.output] == ["reasoning", "message"]
    if history == "previous_response_id":
        continues["previous_response_id"] = first.id

    client.responses.create(model=model(field), input="and now?", **continues)
    assert fake_upstream.requests[-1]["messages"] == [
        user("hi"),
        {"role": "assistant", "content": "Hello!", field: "The user greets me."},
        user("and now?"),
    ]


def test_reasoning_field_is_checked_at_start(tmp_path: Path) -> None:
    config = tmp_path / "parley.yaml"
    provider = "inference:\n  providers:\n    ds:\n      type: openai\n      base_url: http://ds/v1\n"
    config.write_text(provider + "      reasoning_field: reasoning_content\n")
    settings = load_settings(config)
    assert isinstance(ds := settings.inference.providers["ds"], OpenAIProviderConfig)
    assert ds.reasoning_field == "reasoning_content"

    config.write_text(provider + "      reasoning_field: thoughts\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "inference.providers.ds.reasoning_field: Input should be 'reasoning_content' or 'reasoning'" in str(
        info.value
    )


GOOD_REASONING: dict[str, Any] = {
    "type": "reasoning",
    "summary": [{"type": "summary_text", "text": "Count legs."}, {"type": "summary_text", "text": "Eight."}],
    "content": [{"type": "reasoning_text", "text": "Spiders are arachnids."}],
    "encrypted_content": None,  # a blob is checked (test_responses_encrypted_reasoning)
}
BAD_REASONING: list[tuple[dict[str, Any], str, str | None]] = [
    # (the reasoning item's fields, the param named after `input[1].`, the error's code)
    ({"summary": [{"type": "bogus", "text": "x"}]}, "summary[0].type", None),
    ({"summary": [{"type": "reasoning_text", "text": "x"}]}, "summary[0].type", None),
    ({"summary": [{"type": "summary_text"}]}, "summary[0].text", "missing_required_parameter"),
    ({"summary": [{"type": "summary_text", "text": 7}]}, "summary[0].text", "invalid_value"),
    ({"summary": [], "content": [{"type": "summary_text", "text": "x"}]}, "content[0].type", None),
    ({"summary": [], "content": [{"type": "reasoning_text", "text": None}]}, "content[0].text", "invalid_value"),
    ({"summary": [], "content": [{"type": "reasoning_text", "text": ["x"]}]}, "content[0].text", "invalid_value"),
]


@pytest.mark.parametrize(("fields", "place", "code"), BAD_REASONING)
def test_a_bad_reasoning_part_is_a_400_naming_its_place(
    client: openai.OpenAI, fake_upstream: FakeUpstream, fields: dict[str, Any], place: str, code: str | None
) -> None:
    """`summary` holds `summary_text` parts and `content` `reasoning_text` parts, each with a string `text`;
    the item with its parts put right is accepted and stored as given."""
    sent = len(fake_upstream.requests)
    bad: Any = [user("one"), {"type": "reasoning", **fields}, {"role": "assistant", "content": "two"}]
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=model(None), input=bad)
    assert raised.value.param == f"input[1].{place}"
    assert raised.value.type == "invalid_request_error"
    assert raised.value.code == code
    assert f"'input[1].{place}'" in raised.value.message
    assert len(fake_upstream.requests) == sent  # refused before the model was called

    # The same item added to a conversation is refused there, named as a conversation item.
    conversation = client.conversations.create()
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.create(conversation.id, items=[bad[1]])
    assert raised.value.param == f"items[0].{place}"
    assert list(client.conversations.items.list(conversation.id)) == []

    thought: Any = {**GOOD_REASONING, "id": f"rs_{uuid.uuid4().hex}"}
    response = client.responses.create(model=model(None), input=[bad[0], thought, bad[2]])
    assert response.status == "completed"
    stored = [item.to_dict(mode="json") for item in client.responses.input_items.list(response.id, order="asc")]
    assert stored[1] == {**thought, "status": "completed"}
    client.conversations.items.create(conversation.id, items=[{**GOOD_REASONING, "content": None}])
    [item] = [item.to_dict(mode="json") for item in client.conversations.items.list(conversation.id)]
    assert item["summary"] == GOOD_REASONING["summary"] and item["encrypted_content"] is None
