"""Vector stores' background ingestion (issue 14), with openai-python against real Parleys, on both databases.

- Each accepted kind of file is read, chunked and embedded by the embedded all-MiniLM-L6-v2; each kind of
  broken file ends `failed` with OpenAI's `last_error`.
- What happens while a file is being ingested: a server killed then started again on the same database, a
  second server taking over from one that died, a cancelled batch, a file taken out, stores taking turns.
  There Parley's embedding model is an upstream of the test's own (`EmbeddingsUpstream`, an OpenAI-compatible
  `/v1/embeddings`): the upstream model is what a test may fake, and this one can hold its answers until the
  test lets them go, so that "mid-ingestion" is a state the test is sure of, not a race it hopes to win.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa

from tests.conftest import ParleyProcess
from tests.support.calls import error_of
from tests.support.own_server import own_database_url, run_sql
from tests.test_vector_stores import embeddings_config, upload, wait_until
from tests.test_vectors_parsing import make_docx, make_pdf, make_pptx


class EmbeddingsUpstream:
    """An OpenAI-compatible `/v1/embeddings`: 8-dimensional unit vectors from each text's hash.

    `calls` lists the inputs of each request, in the order they came. While `hold()` is on, answers wait until
    `release()`. An input holding `FAIL-EMBEDDING` is answered with a 500.
    """

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                with upstream._lock:
                    upstream.calls.append(texts)
                upstream._open.wait(60)
                if any("FAIL-EMBEDDING" in text for text in texts):
                    self._answer(500, {"error": {"message": "the model fell over", "type": "server_error"}})
                    return
                data = [{"object": "embedding", "index": i, "embedding": vector(text)} for i, text in enumerate(texts)]
                self._answer(200, {"object": "list", "data": data, "model": body["model"], "usage": {}})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                raw = json.dumps(payload).encode()
                with contextlib.suppress(OSError):  # the server that asked may have been killed meanwhile
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def forget(self) -> None:
        """Starts a new record of calls (each test reads its own)."""
        with self._lock:
            self.calls.clear()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def asked_for(self, fragment: str) -> int:
        """How many requests had an input holding `fragment`."""
        with self._lock:
            return sum(any(fragment in text for text in texts) for texts in self.calls)

    def first_inputs(self) -> list[str]:
        with self._lock:
            return [texts[0] for texts in self.calls]

    def close(self) -> None:
        self._open.set()
        self._server.shutdown()


def vector(text: str) -> list[float]:
    values = struct.unpack("8h", hashlib.sha256(text.encode()).digest()[:16])
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


@pytest.fixture(scope="module")
def upstream() -> Iterator[EmbeddingsUpstream]:
    server = EmbeddingsUpstream()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A new database for each test: its servers are killed and started again on it."""
    return own_database_url(request, tmp_path_factory, "ingestion")


