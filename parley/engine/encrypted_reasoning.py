"""Reasoning items' `encrypted_content`: their reasoning, encrypted and authenticated with the server's key.

Stateless callers (Codex, anyone with `store: false`) keep no response on the
server, so they ask for `include: ["reasoning.encrypted_content"]` and send the
reasoning items back as input on the next turn, often with the `content` left
out. The blob is what carries the reasoning there: `seal` makes it when a
reasoning item closes, and `unseal` turns it back into the item's parts when
the request is parsed, so that the model is sent its reasoning again.

The format is a Fernet token (`cryptography.fernet`: AES-128-CBC, then
HMAC-SHA256 over the version byte, the time, the IV and the ciphertext; in
URL-safe base64, `gAAAAA...` like OpenAI's) of the JSON object
`{"summary": [text, ...], "content": [text, ...]}`, the texts of the item's
`summary_text` and `reasoning_text` parts. Authenticated, because a blob comes
back from the caller: one that was cut, altered or made with another key is
refused (`invalid_encrypted_content`, a 400 naming its place) rather than
read as something the model never thought. Encrypted, because callers store
and pass these blobs around as opaque, as they do OpenAI's.

Compaction items (parley.engine.compaction) seal their summary with the same
key and format (`seal_payload`, `open_payload`), under a field of their own, so
that neither kind of blob passes for the other.

The key comes from `engine.reasoning_key`, or else is generated once and kept
in `data_dir/reasoning.key` (mode 0600), so blobs outlive a restart; servers
that read each other's blobs share the key. It is a secret: never logged or
echoed. One key serves the whole process; `create_app` installs it with
`use_key`, and until then a key of the process's own is used.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr

from parley.config import ConfigError, decode_key
from parley.errors import InvalidRequestError

log = logging.getLogger(__name__)

INCLUDE = "reasoning.encrypted_content"
KEY_FILE = "reasoning.key"


class InvalidEncryptedContentError(InvalidRequestError):
    """A blob that this server's key did not make, or that was changed since: OpenAI's 400."""

    code = "invalid_encrypted_content"

    def __init__(self, blob: str, param: str) -> None:
        # OpenAI names the blob by its ends only (`gAAA...DQ==`); a short one is shown whole, quoted.
        shown = f"{blob[:4]}...{blob[-4:]}" if len(blob) > 12 else repr(blob)
        super().__init__(
            f"The encrypted content {shown} could not be verified. "
            "Reason: Encrypted content could not be decrypted or parsed.",
            param=param,
        )


class ReasoningSeal:
    """Seals reasoning items into `encrypted_content` with one key, and opens what it sealed."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, item: dict[str, Any]) -> str:
        """The `encrypted_content` of a reasoning item: the texts of its summary and content parts."""
        payload = {
            "summary": [part["text"] for part in item.get("summary") or ()],
            "content": [part["text"] for part in item.get("content") or ()],
        }
        return self.seal_payload(payload)

    def seal_payload(self, payload: dict[str, Any]) -> str:
        """`payload` as JSON, encrypted and authenticated: any item's `encrypted_content`."""
        return self._fernet.encrypt(orjson.dumps(payload)).decode("ascii")

    def open_payload(self, blob: str, param: str) -> Any:
        """What `seal_payload` sealed in `blob`; a 400 naming `param` when this key did not make it, or it was
        changed since."""
        try:
            return orjson.loads(self._fernet.decrypt(blob))
        except (InvalidToken, ValueError) as exc:
            # A token of another key, or changed, is InvalidToken; ValueError is a blob that is not even ASCII.
            raise InvalidEncryptedContentError(blob, param) from exc

    def unseal(self, blob: str, param: str) -> dict[str, list[dict[str, Any]]]:
        """The `summary` and `content` parts sealed in `blob`; a 400 naming `param` when it is not one of ours."""
        payload = self.open_payload(blob, param)
        try:
            summary, content = list(payload["summary"]), list(payload["content"])
            if not all(isinstance(text, str) for text in (*summary, *content)):
                raise TypeError("a part's text is not a string")
        except (KeyError, TypeError, ValueError) as exc:
            # Made with this key, but not a reasoning item's (a compaction's, say), or of an older format.
            raise InvalidEncryptedContentError(blob, param) from exc
        return {
            "summary": [{"type": "summary_text", "text": text} for text in summary],
            "content": [{"type": "reasoning_text", "text": text} for text in content],
        }


_seal = ReasoningSeal(os.urandom(32))


def use_key(key: bytes) -> None:
    """Makes `key` the process's key for sealing and opening reasoning (at wiring, in `create_app`)."""
    global _seal
    _seal = ReasoningSeal(key)


def seal(item: dict[str, Any]) -> str:
    """A reasoning item's `encrypted_content`, with the process's key."""
    return _seal.seal(item)


def unseal(blob: str, param: str) -> dict[str, list[dict[str, Any]]]:
    """The parts sealed in `blob` with the process's key; InvalidEncryptedContentError naming `param` else."""
    return _seal.unseal(blob, param)


def seal_payload(payload: dict[str, Any]) -> str:
    """`payload` sealed with the process's key (another item's `encrypted_content`: a compaction's)."""
    return _seal.seal_payload(payload)


def open_payload(blob: str, param: str) -> Any:
    """What `seal_payload` sealed in `blob` with the process's key; InvalidEncryptedContentError naming `param`
    else."""
    return _seal.open_payload(blob, param)


def load_key(configured: SecretStr | None, data_dir: Path) -> bytes:
    """The configured key, else the one kept in `data_dir`, made there the first time.

    Two servers starting on one data directory at once agree on one key: each
    writes its own to a file of its own and links it into place, and the one
    that finds a key already there reads it. A directory where the key cannot be
    kept gets a key for this process only, with a warning: its blobs do not
    outlive it.
    """
    if configured is not None:
        return decode_key(configured.get_secret_value())
    path = data_dir / KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        return _create_key(path)
    except OSError as exc:
        log.warning(
            "cannot keep a reasoning key in %s (%s): reasoning items' encrypted_content will not outlive this "
            "server; set engine.reasoning_key",
            path,
            exc.strerror or exc,
        )
        return os.urandom(32)


def _read_key(path: Path) -> bytes:
    try:
        return decode_key(path.read_text())
    except ValueError as exc:
        # The message names the file, never what is in it.
        raise ConfigError(f"reasoning key file {path}: {exc}; delete it to have a new one made") from None


def _create_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = Fernet.generate_key()  # 32 random bytes, in URL-safe base64
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, text + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(draft, path)  # fails if another server's key got there first
    except FileExistsError:
        return _read_key(path)
    finally:
        draft.unlink()
    return decode_key(text.decode("ascii"))
