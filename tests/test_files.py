"""`/v1/files` (issue 14): upload, list, retrieve, read back and delete, with openai-python, on both databases.

A Parley of this module's own per database, with keys for two owners (alice
and bob), a small `files.max_bytes` so that the limit is cheap to pass, and a
quick expiry sweep. Where the bytes live is checked by looking in the blob
directory (`data_dir/files`): an upload that fails, a deleted file and an
expired one leave nothing there.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream
from tests.support.calls import status_error
from tests.support.own_server import own_database, owner_client, owners_auth, run_sql

ALICE = "sk-alice-files-0123456789abcdef"
BOB = "sk-bob-files-0123456789abcdef00"
MAX_BYTES = 256 * 1024
SWEEP_SECONDS = 0.5

# A database of this module's own: a server on another module's would sweep these files' rows too.
database_url = own_database("files")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, database_url: str
) -> Iterator[ParleyProcess]:
    config = upstream_config(fake_upstream)
    config["storage"] = {"url": database_url}
    config["auth"] = owners_auth(alice=ALICE, bob=BOB)
    config["files"] = {"max_bytes": MAX_BYTES, "expiry_sweep_seconds": SWEEP_SECONDS}
    parley = ParleyProcess(tmp_path_factory.mktemp("files"), config)
    parley.start()
    yield parley
    parley.stop()


alice = owner_client("alice", ALICE)
bob = owner_client("bob", BOB)


def blobs(server: ParleyProcess) -> set[str]:
    """Every name in the blob directory, partial uploads' included."""
    directory = server.workdir / "data" / "files"
    return set(os.listdir(directory)) if directory.exists() else set()