class Servers:
    """Parleys on one database and one data directory (so one blob store), as replicas would share them."""

    def __init__(self, workdir: Path, database_url: str, upstream: EmbeddingsUpstream) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.upstream = upstream
        self.started: list[ParleyProcess] = []

    def start(self, **vector_stores: Any) -> ParleyProcess:
        config: dict[str, Any] = {
            "inference": {
                "providers": {"test": {"type": "openai", "base_url": self.upstream.base_url, "models": ["embed"]}}
            },
            "storage": {"url": self.database_url},
            "vector_stores": {
                "embedding_model": "test/embed",
                "lease_seconds": 4,
                "poll_seconds": 0.2,
                "embed_batch_size": 1,
                **vector_stores,
            },
        }
        server = ParleyProcess(self.workdir, config)
        server.start()
        self.started.append(server)
        return server

    def held_file(self, client: openai.OpenAI, filename: str, data: bytes, marker: str) -> tuple[str, str]:
        """A new store and a file added to it whose ingestion is under way, held at the embedding model (which
        has been asked for `marker`, a word of `data`): the store's id and the file's."""
        store = client.vector_stores.create()
        self.upstream.hold()
        file_id = upload(client, filename, data)
        client.vector_stores.files.create(vector_store_id=store.id, file_id=file_id)
        wait_until(lambda: self.upstream.asked_for(marker))
        return store.id, file_id

    def stop(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def servers(tmp_path: Path, database_url: str, upstream: EmbeddingsUpstream) -> Iterator[Servers]:
    upstream.forget()
    started = Servers(tmp_path / "parley", database_url, upstream)
    yield started
    upstream.release()
    started.stop()


def chunk_rows(database_url: str, vector_store_id: str) -> int:
    statement = sa.text("SELECT count(*) FROM vector_store_chunks WHERE vector_store_id = :id").bindparams(
        id=vector_store_id
    )
    return int(run_sql(database_url, statement)[0][0])


def attempts(database_url: str, vector_store_id: str, file_id: str) -> int:
    from parley.store.tables import vector_store_files as files

    statement = sa.select(files.c.attempts).where(
        files.c.vector_store_id == vector_store_id, files.c.file_id == file_id
    )
    return int(run_sql(database_url, statement)[0][0])


# Each kind of file, and broken ones (the embedded model) -------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyProcess]:
    config = embeddings_config()
    config["vector_stores"] = {"poll_seconds": 0.2}
    server = ParleyProcess(tmp_path_factory.mktemp("ingestion-local"), config)
    server.start()
    yield server
    server.stop()


KINDS = [
    ("notes.txt", b"The tide tables live in the blue binder.", "tide tables live in the blue binder"),
    ("guide.md", b"# Guide\n\nThe **harbour** opens at dawn.", "opens at dawn"),
    (
        "page.html",
        b"<html><body><h1>Ferries</h1><p>Ferries leave hourly.</p><script>x()</script></body></html>",
        "Ferries leave hourly.",
    ),
    ("data.json", b'{"ferry": "hourly", "fare": 4}', '"ferry": "hourly"'),
    ("tool.py", b"def fare():\n    return 4  # ferry fare in euros\n", "ferry fare in euros"),
    (
        "paper.pdf",
        make_pdf(["Lighthouses guide ships at night.", None, "Page three."]),
        "Lighthouses guide ships at night.",
    ),
    ("memo.docx", make_docx(["The pier closes in storms."]), "The pier closes in storms."),
    ("deck.pptx", make_pptx([["Slide about buoys"]]), "Slide about buoys"),
]


@pytest.mark.parametrize(("filename", "data", "expected"), KINDS, ids=[kind[0] for kind in KINDS])
def test_each_accepted_kind_of_file_is_ingested_as_its_text(
    local: ParleyProcess, filename: str, data: bytes, expected: str
) -> None:
    client = local.client()
    store = client.vector_stores.create()
    done = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=(filename, data))
    assert (done.status, done.last_error) == ("completed", None)
    text = " ".join(part.text or "" for part in client.vector_stores.files.content(done.id, vector_store_id=store.id))
    assert expected in text
    if filename.endswith(".html"):
        assert "<" not in text and "x()" not in text


BROKEN = [
    ("setup.exe", b"MZ\x90\x00\x03\x00\x00\x00", "unsupported_file"),
    ("legacy.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "unsupported_file"),
    ("empty.txt", b"", "invalid_file"),
    ("blank.md", b"  \n\t\n  ", "invalid_file"),
    ("garbage.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", "invalid_file"),
    ("cut.pdf", make_pdf(["A page that is cut off."])[:150], "invalid_file"),
    ("scan.pdf", make_pdf([None, None]), "invalid_file"),
    ("bad.json", b'{"unterminated": ', "invalid_file"),
    ("noise.txt", bytes(range(256)) * 8, "invalid_file"),
    ("broken.docx", b"PK\x03\x04 not a zip", "invalid_file"),
]


@pytest.mark.parametrize(("filename", "data", "code"), BROKEN, ids=[kind[0] for kind in BROKEN])
def test_a_broken_file_fails_with_openais_last_error(
    local: ParleyProcess, filename: str, data: bytes, code: str
) -> None:
    client = local.client()
    store = client.vector_stores.create()
    done = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=(filename, data))
    assert done.status == "failed"
    assert done.last_error is not None
    assert done.last_error.code == code
    assert done.last_error.message
    assert done.usage_bytes == 0
    assert not list(client.vector_stores.files.content(done.id, vector_store_id=store.id))
    counts = client.vector_stores.retrieve(store.id).file_counts
    assert (counts.failed, counts.completed, counts.in_progress) == (1, 0, 0)


# While a file is ingested (an upstream embedding model that answers when told) ---------------------------


def test_an_embedding_model_that_fails_fails_the_file_with_server_error(servers: Servers) -> None:
    client = servers.start().client()
    store = client.vector_stores.create()
    done = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("fails.txt", b"This text holds FAIL-EMBEDDING, which the model cannot bear.")
    )
    assert done.status == "failed"
    assert done.last_error is not None and done.last_error.code == "server_error"
    assert "embedding model failed" in done.last_error.message


