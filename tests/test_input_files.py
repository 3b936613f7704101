"""Files in a request's input (issue 14): `input_file` by file_id, file_data and file_url, `input_image` by file_id,
and Chat Completions' `file` parts, over openai-python, on both databases.

What the model received is read from the scripted upstream's record of the requests it was sent
(`FakeUpstream.requests`): a file's text framed by its name, an image as a data URL. The files of a URL come
from an HTTP server of this module's own on loopback, which the outbound guard refuses unless allowed (the
tests' servers allow it; one server here does not).
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream
from tests.support.own_server import own_database, owner_client, owners_auth
from tests.test_vectors_parsing import make_pdf

ALICE = "sk-alice-input-files-0123456789ab"
BOB = "sk-bob-input-files-0123456789abcd"
ECHO = "fake/fake-echo"
EMBEDDED = "smollm2-135m"
# The smallest PNG: one transparent pixel.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
NOTES = "The launch code is 4217.\nThe meeting moved to Thursday.\n"
PDF = make_pdf(["Quarterly report", "Revenue grew 12 percent."])

# Servers


database_url = own_database("input-files")


def _config(fake: FakeUpstream, database_url: str) -> dict[str, Any]:
    config = upstream_config(fake)
    config["storage"] = {"url": database_url}
    config["inference"]["providers"]["local"] = {"type": "local", "models": {EMBEDDED: {}}}
    config["inference"]["aliases"][EMBEDDED] = f"local/{EMBEDDED}"
    config["auth"] = owners_auth(alice=ALICE, bob=BOB)
    return config


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, database_url: str
) -> Iterator[ParleyProcess]:
    """Parley with two owners' keys; its outbound guard allows loopback (the tests' default)."""
    parley = ParleyProcess(tmp_path_factory.mktemp("input-files"), _config(fake_upstream, database_url))
    parley.start()
    yield parley
    parley.stop()


alice = owner_client("alice", ALICE)
bob = owner_client("bob", BOB)


class _Files(BaseHTTPRequestHandler):
    """The files a URL may name: path -> (status, headers, body)."""

    routes: dict[str, tuple[int, dict[str, str], bytes]] = {
        "/docs/notes.txt": (200, {"Content-Type": "text/plain; charset=utf-8"}, NOTES.encode()),
        "/docs/report": (200, {"Content-Type": "application/pdf"}, PDF),
        "/docs/moved": (302, {"Location": "/docs/notes.txt"}, b""),
        "/docs/gone.pdf": (404, {"Content-Type": "text/plain"}, b"not here"),
        "/docs/huge.txt": (200, {"Content-Type": "text/plain", "Content-Length": str(60 * 1024 * 1024)}, b""),
        "/docs/photo.png": (200, {"Content-Type": "image/png"}, PNG),
    }

    def do_GET(self) -> None:
        status, headers, body = self.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def files_site() -> Iterator[str]:
    """An HTTP server on loopback with the files of `_Files`; its base URL."""
    site = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()
    site.server_close()


# Helpers


def upload(client: openai.OpenAI, name: str, data: bytes, purpose: str = "user_data") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose=purpose).id  # type: ignore[arg-type]


def asking(*parts: dict[str, Any], text: str = "What does it say?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "input_text", "text": text}, *parts]}]


def sent_user_content(fake: FakeUpstream) -> Any:
    """The content of the last user message of the last request the model was sent."""
    messages = fake.requests[-1]["messages"]
    return [message for message in messages if message["role"] == "user"][-1]["content"]


def message_of(error: openai.APIStatusError) -> str:
    """The error body's message (the exception's own says the status first)."""
    assert isinstance(error.body, dict)
    return str(error.body["message"])


def framed(name: str, text: str) -> str:
    return f'<file name="{name}">\n{text}\n</file>'


# input_file by file_id


def test_a_text_file_by_id_reaches_the_model_as_its_text_after_the_question(
    alice: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    file_id = upload(alice, "notes.txt", NOTES.encode())
    alice.responses.create(model=ECHO, input=asking({"type": "input_file", "file_id": file_id}))  # type: ignore[arg-type]
    assert sent_user_content(fake_upstream) == "What does it say?\n\n" + framed("notes.txt", NOTES.strip())


def test_a_pdf_by_id_reaches_the_model_as_its_pages_text(alice: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    file_id = upload(alice, "report.pdf", PDF)
    alice.responses.create(model=ECHO, input=asking({"type": "input_file", "file_id": file_id}))  # type: ignore[arg-type]
    content = sent_user_content(fake_upstream)
    assert content.startswith('What does it say?\n\n<file name="report.pdf">\nQuarterly report')
    assert "Revenue grew 12 percent." in content and content.endswith("\n</file>")


def test_the_part_s_filename_names_the_file_to_the_model(alice: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    file_id = upload(alice, "upload-1.txt", b"plain words")
    part = {"type": "input_file", "file_id": file_id, "filename": "minutes.txt"}
    alice.responses.create(model=ECHO, input=asking(part, text="Summarise:"))  # type: ignore[arg-type]
    assert sent_user_content(fake_upstream) == "Summarise:\n\n" + framed("minutes.txt", "plain words")


def test_a_file_between_texts_is_set_apart_from_both(alice: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    file_id = upload(alice, "a.md", b"# Title")
    content = [
        {"type": "input_text", "text": "Before."},
        {"type": "input_file", "file_id": file_id},
        {"type": "input_text", "text": "After."},
    ]
    alice.responses.create(model=ECHO, input=[{"role": "user", "content": content}])  # type: ignore[arg-type]
    assert sent_user_content(fake_upstream) == "Before.\n\n" + framed("a.md", "# Title") + "\n\nAfter."


def test_a_file_is_stored_and_listed_as_sent_not_as_its_text(alice: openai.OpenAI) -> None:
    file_id = upload(alice, "notes.txt", NOTES.encode())
    part = {"type": "input_file", "file_id": file_id}
    response = alice.responses.create(model=ECHO, input=asking(part))  # type: ignore[arg-type]
    (item,) = alice.responses.input_items.list(response.id).data
    assert item.to_dict(mode="json")["content"] == [
        {"type": "input_text", "text": "What does it say?"},
        {"type": "input_file", "file_id": file_id},
    ]


def test_a_later_turn_reads_the_file_again_and_one_deleted_since_is_a_note(
    alice: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    file_id = upload(alice, "notes.txt", NOTES.encode())
    first = alice.responses.create(model=ECHO, input=asking({"type": "input_file", "file_id": file_id}))  # type: ignore[arg-type]
    second = alice.responses.create(model=ECHO, input="And the day?", previous_response_id=first.id)
    assert fake_upstream.requests[-1]["messages"][0]["content"].endswith(framed("notes.txt", NOTES.strip()))

    alice.files.delete(file_id)
    alice.responses.create(model=ECHO, input="Again?", previous_response_id=second.id)
    earlier = fake_upstream.requests[-1]["messages"][0]["content"]
    assert "4217" not in earlier
    assert earlier == (
        f"What does it say?\n\n[The file '{file_id}' given here earlier can no longer be read "
        "(it no longer exists); its content is not shown.]"
    )


def test_a_file_in_a_conversation_is_read_in_each_turn(alice: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    file_id = upload(alice, "notes.txt", NOTES.encode())
    conversation = alice.conversations.create(items=asking({"type": "input_file", "file_id": file_id}))  # type: ignore[arg-type]
    alice.responses.create(model=ECHO, input="Which day?", conversation=conversation.id)
    assert fake_upstream.requests[-1]["messages"][0]["content"].endswith(framed("notes.txt", NOTES.strip()))
    items = alice.conversations.items.list(conversation.id, order="asc").data
    assert items[0].to_dict(mode="json")["content"][1] == {"type": "input_file", "file_id": file_id}


def test_an_unknown_file_id_is_a_404_naming_the_part(alice: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    sent = len(fake_upstream.requests)
    with pytest.raises(openai.NotFoundError) as raised:
        alice.responses.create(model=ECHO, input=asking({"type": "input_file", "file_id": "file-nosuchfile0123"}))  # type: ignore[arg-type]
    assert message_of(raised.value) == "No such File object: file-nosuchfile0123"
    assert raised.value.param == "input[0].content[1].file_id"
    assert len(fake_upstream.requests) == sent, "nothing was sent upstream"


def test_a_streamed_response_reads_its_file_and_an_unknown_one_is_a_404_before_any_event(
    alice: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    file_id = upload(alice, "notes.txt", NOTES.encode())
    events = list(
        alice.responses.create(model=ECHO, input=asking({"type": "input_file", "file_id": file_id}), stream=True)
    )  # type: ignore[arg-type]
    assert events[-1].type == "response.completed"
    assert sent_user_content(fake_upstream).endswith(framed("notes.txt", NOTES.strip()))
    with pytest.raises(openai.NotFoundError) as raised:
        alice.responses.create(
            model=ECHO, input=asking({"type": "input_file", "file_id": "file-nosuchfile0123"}), stream=True
        )  # type: ignore[arg-type]
    assert raised.value.param == "input[0].content[1].file_id"


def test_another_owner_s_file_is_a_file_that_does_not_exist(alice: openai.OpenAI, bob: openai.OpenAI) -> None:
    file_id = upload(alice, "notes.txt", NOTES.encode())
    for part in ({"type": "input_file", "file_id": file_id}, {"type": "input_image", "file_id": file_id}):
        with pytest.raises(openai.NotFoundError) as raised:
            bob.responses.create(model=ECHO, input=asking(part))  # type: ignore[arg-type]
        assert (message_of(raised.value), raised.value.param) == (
            f"No such File object: {file_id}",
            "input[0].content[1].file_id",
        )


def test_a_malformed_file_id_is_a_400(alice: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        alice.responses.create(model=ECHO, input=asking({"type": "input_file", "file_id": "abc"}))  # type: ignore[arg-type]
    assert (raised.value.param, raised.value.code) == ("input[0].content[1].file_id", "invalid_value")
    assert message_of(raised.value) == (
        "Invalid 'input[0].content[1].file_id': 'abc'. Expected an ID that begins with 'file'."
    )


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [("photo.png", PNG, "unsupported_file"), ("broken.pdf", b"%PDF-1.4\nnothing else", "invalid_file")],
    ids=["unsupported-type", "broken-pdf"],
)
def test_a_file_that_gives_no_text_is_a_400_saying_why(
    alice: openai.OpenAI, fake_upstream: FakeUpstream, name: str, data: bytes, code: str
) -> None:
    file_id = upload(alice, name, data)
    sent = len(fake_upstream.requests)
    with pytest.raises(openai.BadRequestError) as raised:
        alice.responses.create(model=ECHO, input=asking({"type": "input_file", "file_id": file_id}))  # type: ignore[arg-type]
    assert (raised.value.param, raised.value.code) == ("input[0].content[1].file_id", code)
    assert message_of(raised.value).startswith(
        f"Invalid value for 'input[0].content[1].file_id': the file '{file_id}' ({name}) cannot be read as text: "
    )
    assert len(fake_upstream.requests) == sent


def test_a_part_that_names_two_sources_is_a_400(alice: openai.OpenAI) -> None:
    part = {"type": "input_file", "file_id": "file-abc123", "file_url": "https://example.com/a.pdf"}
    with pytest.raises(openai.BadRequestError) as raised:
        alice.responses.create(model=ECHO, input=asking(part))  # type: ignore[arg-type]
    assert (raised.value.param, raised.value.code) == ("input[0].content[1].file_url", "invalid_value")


# input_file by file_data


def test_file_data_reaches_the_model_as_its_text(alice: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    data = "data:application/pdf;base64," + base64.b64encode(PDF).decode()
    part = {"type": "input_file", "file_data": data, "filename": "report.pdf"}
    response = alice.responses.create(model=ECHO, input=asking(part))  # type: ignore[arg-type]
    assert "Revenue grew 12 percent." in sent_user_content(fake_upstream)
    (item,) = alice.responses.input_items.list(response.id).data
    assert item.to_dict(mode="json")["content"][1] == part


def test_file_data_that_is_not_base64_is_a_400(alice: openai.OpenAI) -> None:
    part = {"type": "input_file", "file_data": "data:text/plain;base64,***", "filename": "a.txt"}
    with pytest.raises(openai.BadRequestError) as raised:
        alice.responses.create(model=ECHO, input=asking(part))  # type: ignore[arg-type]
    assert raised.value.param == "input[0].content[1].file_data"


# input_file by file_url


def test_a_file_url_is_fetched_and_its_text_reaches_the_model(
    alice: openai.OpenAI, fake_upstream: FakeUpstream, files_site: str
) -> None:
    url = f"{files_site}/docs/report"
    response = alice.responses.create(model=ECHO, input=asking({"type": "input_file", "file_url": url}))  # type: ignore[arg-type]
    content = sent_user_content(fake_upstream)
    # Named by the URL's last segment; read as a PDF by its content type.
    assert content.startswith('What does it say?\n\n<file name="report">\nQuarterly report')
    (item,) = alice.responses.input_items.list(response.id).data
    assert item.to_dict(mode="json")["content"][1] == {"type": "input_file", "file_url": url}


def test_a_file_url_that_redirects_is_followed(
    alice: openai.OpenAI, fake_upstream: FakeUpstream, files_site: str
) -> None:
    part = {"type": "input_file", "file_url": f"{files_site}/docs/moved"}
    alice.responses.create(model=ECHO, input=asking(part))  # type: ignore[arg-type]
    assert sent_user_content(fake_upstream).endswith(framed("notes.txt", NOTES.strip()))


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/docs/gone.pdf", "it answered HTTP 404"),
        ("/docs/huge.txt", "is larger than an input file may be (52,428,800 bytes)"),
        ("/docs/photo.png", "cannot be read as text"),
    ],
    ids=["not-found", "too-large", "not-text"],
)
def test_a_file_url_that_cannot_be_read_is_a_400_naming_it(
    alice: openai.OpenAI, fake_upstream: FakeUpstream, files_site: str, path: str, says: str
) -> None:
    sent = len(fake_upstream.requests)
    with pytest.raises(openai.BadRequestError) as raised:
        alice.responses.create(model=ECHO, input=asking({"type": "input_file", "file_url": files_site + path}))  # type: ignore[arg-type]
    assert raised.value.param == "input[0].content[1].file_url"
    assert says in raised.value.message and path in raised.value.message
    assert len(fake_upstream.requests) == sent


def test_a_file_url_that_is_not_http_is_a_400(alice: openai.OpenAI) -> None:
    part = {"type": "input_file", "file_url": "file:///etc/passwd"}
    with pytest.raises(openai.BadRequestError) as raised:
        alice.responses.create(model=ECHO, input=asking(part))  # type: ignore[arg-type]
    assert raised.value.param == "input[0].content[1].file_url"
    assert "only http and https URLs may be opened" in raised.value.message


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[ParleyProcess]:
    """Parley with the outbound guard's default rules: this machine may not be reached."""
    config = upstream_config(fake_upstream)
    config["outbound"] = {"allow_loopback": False}
    parley = ParleyProcess(tmp_path_factory.mktemp("input-files-guarded"), config)
    parley.start()
    yield parley
    parley.stop()