def binary(size: int) -> bytes:
    """Bytes of every value, NUL and CR LF included, in no repeating pattern a parser might rely on."""
    return bytes((index * 7919 + index // 256) % 256 for index in range(size))


# Upload, retrieve, content ---------------------------------------------------------------------


def test_a_binary_file_round_trips_and_its_object_is_openais(alice: openai.OpenAI, server: ParleyProcess) -> None:
    data = binary(100_000) + b"\r\n--boundary-like\r\n" + bytes(range(256))
    before = int(time.time())
    created = alice.files.create(file=("data.bin", data), purpose="user_data")
    assert created.id.startswith("file-")
    assert before <= created.created_at <= time.time()
    assert created.model_dump() == {
        "id": created.id,
        "object": "file",
        "bytes": len(data),
        "created_at": created.created_at,
        "expires_at": None,
        "filename": "data.bin",
        "purpose": "user_data",
        "status": "processed",
        "status_details": None,
    }
    assert alice.files.retrieve(created.id) == created
    content = alice.files.content(created.id)
    assert content.content == data
    assert content.response.headers["content-type"] == "application/octet-stream"
    # The bytes live in the blob directory under the file's id, whole.
    assert (server.workdir / "data" / "files" / created.id).read_bytes() == data


def test_an_empty_file_is_stored_and_read_back_empty(alice: openai.OpenAI) -> None:
    created = alice.files.create(file=("empty.txt", b""), purpose="assistants")
    assert created.bytes == 0
    assert alice.files.content(created.id).content == b""


def test_a_file_of_exactly_the_limit_is_taken(alice: openai.OpenAI) -> None:
    data = binary(MAX_BYTES)
    created = alice.files.create(file=("max.bin", data), purpose="vision")
    assert created.bytes == MAX_BYTES
    assert alice.files.content(created.id).content == data


def test_the_async_client_uploads_and_reads_too(server: ParleyProcess) -> None:
    async def run() -> tuple[bytes, int]:
        client = server.async_client(api_key=ALICE)
        created = await client.files.create(file=("async.txt", b"from the async client"), purpose="assistants")
        content = await client.files.content(created.id)
        return content.content, created.bytes

    assert asyncio.run(run()) == (b"from the async client", 21)


# List and pagination ---------------------------------------------------------------------------


def test_list_pages_by_after_limit_and_order_and_the_client_pages_on_its_own(
    alice: openai.OpenAI, bob: openai.OpenAI
) -> None:
    # Bob's files are listed for nobody else; purpose "evals" keeps these apart from the other tests'.
    ids = [bob.files.create(file=(f"{n}.jsonl", b"{}\n"), purpose="evals").id for n in range(5)]
    newest_first = list(reversed(ids))

    first = bob.files.list(purpose="evals", limit=2)
    assert [file.id for file in first.data] == newest_first[:2]
    assert first.has_more is True
    # openai-python's auto-paging follows `after` with the last id of each page.
    assert [file.id for file in bob.files.list(purpose="evals", limit=2)] == newest_first
    assert [file.id for file in bob.files.list(purpose="evals", limit=2, order="asc")] == ids
    after = bob.files.list(purpose="evals", after=ids[1], order="asc")
    assert [file.id for file in after.data] == ids[2:]
    assert after.has_more is False
    # The default page is OpenAI's 10,000: everything at once.
    assert [file.id for file in bob.files.list(purpose="evals").data] == newest_first
    assert not [file for file in alice.files.list(purpose="evals")]


def test_the_purpose_filter_lists_only_that_purpose(bob: openai.OpenAI) -> None:
    batch = bob.files.create(file=("batch.jsonl", b"{}\n"), purpose="batch")
    tune = bob.files.create(file=("tune.jsonl", b"{}\n"), purpose="fine-tune")
    assert [file.id for file in bob.files.list(purpose="batch")] == [batch.id]
    assert [file.id for file in bob.files.list(purpose="fine-tune")] == [tune.id]
    everything = [file.id for file in bob.files.list()]
    assert batch.id in everything and tune.id in everything


def test_a_list_limit_out_of_bounds_or_an_unknown_cursor_is_a_400(bob: openai.OpenAI) -> None:
    assert status_error(lambda: bob.files.list(limit=0)).status_code == 400
    assert status_error(lambda: bob.files.list(limit=10_001)).status_code == 400
    error = status_error(lambda: bob.files.list(after="file-nothing"))
    assert error.status_code == 400
    assert isinstance(error.body, dict) and error.body["param"] == "after"


# Delete ----------------------------------------------------------------------------------------


def test_delete_removes_the_row_and_the_bytes(alice: openai.OpenAI, server: ParleyProcess) -> None:
    created = alice.files.create(file=("gone.txt", b"soon gone"), purpose="assistants")
    assert created.id in blobs(server)
    deleted = alice.files.delete(created.id)
    assert deleted.model_dump() == {"id": created.id, "object": "file", "deleted": True}
    assert created.id not in blobs(server)
    for call in (
        lambda: alice.files.retrieve(created.id),
        lambda: alice.files.content(created.id),
        lambda: alice.files.delete(created.id),
    ):
        error = status_error(call)
        assert error.status_code == 404
        assert error.body == {
            "message": f"No such File object: {created.id}",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }
    assert created.id not in [file.id for file in alice.files.list()]


# Owners ----------------------------------------------------------------------------------------


def test_another_owner_finds_none_of_a_file(alice: openai.OpenAI, bob: openai.OpenAI, server: ParleyProcess) -> None:
    mine = alice.files.create(file=("alice.txt", b"alice's"), purpose="user_data")
    for call in (
        lambda: bob.files.retrieve(mine.id),
        lambda: bob.files.content(mine.id),
        lambda: bob.files.delete(mine.id),
    ):
        assert status_error(call).status_code == 404
    assert mine.id not in [file.id for file in bob.files.list()]
    # Alice's id is no cursor in Bob's list: the same 400 as an id nobody has.
    assert status_error(lambda: bob.files.list(after=mine.id)).status_code == 400
    # Bob's delete did nothing.
    assert alice.files.content(mine.id).content == b"alice's"
    assert mine.id in blobs(server)


# Limits and failed uploads ---------------------------------------------------------------------


def test_a_file_over_the_limit_is_a_413_and_leaves_nothing(alice: openai.OpenAI, server: ParleyProcess) -> None:
    before, listed = blobs(server), [file.id for file in alice.files.list()]
    error = status_error(lambda: alice.files.create(file=("big.bin", binary(MAX_BYTES + 1)), purpose="user_data"))
    assert error.status_code == 413
    assert error.body == {
        "message": f"File is too large: this server accepts files of at most {MAX_BYTES} bytes "
        "(files.max_bytes in its configuration).",
        "type": "invalid_request_error",
        "param": "file",
        "code": "request_too_large",
    }
    assert blobs(server) == before
    assert [file.id for file in alice.files.list()] == listed


def test_a_body_far_over_the_limit_is_a_413_from_its_length_alone(server: ParleyProcess) -> None:
    before = blobs(server)
    with socket.create_connection(_address(server)) as connection:
        connection.sendall(
            f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ALICE}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {100 * MAX_BYTES}\r\n\r\n".encode()
        )
        connection.settimeout(10)
        answer = ""
        while not answer.endswith("}}"):
            answer += connection.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413")
    assert "files.max_bytes" in answer
    assert blobs(server) == before


def test_an_upload_cut_off_mid_stream_leaves_nothing(alice: openai.OpenAI, server: ParleyProcess) -> None:
    before, listed = blobs(server), [file.id for file in alice.files.list()]
    head = (
        b'--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="cut.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    sent = binary(150_000)
    with socket.create_connection(_address(server)) as connection:
        connection.sendall(
            f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ALICE}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {MAX_BYTES}\r\n\r\n".encode()
            + head
            + sent
        )
        # The partial blob exists while the body comes in: the bytes are streamed to it, not held.
        deadline = time.monotonic() + 10
        while not blobs(server) - before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any(name.endswith(".partial") for name in blobs(server) - before)
    # The client has gone, its upload unfinished.
    deadline = time.monotonic() + 10
    while blobs(server) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert blobs(server) == before
    assert [file.id for file in alice.files.list()] == listed
    # A client that leaves is expected: no traceback for it in the log.
    assert "Traceback" not in "".join(server.output)


def _address(server: ParleyProcess) -> tuple[str, int]:
    url = httpx.URL(server.base_url)
    assert url.host and url.port
    return url.host, url.port


# Bad forms -------------------------------------------------------------------------------------


def test_a_bad_purpose_or_expiry_is_a_400_naming_it_and_leaves_nothing(
    alice: openai.OpenAI, server: ParleyProcess
) -> None:
    before = blobs(server)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"purpose": "nonsense"}, "purpose"),
        ({"purpose": "user_data", "expires_after": {"anchor": "created_at", "seconds": 60}}, "expires_after.seconds"),
        (
            {"purpose": "user_data", "expires_after": {"anchor": "last_active_at", "seconds": 3600}},
            "expires_after.anchor",
        ),
    ]
    for arguments, param in cases:
        error = status_error(lambda arguments=arguments: alice.files.create(file=("x.txt", b"x"), **arguments))
        assert error.status_code == 400
        assert isinstance(error.body, dict) and error.body["param"] == param
    assert blobs(server) == before