def test_a_file_in_progress_shows_in_the_counts_and_tells_clients_when_to_poll(servers: Servers) -> None:
    client = servers.start().client()
    store_id, file_id = servers.held_file(
        client, "slow.txt", b"Held at the embedding model: progress-marker.", "progress-marker"
    )
    raw = client.vector_stores.files.with_raw_response.retrieve(file_id, vector_store_id=store_id)
    assert raw.parse().status == "in_progress"
    assert raw.headers["openai-poll-after-ms"] == "250"
    held = client.vector_stores.with_raw_response.retrieve(store_id)
    assert (held.parse().status, held.parse().file_counts.in_progress) == ("in_progress", 1)
    assert "openai-poll-after-ms" in held.headers
    servers.upstream.release()
    done = client.vector_stores.files.poll(file_id, vector_store_id=store_id, max_wait_seconds=30)
    assert done.status == "completed"
    after = client.vector_stores.with_raw_response.retrieve(store_id)
    assert after.parse().status == "completed"
    assert "openai-poll-after-ms" not in after.headers


def test_a_server_killed_mid_ingestion_is_resumed_by_the_next_one(servers: Servers) -> None:
    first = servers.start()
    client = first.client()
    store_id, file_id = servers.held_file(
        client, "resumed.txt", b"Ingested across a crash: resume-marker.", "resume-marker"
    )
    first.kill()
    servers.upstream.release()

    client = servers.start().client()
    done = client.vector_stores.files.poll(file_id, vector_store_id=store_id, max_wait_seconds=30)
    assert (done.status, done.last_error) == ("completed", None)
    # The second server read the file again: a second call for its text, and a second claim.
    assert servers.upstream.asked_for("resume-marker") == 2
    assert attempts(servers.database_url, store_id, file_id) == 2
    assert [part.text for part in client.vector_stores.files.content(file_id, vector_store_id=store_id)] == [
        "Ingested across a crash: resume-marker."
    ]


def test_a_file_whose_ingestion_keeps_being_cut_off_fails_rather_than_stays_in_progress(servers: Servers) -> None:
    first = servers.start(max_attempts=1)
    client = first.client()
    store_id, file_id = servers.held_file(
        client, "cursed.txt", b"Every server that reads me dies: cursed-marker.", "cursed-marker"
    )
    first.kill()

    client = servers.start(max_attempts=1).client()
    done = client.vector_stores.files.poll(file_id, vector_store_id=store_id, max_wait_seconds=30)
    assert done.status == "failed"
    assert done.last_error is not None and done.last_error.code == "server_error"
    assert "interrupted" in done.last_error.message
    assert servers.upstream.asked_for("cursed-marker") == 1


def test_a_server_stopped_in_order_gives_its_files_back_at_once(servers: Servers) -> None:
    # A lease far longer than the test: only a claim given back lets the next server start at once.
    first = servers.start(lease_seconds=600)
    client = first.client()
    store_id, file_id = servers.held_file(
        client, "handover.txt", b"Handed over at a clean stop: handover-marker.", "handover-marker"
    )
    first.stop()
    servers.upstream.release()

    client = servers.start(lease_seconds=600).client()
    done = client.vector_stores.files.poll(file_id, vector_store_id=store_id, max_wait_seconds=20)
    assert done.status == "completed"
    # A clean stop does not count against the file.
    assert attempts(servers.database_url, store_id, file_id) == 1


def test_a_replica_takes_over_the_files_of_one_that_died(servers: Servers) -> None:
    first = servers.start()
    client = first.client()
    store_id, file_id = servers.held_file(
        client, "replicas.txt", b"Two servers, one database: replica-marker.", "replica-marker"
    )
    second = servers.start()
    # The second server leaves the claimed file alone while the first one's lease holds.
    time.sleep(1)
    assert servers.upstream.asked_for("replica-marker") == 1
    first.kill()
    servers.upstream.release()

    client = second.client()
    done = client.vector_stores.files.poll(file_id, vector_store_id=store_id, max_wait_seconds=30)
    assert done.status == "completed"
    assert servers.upstream.asked_for("replica-marker") == 2


