"""`GET /v1/models`, `GET /v1/models/{id}`, unknown models, health and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from parley import __version__
from tests.conftest import ParleyProcess
from tests.fake_upstream import CREATED, MODELS, FakeUpstream

pytestmark = pytest.mark.timeout(60)

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client(upstream: ParleyProcess) -> Iterator[openai.OpenAI]:
    with upstream.client(timeout=20) as c:
        yield c


def model(id: str, owned_by: str, created: int = 0) -> dict[str, Any]:
    return {"id": id, "object": "model", "created": created, "owned_by": owned_by}


def test_model_list_has_configured_discovered_and_aliased_models(client: openai.OpenAI) -> None:
    listed = {m.id: m.model_dump(exclude_unset=True) for m in client.models.list()}

    expected = [
        *(model(f"discovered/{name}", "fake", CREATED) for name in MODELS),
        *(model(f"fake/{name}", "fake") for name in MODELS),
        # Configured models are listed without asking the upstream, even one that is down.
        model("down/any", "down"),
        model("echo", "fake"),
    ]
    assert listed == {m["id"]: m for m in expected}


def test_model_list_skips_a_provider_that_cannot_list(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    config = {
        "inference": {
            "providers": {
                "fake": {"type": "openai", "base_url": fake_upstream.base_url, "models": ["fake-echo"]},
                # Discovers its models, but nothing listens there.
                "gone": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "timeout": {"connect": 2}},
            },
            "aliases": {"echo": "fake/fake-echo", "lost": "gone/anything"},
        }
    }
    server = ParleyProcess(tmp_path, config)
    try:
        server.start()
        with server.client(timeout=20) as client:
            listed = [m.model_dump(exclude_unset=True) for m in client.models.list()]
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="gone/anything", messages=HELLO)  # type: ignore[arg-type]
            health = client.get("/health", cast_to=object)
    finally:
        server.stop()

    assert listed == [model("fake/fake-echo", "fake"), model("echo", "fake")]
    assert (info.value.status_code, info.value.code) == (502, "upstream_unavailable")
    assert health == {"status": "ok", "version": __version__}


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("echo", model("echo", "fake")),
        ("fake/fake-echo", model("fake/fake-echo", "fake")),
        ("discovered/fake-tool", model("discovered/fake-tool", "fake", CREATED)),
        ("down/any", model("down/any", "down")),
    ],
)
def test_retrieve_model(client: openai.OpenAI, model_id: str, expected: dict[str, Any]) -> None:
    assert client.models.retrieve(model_id).model_dump(exclude_unset=True) == expected


@pytest.mark.parametrize("model_id", ["nope", "fake/nope", "discovered/nope", "fake"])
def test_retrieve_unknown_model_is_not_found(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve(model_id)

    assert info.value.body == {
        "message": f"The model `{model_id}` does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model_id", ["nope", "fake/nope", "fake/", "echo/fake-echo", "nowhere/fake-echo"])
def test_chat_with_unknown_model_is_404_model_not_found(
    client: openai.OpenAI, fake_upstream: FakeUpstream, model_id: str, stream: bool
) -> None:
    sent = len(fake_upstream.requests)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=model_id, messages=HELLO, stream=stream)  # type: ignore[arg-type]

    assert info.value.body == {
        "message": f"The model `{model_id}` does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert len(fake_upstream.requests) == sent  # refused without asking the upstream


def test_chat_with_a_model_the_discovering_upstream_lacks_is_404_model_not_found(client: openai.OpenAI) -> None:
    # A discovering provider has no list to check against: the upstream says no, and Parley passes that on.
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="discovered/nope", messages=HELLO)  # type: ignore[arg-type]

    assert (info.value.code, info.value.param) == ("model_not_found", "model")


def test_chat_with_a_discovered_model(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    completion = client.chat.completions.create(model="discovered/fake-echo", messages=HELLO)  # type: ignore[arg-type]

    assert completion.model == "discovered/fake-echo"
    assert completion.choices[0].message.content == "hi"
    assert fake_upstream.requests[-1]["model"] == "fake-echo"


def test_health(upstream: ParleyProcess) -> None:
    with upstream.http() as http:
        response = http.get("/v1/health")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok", "version": __version__}


def test_openapi_document_lists_the_routes_and_the_chat_body(upstream: ParleyProcess) -> None:
    with upstream.http() as http:
        response = http.get("/openapi.json")

    assert response.status_code == 200
    document = response.json()
    assert {"/v1/chat/completions", "/v1/models", "/v1/models/{model_id}", "/v1/health"} <= set(document["paths"])
    assert set(document["paths"]["/v1/chat/completions"]) == {"post"}
    body = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    assert ref.startswith("#/components/schemas/")
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["required"] == ["model", "messages"]
    assert {"model", "messages", "stream", "tools", "temperature", "response_format"} <= set(schema["properties"])
    # Every $ref in the document resolves.
    for name in _refs(document):
        assert name in document["components"]["schemas"], name


def test_openapi_document_promises_no_422(upstream: ParleyProcess) -> None:
    with upstream.http() as http:
        document = http.get("/openapi.json").json()

    documented = {
        (path, method, status)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for status in operation.get("responses", {})
    }
    assert {entry for entry in documented if entry[2] == "422"} == set()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.rsplit("/", 1)[1]
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)