def test_an_upload_without_a_file_or_purpose_is_a_400(server: ParleyProcess) -> None:
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ALICE}"}) as client:
        no_file = client.post("/v1/files", data={"purpose": "user_data"}, files={"other": ("a", b"a")})
        assert no_file.status_code == 400
        assert no_file.json()["error"]["param"] == "file"
        no_purpose = client.post("/v1/files", files={"file": ("a.txt", b"a")})
        assert no_purpose.status_code == 400
        assert no_purpose.json()["error"]["param"] == "purpose"


def test_an_upload_as_json_is_a_415_and_from_a_web_page_a_403(server: ParleyProcess) -> None:
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ALICE}"}) as client:
        as_json = client.post("/v1/files", json={"purpose": "user_data"})
        assert as_json.status_code == 415
        assert as_json.json()["error"]["code"] == "unsupported_content_type"
        # A page of any origin may post a multipart form without asking first; Parley allows no origin.
        from_page = client.post(
            "/v1/files",
            data={"purpose": "user_data"},
            files={"file": ("a.txt", b"a")},
            headers={"Origin": "http://evil.example"},
        )
        assert from_page.status_code == 403
        assert from_page.json()["error"]["code"] == "origin_not_allowed"
        # Other routes still take JSON only.
        form = client.post("/v1/responses", data={"model": "x"})
        assert form.status_code == 415


# Expiry ----------------------------------------------------------------------------------------


def test_expires_after_sets_expires_at_and_batch_files_expire_in_30_days(alice: openai.OpenAI) -> None:
    hour = alice.files.create(
        file=("hour.txt", b"an hour"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert hour.expires_at == hour.created_at + 3600
    assert alice.files.retrieve(hour.id).expires_at == hour.expires_at
    batch = alice.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    assert batch.expires_at == batch.created_at + 30 * 24 * 3600


def test_an_expired_file_is_gone_at_once_and_its_bytes_soon_after(
    alice: openai.OpenAI, server: ParleyProcess, database_url: str
) -> None:
    from parley.store.tables import files

    created = alice.files.create(
        file=("brief.txt", b"short-lived"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    kept = alice.files.create(file=("kept.txt", b"kept"), purpose="user_data")
    # An hour is OpenAI's shortest expiry: the row is moved to its end behind Parley's back.
    run_sql(database_url, sa.update(files).where(files.c.id == created.id).values(expires_at=int(time.time()) - 1))
    assert status_error(lambda: alice.files.retrieve(created.id)).status_code == 404
    assert status_error(lambda: alice.files.content(created.id)).status_code == 404
    assert created.id not in [file.id for file in alice.files.list()]
    deadline = time.monotonic() + 10 * SWEEP_SECONDS + 5
    while created.id in blobs(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert created.id not in blobs(server)
    assert kept.id in blobs(server)
    assert alice.files.content(kept.id).content == b"kept"


def test_the_blob_directory_is_under_data_dir(server: ParleyProcess) -> None:
    assert Path(server.workdir / "data" / "files").is_dir()


def test_a_partial_upload_a_stopped_server_left_is_removed_once_stale(server: ParleyProcess) -> None:
    directory = server.workdir / "data" / "files"
    stale, fresh = directory / ".file-stale0.partial", directory / ".file-fresh0.partial"
    stale.write_bytes(b"left by a server killed mid-upload")
    fresh.write_bytes(b"an upload under way")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    deadline = time.monotonic() + 10 * SWEEP_SECONDS + 5
    while stale.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stale.exists()
    # Written within files.stale_upload_seconds (an hour): it may be an upload in progress.
    assert fresh.exists()
    fresh.unlink()