def test_cancelling_a_batch_stops_its_files_and_leaves_no_chunks(servers: Servers) -> None:
    client = servers.start(ingest_workers=1).client()
    store = client.vector_stores.create()
    ids = [upload(client, f"c{n}.txt", f"Cancelled file number {n}: cancel-marker-{n}.".encode()) for n in range(3)]
    servers.upstream.hold()
    batch = client.vector_stores.file_batches.create(store.id, file_ids=ids)
    wait_until(lambda: servers.upstream.asked_for("cancel-marker-0"))

    cancelled = client.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)
    assert cancelled.status == "cancelled"
    assert cancelled.file_counts.model_dump() == {
        "in_progress": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 3,
        "total": 3,
    }
    servers.upstream.release()
    # The file that was being embedded ends where it was, cancelled, and the others are never read.
    time.sleep(1.5)
    assert [f.status for f in client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id)] == [
        "cancelled"
    ] * 3
    assert servers.upstream.asked_for("cancel-marker-1") == servers.upstream.asked_for("cancel-marker-2") == 0
    assert chunk_rows(servers.database_url, store.id) == 0
    assert client.vector_stores.retrieve(store.id).file_counts.cancelled == 3
    status, _ = error_of(lambda: client.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id))
    assert status == 400


def test_a_file_taken_out_mid_ingestion_leaves_no_chunks(servers: Servers) -> None:
    client = servers.start().client()
    store_id, file_id = servers.held_file(client, "out.txt", b"Taken out while embedded: out-marker.", "out-marker")
    client.vector_stores.files.delete(file_id, vector_store_id=store_id)
    servers.upstream.release()
    time.sleep(1.5)
    assert chunk_rows(servers.database_url, store_id) == 0
    assert client.vector_stores.retrieve(store_id).file_counts.total == 0


def test_stores_take_turns_so_one_store_does_not_hold_up_another(servers: Servers) -> None:
    client = servers.start(ingest_workers=1).client()
    big, small = client.vector_stores.create(name="big"), client.vector_stores.create(name="small")
    ids = [upload(client, f"big{n}.txt", f"turn-big-{n}".encode()) for n in range(3)]
    servers.upstream.hold()
    client.vector_stores.file_batches.create(big.id, file_ids=ids)
    wait_until(lambda: servers.upstream.asked_for("turn-big-0"))
    client.vector_stores.files.create(vector_store_id=small.id, file_id=upload(client, "small.txt", b"turn-small"))
    servers.upstream.release()
    wait_until(lambda: client.vector_stores.retrieve(big.id).status == "completed")
    wait_until(lambda: client.vector_stores.retrieve(small.id).status == "completed")
    # The small store's file goes second, not after the big store's whole batch.
    order = [text for text in servers.upstream.first_inputs() if text.startswith("turn-")]
    assert order == ["turn-big-0", "turn-small", "turn-big-1", "turn-big-2"]


def test_the_async_client_sees_ingestion_end(servers: Servers) -> None:
    server = servers.start()

    async def run() -> str:
        client = server.async_client()
        store = await client.vector_stores.create()
        done = await client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=("a.md", b"# async"))
        return done.status

    assert asyncio.run(run()) == "completed"


def test_a_store_keeps_the_embedding_model_it_was_made_with(servers: Servers) -> None:
    client = servers.start().client()
    store = client.vector_stores.create()
    done = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=("m.txt", b"model-marker"))
    assert done.status == "completed"
    from parley.store.tables import vector_stores

    row = run_sql(
        servers.database_url,
        sa.select(vector_stores.c.embedding_model, vector_stores.c.embedding_dimensions).where(
            vector_stores.c.id == store.id
        ),
    )[0]
    assert tuple(row) == ("test/embed", 8)


def test_a_store_whose_embedding_model_is_gone_fails_its_files(servers: Servers, database_url: str) -> None:
    client = servers.start().client()
    store = client.vector_stores.create()
    from parley.store.tables import vector_stores

    run_sql(
        database_url,
        sa.update(vector_stores).where(vector_stores.c.id == store.id).values(embedding_model="gone/model"),
    )
    done = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=("g.txt", b"no model"))
    assert done.status == "failed"
    assert done.last_error is not None and done.last_error.code == "server_error"
    assert "gone/model" in done.last_error.message


def test_ingestion_is_logged(servers: Servers) -> None:
    server = servers.start()
    client = server.client()
    store = client.vector_stores.create()
    client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=("logged.exe", b"MZ"))
    wait_until(lambda: any("failed (unsupported_file)" in line for line in server.output), timeout=10)
    line = next(line for line in server.output if "failed (unsupported_file)" in line)
    assert store.id in line and "WARNING" in line


def test_a_server_whose_embedding_model_is_not_configured_refuses_new_stores_clearly(servers: Servers) -> None:
    server = servers.start(embedding_model="missing/model")
    status, body = error_of(lambda: server.client().vector_stores.create())
    assert (status, body["code"]) == (400, "embedding_model_not_available")
    assert "vector_stores.embedding_model" in body["message"]
    assert any("'missing/model' is not a configured model" in line for line in server.output)