def test_the_outbound_guard_refuses_a_file_url_on_this_machine(
    guarded: ParleyProcess, fake_upstream: FakeUpstream, files_site: str
) -> None:
    sent = len(fake_upstream.requests)
    for url in (f"{files_site}/docs/notes.txt", files_site.replace("127.0.0.1", "localhost") + "/docs/notes.txt"):
        with pytest.raises(openai.BadRequestError) as raised:
            guarded.client().responses.create(model=ECHO, input=asking({"type": "input_file", "file_url": url}))  # type: ignore[arg-type]
        assert raised.value.param == "input[0].content[1].file_url"
        assert "may not be fetched" in raised.value.message and "outbound.allow_loopback" in raised.value.message
    assert len(fake_upstream.requests) == sent


# input_image by file_id


def test_an_image_by_id_reaches_the_model_as_a_data_url(alice: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    file_id = upload(alice, "pixel.png", PNG, purpose="vision")
    part = {"type": "input_image", "file_id": file_id, "detail": "low"}
    response = alice.responses.create(model=ECHO, input=asking(part, text="What is this?"))  # type: ignore[arg-type]
    assert sent_user_content(fake_upstream) == [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode(), "detail": "low"},
        },
    ]
    (item,) = alice.responses.input_items.list(response.id).data
    assert item.to_dict(mode="json")["content"][1] == part


