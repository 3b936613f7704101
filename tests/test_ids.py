"""Ids a request names: one that no object could have is a 400 in OpenAI's words; a well-formed one that names
nothing stays a 404. Over HTTP, on SQLite and PostgreSQL (parley/ids.py, parley/api/ids.py)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ParleyProcess


@pytest.fixture
def http(parley: ParleyProcess) -> Any:
    with parley.http() as client:
        yield client


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


MALFORMED = [
    ("GET", "/v1/responses/abc", "response_id", "abc", "resp"),
    ("DELETE", "/v1/responses/msg_123", "response_id", "msg_123", "resp"),
    ("GET", "/v1/responses/resp-123/input_items", "response_id", "resp-123", "resp"),
    ("GET", "/v1/conversations/abc", "conversation_id", "abc", "conv"),
    ("POST", "/v1/conversations/resp_123", "conversation_id", "resp_123", "conv"),
    ("DELETE", "/v1/conversations/conv", "conversation_id", "conv", "conv"),
    ("GET", "/v1/conversations/abc/items", "conversation_id", "abc", "conv"),
    ("POST", "/v1/conversations/abc/items", "conversation_id", "abc", "conv"),
    ("GET", "/v1/conversations/abc/items/msg_1", "conversation_id", "abc", "conv"),
    ("GET", "/v1/files/abc", "file_id", "abc", "file"),
    ("DELETE", "/v1/files/file_123", "file_id", "file_123", "file"),
]


@pytest.mark.parametrize(
    ("method", "path", "param", "value", "prefix"), MALFORMED, ids=[f"{m} {p}" for m, p, *_ in MALFORMED]
)
def test_a_malformed_id_in_a_path_is_a_400(
    http: httpx.Client, method: str, path: str, param: str, value: str, prefix: str
) -> None:
    body = {"metadata": {}} if method == "POST" and path.endswith(value) else {"items": []}
    response = http.request(method, path, json=body if method == "POST" else None)
    assert response.status_code == 400, response.text
    assert _error(response) == {
        "message": f"Invalid '{param}': '{value}'. Expected an ID that begins with '{prefix}'.",
        "type": "invalid_request_error",
        "param": param,
        "code": "invalid_value",
    }


@pytest.mark.parametrize("item_id", ["x" * 65, "msg_%01"], ids=["too-long", "control-character"])
def test_an_item_id_no_item_could_have_is_a_400(http: httpx.Client, item_id: str) -> None:
    conversation = http.post("/v1/conversations", json={}).json()["id"]
    for method in ("GET", "DELETE"):
        response = http.request(method, f"/v1/conversations/{conversation}/items/{item_id}")
        assert response.status_code == 400, response.text
        assert (_error(response)["param"], _error(response)["code"]) == ("item_id", "invalid_value")


def test_well_formed_ids_that_name_nothing_are_still_404s(http: httpx.Client) -> None:
    conversation = http.post("/v1/conversations", json={}).json()["id"]
    for path in (
        "/v1/responses/resp_missing",
        "/v1/conversations/conv_missing",
        f"/v1/conversations/{conversation}/items/msg_missing",
        f"/v1/conversations/{conversation}/items/an item id of its caller's",
        "/v1/files/file-missing",
    ):
        assert http.get(path).status_code == 404, path


@pytest.mark.parametrize(
    ("field", "value", "prefix"),
    [("previous_response_id", "abc", "resp"), ("conversation", "chat_1", "conv")],
)
def test_a_malformed_id_in_a_response_request_is_a_400(
    parley: ParleyProcess, field: str, value: str, prefix: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        parley.client().responses.create(model="fake/fake-echo", input="hi", **{field: value})
    assert raised.value.body == {
        "message": f"Invalid '{field}': '{value}'. Expected an ID that begins with '{prefix}'.",
        "type": "invalid_request_error",
        "param": field,
        "code": "invalid_value",
    }
