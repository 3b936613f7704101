"""`/v1/files` with its bytes in S3-compatible object storage (`files.s3`), against moto's S3 server on loopback.

The blob store is the database's neighbour, not its part: these run on
SQLite only (tests/test_files.py runs the API on both databases). What is in
the bucket is read with boto3 behind Parley's back: an upload that fails
leaves no object and no unfinished multipart upload; a deleted file's object
goes too.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

BUCKET = "parley-files"
PREFIX = "uploads/"
PART_BYTES = 5 * 1024 * 1024
MAX_BYTES = 3 * PART_BYTES
CREDENTIALS = {"access_key_id": "moto-access-key", "secret_access_key": "moto-secret-key"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["access_key_id"],
        aws_secret_access_key=CREDENTIALS["secret_access_key"],
    )
    client.create_bucket(Bucket=BUCKET)
    return client


def s3_config(fake_upstream: FakeUpstream, s3_endpoint: str, workdir: Path) -> dict[str, Any]:
    config = upstream_config(fake_upstream)
    config["storage"] = {"url": f"sqlite:///{workdir / 'parley.db'}"}
    config["files"] = {
        "max_bytes": MAX_BYTES,
        # One sweep, at start: moto reports every multipart upload as started in 2010, so a later sweep would
        # take an upload in progress for one a stopped server left.
        "expiry_sweep_seconds": 3600,
        "s3": {
            "bucket": BUCKET,
            "prefix": PREFIX,
            "endpoint_url": s3_endpoint,
            "region": "us-east-1",
            "part_bytes": PART_BYTES,
            **CREDENTIALS,
        },
    }
    return config


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, s3_endpoint: str, bucket: Any
) -> Iterator[ParleyProcess]:
    workdir = tmp_path_factory.mktemp("files-s3")
    with ParleyProcess(workdir / "server", s3_config(fake_upstream, s3_endpoint, workdir)) as parley:
        yield parley


def objects(bucket: Any) -> set[str]:
    return {item["Key"] for item in bucket.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def unfinished_uploads(bucket: Any) -> list[Any]:
    return list(bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))


def binary(size: int) -> bytes:
    return bytes((index * 7919 + index // 256) % 256 for index in range(size))


@pytest.mark.parametrize(
    "size", [0, 1000, PART_BYTES, 2 * PART_BYTES + 12345], ids=["empty", "small", "one-part", "parts"]
)
def test_a_file_round_trips_through_the_bucket(client: openai.OpenAI, bucket: Any, size: int) -> None:
    data = binary(size)
    created = client.files.create(file=("data.bin", data), purpose="user_data")
    assert created.bytes == size
    assert client.files.content(created.id).content == data
    stored = bucket.get_object(Bucket=BUCKET, Key=PREFIX + created.id)["Body"].read()
    assert stored == data
    assert not unfinished_uploads(bucket)


def test_delete_removes_the_object(client: openai.OpenAI, bucket: Any) -> None:
    created = client.files.create(file=("gone.txt", b"soon gone"), purpose="assistants")
    assert PREFIX + created.id in objects(bucket)
    client.files.delete(created.id)
    assert PREFIX + created.id not in objects(bucket)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)


def test_a_file_over_the_limit_leaves_no_object_and_no_unfinished_upload(
    client: openai.OpenAI, bucket: Any, server: ParleyProcess
) -> None:
    before = objects(bucket)
    # Past two whole parts before the limit is passed: a multipart upload was under way, and is aborted.
    with pytest.raises(openai.APIStatusError) as raised:
        client.files.create(file=("big.bin", binary(MAX_BYTES + 1)), purpose="user_data")
    assert raised.value.status_code == 413
    deadline = time.monotonic() + 10
    while unfinished_uploads(bucket) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not unfinished_uploads(bucket)
    assert objects(bucket) == before
    # Nothing was written to the data directory instead.
    assert not Path(server.workdir / "data" / "files").exists()


def test_a_bad_field_after_the_file_leaves_no_object(server: ParleyProcess, bucket: Any) -> None:
    import httpx

    before = objects(bucket)
    # The file part first, then an expiry OpenAI refuses: the bytes were stored before the field was read.
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
        + binary(PART_BYTES + 10)
        + b'\r\n--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data'
        + b'\r\n--xyz\r\nContent-Disposition: form-data; name="expires_after[anchor]"\r\n\r\ncreated_at'
        + b'\r\n--xyz\r\nContent-Disposition: form-data; name="expires_after[seconds]"\r\n\r\n5\r\n--xyz--\r\n'
    )
    answer = httpx.post(
        f"{server.base_url}/v1/files",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        timeout=60,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "expires_after.seconds"
    assert objects(bucket) == before
    assert not unfinished_uploads(bucket)


def test_an_unfinished_multipart_upload_is_aborted_by_the_sweep(
    bucket: Any, server: ParleyProcess, fake_upstream: FakeUpstream, s3_endpoint: str, tmp_path: Path
) -> None:
    # As a server killed mid-upload leaves it: parts sent, never completed nor aborted. (moto says every
    # upload started in 2010: this shows that an old one goes; tests/test_files.py shows a fresh one stays.)
    started = bucket.create_multipart_upload(Bucket=BUCKET, Key=PREFIX + "file-killed")
    bucket.upload_part(
        Bucket=BUCKET, Key=PREFIX + "file-killed", UploadId=started["UploadId"], PartNumber=1, Body=b"part"
    )
    # Another prefix's upload is not Parley's.
    other = bucket.create_multipart_upload(Bucket=BUCKET, Key="elsewhere/object")
    assert len(unfinished_uploads(bucket)) == 2
    # A server's first sweep runs as it starts.
    restarted = ParleyProcess(tmp_path / "server", s3_config(fake_upstream, s3_endpoint, tmp_path))
    restarted.start()
    try:
        deadline = time.monotonic() + 10
        while len(unfinished_uploads(bucket)) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        restarted.stop()
    assert [upload["Key"] for upload in unfinished_uploads(bucket)] == ["elsewhere/object"]
    bucket.abort_multipart_upload(Bucket=BUCKET, Key="elsewhere/object", UploadId=other["UploadId"])
