"""Notifications between the processes that share a SQLite file, which has no `LISTEN`/`NOTIFY` of its own.

Each process that listens binds a Unix datagram socket in a directory beside the file (`<file>-signals/`); the
notifications of a commit (`Database.write`) are sent to each socket there once it has committed, as PostgreSQL
sends a `NOTIFY` at its commit: a datagram holds as many as fit, a JSON array of [channel, payload] pairs.
Processes on one SQLite file are on one machine, so the directory reaches every one of them.

A notification is a wake-up, not a message to rely on: a process that starts or stops listening meanwhile, a
full socket buffer or a directory that cannot be made loses it, and whoever waits still looks for itself now and
then (`Wakeups`, the background worker). Without it, the turns and followers waiting on another process found out
only at their next look: a stream followed again through another process had its first event in 12 ms at p50,
most of it two looks 10 and 5 ms apart (bench/background.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

# A Unix socket's path is at most 107 bytes on Linux: a directory too deep for that gets no notifications.
_MAX_PATH = 107


class Signals:
    """The notifications of the processes on one SQLite file (see the module's docstring)."""

    def __init__(self, database: Path) -> None:
        self.directory = Path(f"{database}-signals")
        self._callbacks: dict[str, list[Callable[[str], object]]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._path: Path | None = None
        self._lock = asyncio.Lock()
        # Sent from the writer thread alone (`send`), so that a send never waits for the event loop.
        self._sender: socket.socket | None = None

    async def listen(self, channel: str, callback: Callable[[str], object]) -> Callable[[], Awaitable[None]] | None:
        """Calls `callback(payload)` on the event loop for each notification on `channel`; what stops it, or None
        when this process cannot hear any (its waiters look for themselves)."""
        async with self._lock:
            if self._transport is None and not await self._bind():
                return None
        callbacks = self._callbacks.setdefault(channel, [])
        callbacks.append(callback)

        async def stop() -> None:
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)

        return stop

    async def _bind(self) -> bool:
        path = self.directory / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
        if len(os.fsencode(path)) > _MAX_PATH:
            log.warning("%s is too deep for notifications between processes: they look for news instead", path)
            return False
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            receiver.bind(str(path))
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Heard(self._callbacks), sock=receiver
            )
        except OSError as exc:
            receiver.close()
            log.warning("cannot hear notifications between processes in %s (%s): they look instead", path, exc)
            return False
        self._transport, self._path = transport, path
        return True

    def send(self, notes: list[tuple[str, str]]) -> None:
        """Sends each (channel, payload) to every process listening on the file, this one included; never raises."""
        try:
            peers = [entry.path for entry in os.scandir(self.directory) if entry.name.endswith(".sock")]
        except OSError:
            return  # no process listens yet
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        datagrams = _datagrams(notes)
        for peer in peers:
            for datagram in datagrams:
                try:
                    self._sender.sendto(datagram, peer)
                except (ConnectionRefusedError, FileNotFoundError):
                    # A process that ended without taking its socket away.
                    with contextlib.suppress(OSError):
                        os.unlink(peer)
                    break
                except OSError:
                    break  # its buffer is full (it will look for itself), or it went meanwhile

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
            self._path = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None


class _Heard(asyncio.DatagramProtocol):
    def __init__(self, callbacks: dict[str, list[Callable[[str], object]]]) -> None:
        self._callbacks = callbacks

    def datagram_received(self, data: bytes, addr: object) -> None:
        try:
            notes = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        for channel, payload in notes if isinstance(notes, list) else ():
            for callback in list(self._callbacks.get(channel, ())):
                try:
                    callback(payload)
                except Exception:
                    log.exception("a listener on %s failed", channel)


# The most a datagram carries. A Unix datagram socket queues 10 datagrams (net.unix.max_dgram_qlen) for a process
# that has not read them yet, and drops the rest: a group of writes committed together (`Database._sqlite_write`)
# notified 300 rows, one datagram each, and the listener heard 12 of them. Packed, a group's notifications
# are one datagram.
_DATAGRAM_BYTES = 32 * 1024


def _datagrams(notes: list[tuple[str, str]]) -> list[bytes]:
    """`notes` as JSON arrays of [channel, payload], as few datagrams as hold them."""
    datagrams: list[bytes] = []
    batch: list[tuple[str, str]] = []
    size = 0
    for channel, payload in notes:
        note_size = len(channel) + len(payload) + 8
        if batch and size + note_size > _DATAGRAM_BYTES:
            datagrams.append(orjson.dumps(batch))
            batch, size = [], 0
        batch.append((channel, payload))
        size += note_size
    if batch:
        datagrams.append(orjson.dumps(batch))
    return datagrams
