"""The web_search tool against a search service of our own (tests/search_server.py), on SQLite and PostgreSQL.

The model is the fake upstream's `fake-script`, whose tool calls are written
in the user message: `web_search {"query": "parley"}` searches, then answers
"Results: " and what the search gave it, URLs included, so that every step
and every citation is known in advance. Only the model is faked: the
searches, the pages and their failures are real HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import ResponseFunctionWebSearch

from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream
from tests.search_server import BRAVE_KEY, SLOW_SECONDS, SearchServer

SCRIPT = "fake/fake-script"
WEB_SEARCH = {"type": "web_search"}
TIMEOUT = 2  # seconds Parley waits for a search or a page


@pytest.fixture(scope="module")
def search_server() -> Iterator[SearchServer]:
    server = SearchServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _search_server_answers(search_server: SearchServer) -> Iterator[None]:
    search_server.mode = "ok"
    yield
    search_server.mode = "ok"


def _start(
    workdir: Path, fake: FakeUpstream, storage_url: str, web_search: dict[str, Any], env: dict[str, str] | None = None
) -> ParleyProcess:
    config = upstream_config(fake)
    config["storage"] = {"url": storage_url}
    config["tools"] = {"web_search": web_search}
    server = ParleyProcess(workdir, config, env)
    server.start()
    return server


@pytest.fixture(scope="module")
def searching(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, storage_url: str, search_server: SearchServer
) -> Iterator[ParleyProcess]:
    """Parley over a SearXNG-style backend; pages on this machine may be opened, not those on private networks."""
    server = _start(
        tmp_path_factory.mktemp("web-search"),
        fake_upstream,
        storage_url,
        {"backend": "searxng", "base_url": search_server.base_url, "timeout": TIMEOUT, "allow_loopback": True},
    )
    yield server
    server.stop()


@pytest.fixture
def client(searching: ParleyProcess) -> openai.OpenAI:
    return searching.client(timeout=60)


def streamed(client: openai.OpenAI, **request: Any) -> tuple[list[Any], Any]:
    """The events of a streamed response, and the response its last event carries."""
    events = list(client.responses.create(**request, stream=True))
    return events, events[-1].response


def create(client: openai.OpenAI, stream: bool, **request: Any) -> Any:
    return streamed(client, **request)[1] if stream else client.responses.create(**request)


def item_events(events: list[Any], index: int) -> list[str]:
    return [event.type for event in events if getattr(event, "output_index", None) == index]


def offered(request: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in request.get("tools") or ()]


def corpus_urls(server: SearchServer, word: str) -> list[str]:
    return [doc.url for doc in server.matches(word)]


@pytest.mark.parametrize("stream", [False, True])
def test_a_search_and_the_answer_that_reads_it(
    client: openai.OpenAI, search_server: SearchServer, fake_upstream: FakeUpstream, stream: bool
) -> None:
    request = {"model": SCRIPT, "input": 'web_search {"query": "parley"}', "tools": [WEB_SEARCH]}
    if stream:
        events, response = streamed(client, **request)
        assert item_events(events, 0) == [
            "response.output_item.added",
            "response.web_search_call.in_progress",
            "response.web_search_call.searching",
            "response.web_search_call.completed",
            "response.output_item.done",
        ]
        added = events[[event.type for event in events].index("response.output_item.added")].item
        # OpenAI's fields only: the action's are filled in once the model has written its arguments.
        assert added.model_dump(exclude_unset=True) == {
            "id": response.output[0].id,
            "type": "web_search_call",
            "status": "in_progress",
            "action": {"type": "search", "query": ""},
        }
    else:
        response = client.responses.create(**request)

    assert [item.type for item in response.output] == ["web_search_call", "message"]
    call = response.output[0]
    assert isinstance(call, ResponseFunctionWebSearch)
    assert call.id.startswith("ws_") and call.status == "completed"
    # Without `include`, a search's action has no sources, as OpenAI's has none.
    assert call.action.model_dump(exclude_unset=True) == {"type": "search", "query": "parley"}
    urls = corpus_urls(search_server, "parley")
    assert [result["url"] for result in call.results] == urls
    assert call.results[0] == {
        "title": "Parley: an OpenAI-compatible API server",
        "url": "https://parley.example.org/",
        "text": "Parley serves OpenAI's Responses API over any chat-completions model.",
    }
    assert search_server.searches[-1]["params"] == {"q": "parley", "format": "json"}

    # The model was offered the search and the pages, and read titles, URLs and snippets as the call's result.
    first, second = fake_upstream.requests[-2:]
    assert offered(first) == ["web_search", "open_page", "find_in_page"]
    call_message, tool_message = second["messages"][-2:]
    assert call_message["tool_calls"][0]["function"] == {"name": "web_search", "arguments": '{"query": "parley"}'}
    assert tool_message["tool_call_id"] == call.id
    for result in call.results:
        for field in ("title", "url", "text"):
            assert result[field] in tool_message["content"]
    assert response.output_text == "Results: " + tool_message["content"]
    assert response.status == "completed"
    assert client.responses.retrieve(response.id).model_dump() == response.model_dump()


def test_searches_made_in_one_model_message_go_back_as_one(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    script = 'web_search {"query": "parley"} & web_search {"query": "searxng"}'
    response = client.responses.create(model=SCRIPT, input=script, tools=[WEB_SEARCH])
    first, second = response.output[:2]
    assert (first.type, second.type) == ("web_search_call", "web_search_call")
    messages = fake_upstream.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [(call["id"], call["function"]["arguments"]) for call in messages[1]["tool_calls"]] == [
        (first.id, '{"query": "parley"}'),
        (second.id, '{"query": "searxng"}'),
    ]
    assert [m["tool_call_id"] for m in messages[2:]] == [first.id, second.id]


def test_the_next_turn_reads_the_search_again_and_cites_it(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.responses.create(model=SCRIPT, input='web_search {"query": "searxng"}', tools=[WEB_SEARCH])
    second = client.responses.create(
        model="fake/fake-echo",
        input="see https://searxng.example.net/",
        tools=[WEB_SEARCH],
        previous_response_id=first.id,
    )
    messages = fake_upstream.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
    assert messages[2]["tool_call_id"] == first.output[0].id
    assert "https://searxng.example.net/" in messages[2]["content"]
    # The earlier turn's result is cited where this answer names it.
    annotation = second.output[0].content[0].annotations[0]
    assert (annotation.url, annotation.title, annotation.start_index) == ("https://searxng.example.net/", "SearXNG", 4)


def test_sources_when_included(client: openai.OpenAI, search_server: SearchServer) -> None:
    response = client.responses.create(
        model=SCRIPT,
        input='web_search {"query": "parley"}',
        tools=[WEB_SEARCH],
        include=["web_search_call.action.sources"],
    )
    action = response.output[0].action
    assert [(source.type, source.url) for source in action.sources] == [
        ("url", url) for url in corpus_urls(search_server, "parley")
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_the_answer_cites_the_results_it_names(client: openai.OpenAI, stream: bool) -> None:
    request = {"model": SCRIPT, "input": 'web_search {"query": "tools"}', "tools": [WEB_SEARCH]}
    if stream:
        events, response = streamed(client, **request)
    else:
        response = client.responses.create(**request)
    part = response.output[-1].content[0]
    text, url, link = (
        part.text,
        "https://docs.example.org/parley/tools",
        "[server-side tools](https://docs.example.org/parley/tools)",
    )
    # The result's URL on its own line, and the markdown link in its snippet, which is cited whole.
    assert [(a.type, a.url, a.title, text[a.start_index : a.end_index]) for a in part.annotations] == [
        ("url_citation", url, "Parley tools", url),
        ("url_citation", url, "Parley tools", link),
    ]
    if stream:
        names = [event.type for event in events]
        added = [event for event in events if event.type == "response.output_text.annotation.added"]
        assert [event.annotation_index for event in added] == [0, 1]
        assert [event.annotation.model_dump() for event in added] == [a.model_dump() for a in part.annotations]
        last_delta = max(i for i, name in enumerate(names) if name == "response.output_text.delta")
        assert last_delta < names.index("response.output_text.annotation.added")
        assert names.index("response.output_text.done") > max(names.index(e.type) for e in added)


@pytest.mark.parametrize("stream", [False, True])
def test_open_page_and_find_in_page(client: openai.OpenAI, search_server: SearchServer, stream: bool) -> None:
    page = search_server.page("parley")
    script = f'open_page {{"url": "{page}"}} | find_in_page {{"url": "{page}", "pattern": "CITES"}}'
    read_before = len(search_server.pages_read)
    response = create(client, stream, model=SCRIPT, input=script, tools=[WEB_SEARCH])

    opened, found, answer = response.output
    assert (opened.status, opened.action.model_dump(exclude_unset=True)) == (
        "completed",
        {"type": "open_page", "url": page},
    )
    assert opened.results == [
        {
            "title": "Parley, served here",
            "url": page,
            "text": "Parley\nParley is an OpenAI-compatible API server.\n"
            "It runs web searches for the model & cites what it found.\nMCP servers\nWeb search",
        }
    ]
    assert found.action.model_dump() == {"type": "find_in_page", "url": page, "pattern": "CITES"}
    assert len(found.results) == 1 and "model & cites what it found" in found.results[0]["text"]
    assert search_server.pages_read[read_before:] == ["parley"]  # read once, for both calls
    assert "It runs web searches for the model & cites what it found." in answer.content[0].text
    # The page's URL in what the model wrote is a citation of it.
    assert {a.url for a in answer.content[0].annotations} == {page}


def test_pages_that_cannot_be_opened(client: openai.OpenAI, search_server: SearchServer) -> None:
    refused = {
        "http://10.0.0.1/": "private",
        "http://169.254.169.254/latest/meta-data/": "private",
        "http://[fd00::1]/": "private",
        f"{search_server.base_url}/redirect?to=http://192.168.1.1/": "private",  # each redirect is checked
        "file:///etc/passwd": "only http and https",
        search_server.page("binary"): "not text",
        search_server.page("missing"): "HTTP 404",
        # Never silent for long, but not whole within the timeout either.
        search_server.page("trickle"): f"did not answer within {TIMEOUT} s",
    }
    script = " & ".join(f'open_page {{"url": "{url}"}}' for url in refused)
    read_before = len(search_server.pages_read)
    started = time.monotonic()
    events, response = streamed(client, model=SCRIPT, input=script, tools=[WEB_SEARCH])
    calls = response.output[:-1]
    assert [call.action.url for call in calls] == list(refused)
    for call, reason in zip(calls, refused.values(), strict=True):
        assert call.status == "failed" and reason in call.error and call.results == [], (call.action.url, call.error)
    # OpenAI has no event for a failed web search: the item ends with output_item.done alone.
    for index in range(len(calls)):
        assert item_events(events, index)[-2:] == ["response.web_search_call.searching", "response.output_item.done"]
    assert response.status == "completed"
    assert response.output_text.startswith("Results: Error: The page may not be opened: ")
    assert time.monotonic() - started < SLOW_SECONDS
    # No request reached a refused host: only the pages that were not refused were read.
    assert sorted(search_server.pages_read[read_before:]) == ["binary", "missing", "trickle"]


@pytest.mark.parametrize("mode", ["error", "drop"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_backend_that_is_down_fails_the_call(
    client: openai.OpenAI, search_server: SearchServer, mode: str, stream: bool
) -> None:
    search_server.mode = mode
    response = create(client, stream, model=SCRIPT, input='web_search {"query": "parley"}', tools=[WEB_SEARCH])
    call = response.output[0]
    assert (call.status, call.action.query, call.results) == ("failed", "parley", [])
    expected = "answered HTTP 500" if mode == "error" else "failed to answer"
    assert expected in call.error
    assert response.status == "completed" and response.output_text == f"Results: Error: {call.error}"


def test_a_backend_that_is_slow_times_out(client: openai.OpenAI, search_server: SearchServer) -> None:
    search_server.mode = "slow"
    started = time.monotonic()
    response = client.responses.create(model=SCRIPT, input='web_search {"query": "parley"}', tools=[WEB_SEARCH])
    assert time.monotonic() - started < SLOW_SECONDS
    call = response.output[0]
    assert call.status == "failed" and call.error == f"The search service did not answer within {TIMEOUT} s."
    assert response.output_text == f"Results: Error: {call.error}"


def test_bad_arguments_from_the_model(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=SCRIPT, input='web_search {"q": "parley"} & open_page [1]', tools=[WEB_SEARCH]
    )
    search, page = response.output[:2]
    assert search.status == "failed" and "'query' must be a string" in search.error
    assert page.status == "failed" and page.error == "The arguments must be a JSON object."
    assert response.status == "completed"


def test_max_tool_calls_refuses_the_rest(client: openai.OpenAI, search_server: SearchServer) -> None:
    searches = len(search_server.searches)
    response = client.responses.create(
        model=SCRIPT,
        input='web_search {"query": "parley"} & web_search {"query": "searxng"}',
        tools=[WEB_SEARCH],
        max_tool_calls=1,
        parallel_tool_calls=False,
    )
    ran, refused = response.output[:2]
    assert ran.status == "completed" and ran.error is None
    assert refused.status == "failed" and "max_tool_calls" in refused.error
    assert refused.action.query == "searxng"
    assert len(search_server.searches) == searches + 1


def test_allowed_domains(client: openai.OpenAI, search_server: SearchServer) -> None:
    tool = {"type": "web_search", "filters": {"allowed_domains": ["https://Docs.Example.org/"]}}
    page = search_server.page("parley")
    response = client.responses.create(
        model=SCRIPT, input=f'web_search {{"query": "parley"}} & open_page {{"url": "{page}"}}', tools=[tool]
    )
    search, opened = response.output[:2]
    assert [result["url"] for result in search.results] == ["https://docs.example.org/parley/tools"]
    assert search_server.searches[-1]["params"]["q"] == "parley (site:docs.example.org)"
    assert opened.status == "failed" and "not on the allowed domains (docs.example.org)" in opened.error
    assert response.tools[0].model_dump(exclude_unset=True) == tool  # echoed as sent


@pytest.mark.parametrize(("size", "count"), [("low", 2), ("medium", 3), ("high", 3)])
def test_search_context_size_sets_how_many_results(client: openai.OpenAI, size: str, count: int) -> None:
    # max_results is 5: low reads 2, medium 5 and high 10, of the 3 documents that match.
    tool = {"type": "web_search_preview", "search_context_size": size}
    response = client.responses.create(model=SCRIPT, input='web_search {"query": "parley"}', tools=[tool])
    assert len(response.output[0].results) == count


def test_codex_web_search_offers_the_search_alone(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    # What the Codex CLI (0.169) sends with every request: no live page fetching.
    tool = {"type": "web_search", "external_web_access": False}
    exec_command = {"type": "function", "name": "exec_command", "strict": False, "parameters": {"type": "object"}}
    response = client.responses.create(
        model=SCRIPT, input='web_search {"query": "parley"}', tools=[exec_command, tool], stream=False
    )
    assert offered(fake_upstream.requests[-2]) == ["exec_command", "web_search"]
    assert response.output[0].status == "completed"
    assert response.tools[1].model_dump(exclude_unset=True) == tool


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search"},
        {
            "type": "web_search_2025_08_26",
            "search_context_size": "high",
            "user_location": {"type": "approximate", "country": "FR", "city": "Lyon"},
            "filters": {"allowed_domains": ["example.org"]},
        },
        {"type": "web_search_preview", "search_content_types": ["text"]},
        {"type": "web_search_preview_2025_03_11", "user_location": {"type": "approximate", "timezone": "Europe/Paris"}},
    ],
)
def test_definitions_are_echoed_as_sent(client: openai.OpenAI, searching: ParleyProcess, tool: dict[str, Any]) -> None:
    response = client.responses.create(model="fake/fake-echo", input="hi", tools=[tool])
    with searching.http() as http:
        stored = http.get(f"/v1/responses/{response.id}").json()
    assert stored["tools"] == [tool]


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"type": "web_search", "max_results": 3}, "tools[0].max_results"),
        ({"type": "web_search", "filters": {"blocked_domains": ["x.org"]}}, "tools[0].filters.blocked_domains"),
        ({"type": "web_search", "filters": {"allowed_domains": ["not a domain"]}}, "tools[0].filters.allowed_domains"),
        ({"type": "web_search", "search_context_size": "huge"}, "tools[0].search_context_size"),
        ({"type": "web_search_preview", "external_web_access": False}, "tools[0].external_web_access"),
        ({"type": "web_search", "user_location": {"zip": "75001"}}, "tools[0].user_location.zip"),
    ],
)
def test_a_bad_definition_is_a_400(client: openai.OpenAI, tool: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=SCRIPT, input="hi", tools=[tool])
    assert raised.value.param == param


def test_web_search_calls_sent_back_as_input(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    # A stateless caller sends the history back: the call as openai-python parsed it, and one as the
    # Codex CLI echoes it (OpenAI's fields only, so without what the model read).
    first = client.responses.create(
        model=SCRIPT, input='web_search {"query": "parley"}', tools=[WEB_SEARCH], store=False
    )
    call = first.output[0]
    codex = {
        "type": "web_search_call",
        "id": "ws_codex",
        "status": "completed",
        "action": {"type": "search", "query": "x"},
    }
    history = [
        {"role": "user", "content": 'web_search {"query": "parley"}'},
        call.model_dump(exclude_none=True),
        first.output[1].model_dump(exclude_none=True),
        codex,
        {"role": "user", "content": "thanks"},
    ]
    response = client.responses.create(model="fake/fake-echo", input=history, tools=[WEB_SEARCH], store=False)
    assert response.output_text == "thanks"
    messages = fake_upstream.requests[-1]["messages"]
    # The Codex-style call joins the answer before it, as one model turn's calls do.
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "tool", "user"]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "web_search", "arguments": '{"query": "parley"}'}
    assert messages[2] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": first.output_text.removeprefix("Results: "),
    }
    assert messages[3]["content"] == first.output_text
    assert messages[3]["tool_calls"][0]["function"] == {"name": "web_search", "arguments": '{"query": "x"}'}
    assert messages[4] == {
        "role": "tool",
        "tool_call_id": "ws_codex",
        "content": "The results of this call were not kept.",
    }


def test_without_a_backend_the_request_succeeds_and_the_tool_is_not_offered(
    upstream: ParleyProcess, fake_upstream: FakeUpstream
) -> None:
    client = upstream.client()
    for stream in (False, True):
        response = create(client, stream, model="fake/fake-echo", input="hello", tools=[{"type": "web_search"}])
        assert response.status == "completed" and response.output_text == "hello"
        assert "tools" not in fake_upstream.requests[-1]
        assert response.tools[0].type == "web_search"
    # Said once in the server's log, not per request.
    time.sleep(0.2)
    said = [line for line in upstream.output if "no search backend is configured" in line]
    assert len(said) == 1, said


# The commercial backend


@pytest.fixture(scope="module")
def brave(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, search_server: SearchServer
) -> Iterator[ParleyProcess]:
    workdir = tmp_path_factory.mktemp("brave")
    server = _start(
        workdir,
        fake_upstream,
        f"sqlite:///{workdir / 'p.db'}",
        {
            "backend": "brave",
            "base_url": f"{search_server.base_url}/res/v1",
            # The key comes from the environment, so it is in no file either.
            "api_key": "${BRAVE_TEST_KEY}",
            # Pages only from these names, and not on this machine (the backend itself, configured, is exempt).
            "allowed_hosts": ["LocalHost", "127.0.0.1"],
            "allow_loopback": False,
        },
        env={"BRAVE_TEST_KEY": BRAVE_KEY},
    )
    yield server
    server.stop()


def test_brave_backend(brave: ParleyProcess, search_server: SearchServer, fake_upstream: FakeUpstream) -> None:
    tool = {"type": "web_search", "user_location": {"type": "approximate", "country": "fr", "city": "Lyon"}}
    client = brave.client()
    response = client.responses.create(model=SCRIPT, input='web_search {"query": "parley"}', tools=[tool])
    call = response.output[0]
    assert call.status == "completed"
    # Brave's markup of the query's words is gone from what the model reads.
    assert call.results[0] == {
        "title": "Parley: an OpenAI-compatible API server",
        "url": "https://parley.example.org/",
        "text": "Parley serves OpenAI's Responses API over any chat-completions model.",
    }
    asked = search_server.searches[-1]
    assert asked["path"] == "/res/v1/web/search"
    assert asked["params"] == {"q": "parley", "count": "10", "country": "FR"}
    assert asked["headers"]["x-subscription-token"] == BRAVE_KEY and asked["headers"]["x-loc-city"] == "Lyon"
    # The key goes to the backend only: not to the model, the caller, or the log.
    with brave.http() as http:
        stored = http.get(f"/v1/responses/{response.id}").text
    assert BRAVE_KEY not in stored and BRAVE_KEY not in json.dumps(fake_upstream.requests[-2:])
    assert BRAVE_KEY not in "".join(brave.output)


def test_host_rules(brave: ParleyProcess, search_server: SearchServer) -> None:
    port = search_server.port
    refused = {
        "http://example.com/": "the host 'example.com' is not among the allowed hosts",
        f"http://localhost:{port}/pages/parley": "the host 'localhost' is on this machine",
        search_server.page("parley"): "the host '127.0.0.1' is on this machine",
    }
    script = " & ".join(f'open_page {{"url": "{url}"}}' for url in refused)
    read_before = len(search_server.pages_read)
    response = brave.client().responses.create(model=SCRIPT, input=script, tools=[WEB_SEARCH])
    for call, reason in zip(response.output[:-1], refused.values(), strict=True):
        assert call.status == "failed" and reason in call.error, (call.action.url, call.error)
    assert search_server.pages_read[read_before:] == []


def test_brave_backend_that_refuses_the_key(
    tmp_path: Path, fake_upstream: FakeUpstream, search_server: SearchServer
) -> None:
    server = _start(
        tmp_path,
        fake_upstream,
        f"sqlite:///{tmp_path / 'p.db'}",
        {"backend": "brave", "base_url": f"{search_server.base_url}/res/v1", "api_key": "wrong-key"},
    )
    try:
        response = server.client().responses.create(
            model=SCRIPT, input='web_search {"query": "parley"}', tools=[WEB_SEARCH]
        )
    finally:
        server.stop()
    call = response.output[0]
    assert (
        call.status == "failed"
        and call.error == "The search service answered HTTP 401 (the subscription token was refused)."
    )
    assert "wrong-key" not in "".join(server.output)


def test_a_backend_needs_its_url_or_key(tmp_path: Path) -> None:
    for web_search, problem in (
        ({"backend": "searxng"}, "tools.web_search.base_url: required when backend is 'searxng'"),
        ({"backend": "brave"}, "tools.web_search.api_key: required when backend is 'brave'"),
        ({"backend": "bing", "base_url": "http://x"}, "tools.web_search.backend: "),
    ):
        server = ParleyProcess(tmp_path / "server", {"tools": {"web_search": web_search}})
        with pytest.raises(RuntimeError) as raised:
            server.start(timeout=30)
        assert problem in str(raised.value), str(raised.value)


def test_a_tool_choice_of_the_web_search_type_forces_a_search_first(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    other = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    response = client.responses.create(
        model=SCRIPT,
        input='web_search {"query": "parley"}',
        tools=[other, {"type": "web_search_preview"}],
        tool_choice={"type": "web_search_preview"},
    )
    assert response.output[0].type == "web_search_call"
    first, second = fake_upstream.requests[-2:]
    # The first call is shown the web search's tools alone, and must call one; after it, the model decides.
    assert (offered(first), first["tool_choice"]) == (["web_search", "open_page", "find_in_page"], "required")
    assert (offered(second), second["tool_choice"]) == (["lookup", "web_search", "open_page", "find_in_page"], "auto")
    assert response.tool_choice.type == "web_search_preview"  # type: ignore[union-attr]


def test_allowed_tools_match_the_web_search_by_type(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    other = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    client.responses.create(
        model=SCRIPT,
        input='web_search {"query": "parley"}',
        tools=[other, {"type": "web_search", "external_web_access": False}],
        tool_choice={"type": "allowed_tools", "mode": "auto", "tools": [{"type": "web_search"}]},
    )
    assert offered(fake_upstream.requests[-1]) == ["web_search"]


def test_a_search_named_apart_keeps_its_name_in_later_turns(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    # The caller's own function has the name: the search is offered as web_search_2, in every turn.
    own = {"type": "function", "name": "web_search", "parameters": {"type": "object"}}
    tools = [own, {"type": "web_search", "external_web_access": False}]
    first = client.responses.create(model=SCRIPT, input='web_search_2 {"query": "parley"}', tools=tools)
    assert first.output[0].type == "web_search_call"
    client.responses.create(model="echo", input="and then?", tools=tools, previous_response_id=first.id)
    assert offered(fake_upstream.requests[-1]) == ["web_search", "web_search_2"]
    calls = [m for m in fake_upstream.requests[-1]["messages"] if m.get("tool_calls")]
    assert calls[0]["tool_calls"][0]["function"]["name"] == "web_search_2"