def test_an_image_by_id_that_is_no_image_is_a_400(alice: openai.OpenAI) -> None:
    file_id = upload(alice, "notes.txt", NOTES.encode())
    with pytest.raises(openai.BadRequestError) as raised:
        alice.responses.create(model=ECHO, input=asking({"type": "input_image", "file_id": file_id}))  # type: ignore[arg-type]
    assert raised.value.param == "input[0].content[1].file_id"
    assert "is not an image in a supported format" in raised.value.message


# Chat Completions' file parts


def test_a_chat_file_part_by_id_reaches_the_model_as_its_text(
    alice: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    file_id = upload(alice, "report.pdf", PDF)
    alice.chat.completions.create(
        model=ECHO,
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "Summarise."}, {"type": "file", "file": {"file_id": file_id}}],
            }
        ],
    )
    content = sent_user_content(fake_upstream)
    assert content[0] == {"type": "text", "text": "Summarise."}
    assert content[1]["type"] == "text" and content[1]["text"].startswith('<file name="report.pdf">\nQuarterly')


def test_a_chat_file_part_with_file_data_reaches_the_model_as_its_text(
    alice: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    data = "data:text/plain;base64," + base64.b64encode(NOTES.encode()).decode()
    alice.chat.completions.create(
        model=ECHO,
        messages=[{"role": "user", "content": [{"type": "file", "file": {"file_data": data, "filename": "n.txt"}}]}],
    )
    assert sent_user_content(fake_upstream) == [{"type": "text", "text": framed("n.txt", NOTES.strip())}]


def test_a_chat_file_part_of_another_owner_is_a_404(alice: openai.OpenAI, bob: openai.OpenAI) -> None:
    file_id = upload(alice, "notes.txt", NOTES.encode())
    with pytest.raises(openai.NotFoundError) as raised:
        bob.chat.completions.create(
            model=ECHO, messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": file_id}}]}]
        )
    assert raised.value.param == "messages[0].content[0].file.file_id"


# A model that reads text only


def test_a_model_that_reads_text_only_reads_a_file_but_is_refused_an_image(
    alice: openai.OpenAI, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("what the model is sent does not depend on the database")
    file_id = upload(alice, "notes.txt", NOTES.encode())
    part = {"type": "input_file", "file_id": file_id}
    response = alice.responses.create(model=EMBEDDED, input=asking(part), max_output_tokens=16)  # type: ignore[arg-type]
    assert response.status in ("completed", "incomplete") and response.output_text

    image_id = upload(alice, "pixel.png", PNG, purpose="vision")
    with pytest.raises(openai.BadRequestError) as raised:
        alice.responses.create(model=EMBEDDED, input=asking({"type": "input_image", "file_id": image_id}))  # type: ignore[arg-type]
    assert (raised.value.param, raised.value.code) == ("input[0].content[1]", "unsupported_value")
