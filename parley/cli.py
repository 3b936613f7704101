"""The `parley` command."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from parley import __version__
from parley.config import OWNER_PATTERN, OWNER_RULE, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from parley.store import Database, KeyStore

T = TypeVar("T")

_CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="PARLEY_CONFIG",
    help="YAML configuration file (default: none, or $PARLEY_CONFIG).",
)


def _load(config_file: Path | None) -> Settings:
    try:
        return load_settings(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Parley: an OpenAI-compatible agentic API server."""


@main.command()
@_CONFIG_OPTION
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default 8321).")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="Processes serving on the one port (default 1, or server.workers); they share the database.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"], case_sensitive=False),
    help="Logging level (default info).",
)
def serve(
    config_file: Path | None, host: str | None, port: int | None, workers: int | None, log_level: str | None
) -> None:
    """Start the API server.

    With no configuration it serves the embedded model, smollm2-135m, on
    http://127.0.0.1:8321.
    """
    import uvicorn

    settings = _load(config_file)
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    if workers is not None:
        settings.server.workers = workers
    if log_level is not None:
        settings.logging.level = log_level.lower()  # type: ignore[assignment]
    _refuse_to_expose_without_keys(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.server.workers > 1:
        _serve_workers(settings)
        return
    app = _WorkerApp(settings)()
    config = uvicorn.Config(app, **_server_options(settings))

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                _settle_heap()
                _print_banner(settings, list(self.servers[0].sockets) if self.servers else [])

    server = Server(config)
    server.run()
    if server.started is False:
        sys.exit(1)


def _server_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.server.host,
        "port": settings.server.port,
        "log_level": settings.logging.level,
        "access_log": settings.logging.level == "debug",
        "lifespan": "on",
        # A WebSocket message (parley.api.websocket) a little past the body limit is answered with an error
        # message that says so; only one past this is closed by the server (code 1009, message too big).
        "ws_max_size": settings.server.max_body_bytes + _WS_MESSAGE_MARGIN,
    }


# What a WebSocket message may exceed server.max_body_bytes by and still be read (and refused in an error message).
_WS_MESSAGE_MARGIN = 1024 * 1024


class _WorkerApp:
    """Makes the application of one serving process, from the settings; sent to each process of `--workers`."""

    def __init__(self, settings: Settings, *, worker: bool = False) -> None:
        self.settings = settings
        self.worker = worker

    def __call__(self) -> Any:
        from parley.app import create_app

        settings = self.settings
        logging.basicConfig(level=settings.logging.level.upper(), format="%(levelname)s %(name)s: %(message)s")
        try:
            _load_local_models(settings)
        except click.ClickException as exc:
            if not self.worker:
                raise
            logging.getLogger("parley").error("%s", exc.message)
            sys.exit(_STARTUP_FAILURE)
        # A worker's heap settles once it has started (see `_settle_heap`); the single process's, in `serve`.
        return create_app(settings, on_started=_settle_heap if self.worker else None)


# What a worker that cannot start exits with: its supervisor then stops rather than start it again (uvicorn's).
_STARTUP_FAILURE = 3


def _serve_workers(settings: Settings) -> None:
    """`--workers N`: N processes accept on one socket, bound here; this process watches them (uvicorn's
    supervisor: a worker that dies is started again, SIGHUP replaces them one by one, each new one serving
    before the old one stops). The database's schema and the server's key are made here first, once."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from parley.engine import encrypted_reasoning

    encrypted_reasoning.load_key(settings.engine.reasoning_key, settings.data_dir)
    _with_database(settings, lambda database: database.migrate())
    logging.basicConfig(level=settings.logging.level.upper(), format="%(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        _WorkerApp(settings, worker=True), factory=True, workers=settings.server.workers, **_server_options(settings)
    )
    try:
        socket = config.bind_socket()
    except SystemExit:
        sys.exit(1)

    class Supervisor(Multiprocess):
        started = False

        def init_processes(self) -> None:
            super().init_processes()
            # Ready when every worker is: each loads its models and starts its background worker first.
            for process in self.processes:
                if not process.wait_until_ready(_WORKER_START_SECONDS, self.should_exit):
                    self.should_exit.set()
                    return
            Supervisor.started = True
            _print_banner(settings, [socket], workers=len(self.processes))

    Supervisor(config, sockets=[socket]).run()
    if not Supervisor.started:
        sys.exit(1)


# How long `--workers` waits for each worker to start serving (a local model loads first).
_WORKER_START_SECONDS = 300.0


def _refuse_to_expose_without_keys(settings: Settings) -> None:
    """With no API keys, serving anywhere but on a loopback address would let anyone in: refuse, saying why.

    Unless the configuration says `auth: {disabled: true}` in so many words.
    """
    from parley.api.auth import is_loopback_host

    host = settings.server.host
    if settings.auth.disabled or settings.auth.keys or is_loopback_host(host):
        return
    if _with_keys(settings, lambda keys: keys.by_hash()):
        return  # revoked keys count: they keep authentication on (see parley.api.auth)
    raise click.ClickException(
        f"refusing to serve on {host}: there are no API keys, so anyone who can reach {host} could use this "
        "server and read and delete everything it stores. Make a key with `parley keys create --owner NAME` "
        "(or list keys in auth.keys), serve on 127.0.0.1, or, to serve with no authentication at all, set "
        "auth: {disabled: true} in the configuration."
    )


def _with_keys(settings: Settings, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    """`work(keys)` on the configured database's API keys, its schema brought up to date first."""
    from parley.store import KeyStore

    async def run(database: Database) -> T:
        await database.migrate()
        return await work(KeyStore(database))

    return _with_database(settings, run)


def _with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """`work(database)` on the configured database, opened for it and closed after."""
    from sqlalchemy.exc import SQLAlchemyError

    from parley.store import Database

    async def run() -> T:
        database = Database(settings.storage_url)
        try:
            return await work(database)
        finally:
            await database.close()

    try:
        return asyncio.run(run())
    except (OSError, ValueError, SQLAlchemyError) as exc:
        raise click.ClickException(f"cannot use the database {settings.storage_url}: {exc}") from exc


def _settle_heap() -> None:
    """Moves what start-up built (modules, schemas, models) out of the garbage collector's sight.

    It lives as long as the server. A collection of the oldest generation
    walks every object it holds: about 160,000 after start-up, an 80 ms pause
    of every stream on this machine. Frozen, they are skipped (and never freed).
    """
    gc.collect()
    gc.freeze()


def _load_local_models(settings: Settings) -> None:
    """Loads the local models, refusing to start with one that cannot load, as with a bad config file."""
    if settings.inference.recording.mode == "replay":
        return  # replay answers from the recordings and never loads the weights
    from parley.inference.local_loading import preload

    for name, provider in settings.inference.providers.items():
        if provider.type == "local":
            try:
                preload(name, provider)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from exc


def _print_banner(settings: Settings, sockets: list[Any], workers: int = 1) -> None:
    port = sockets[0].getsockname()[1] if sockets else settings.server.port
    processes = f" ({workers} worker processes)" if workers > 1 else ""
    click.echo(f"Parley {__version__} listening on http://{settings.server.host}:{port}{processes}")
    click.echo("Models:")
    for model_id, provider in _configured_models(settings):
        click.echo(f"  {model_id}  ({provider})")
    click.echo(f"Data: {settings.data_dir} (storage {settings.storage_url})", nl=True)
    sys.stdout.flush()


@main.command()
@_CONFIG_OPTION
def models(config_file: Path | None) -> None:
    """List the configured models and their providers."""
    settings = _load(config_file)
    for model_id, provider in _configured_models(settings):
        click.echo(f"{model_id}\t{provider}")


@main.command()
def version() -> None:
    """Print Parley's version."""
    click.echo(f"parley {__version__}")


def _configured_models(settings: Settings) -> list[tuple[str, str]]:
    """`(model id, provider description)` for each configured model and alias."""
    rows: list[tuple[str, str]] = []
    for name, provider in settings.inference.providers.items():
        if provider.type == "local":
            for model, model_config in provider.models.items():
                source = model_config.path or "embedded SmolLM2-135M-Instruct"
                rows.append((f"{name}/{model}", f"local llama.cpp, {source}"))
        elif provider.type == "local-embeddings":
            for model, embedding_config in provider.models.items():
                source = embedding_config.path or "embedded all-MiniLM-L6-v2"
                if embedding_config.kind == "static":
                    source = f"static, distilled from {source}"
                rows.append((f"{name}/{model}", f"local embeddings, {source}"))
        elif provider.models is None:
            rows.append((f"{name}/*", f"openai-compatible {provider.base_url}, models discovered from /models"))
        else:
            rows.extend((f"{name}/{model}", f"openai-compatible {provider.base_url}") for model in provider.models)
    for alias, target in settings.inference.aliases.items():
        rows.append((alias, f"alias of {target}"))
    return rows


@main.group()
def recordings() -> None:
    """Inspect the recorded model traffic that record/replay reads and writes."""


def _recordings_dir(directory: Path | None, config_file: Path | None) -> Path:
    """The directory named on the command line, else `inference.recording.dir` from the configuration."""
    if directory is not None:
        return directory
    configured = _load(config_file).inference.recording.dir
    if configured is None:
        raise click.UsageError("name a directory, or set inference.recording.dir in the configuration")
    return configured


@recordings.command("list")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@_CONFIG_OPTION
def recordings_list(directory: Path | None, config_file: Path | None) -> None:
    """One line per recording: file, test id, model, messages, streaming or not.

    DIRECTORY defaults to inference.recording.dir from the configuration.
    """
    from parley.inference.recording_text import read_all, summary

    directory = _recordings_dir(directory, config_file)
    if not directory.is_dir():
        raise click.ClickException(f"{directory} is not a directory")
    for item in read_all(directory):
        if isinstance(item, Exception):
            click.echo(f"{item.path.name}\tBROKEN: {item.problem}")
        else:
            click.echo(summary(item))


@recordings.command("show")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def recordings_show(file: Path) -> None:
    """Print a recording's conversation and its recorded reply as text."""
    from parley.inference.recording_files import RecordingFileError, read_recording
    from parley.inference.recording_text import show

    try:
        click.echo(show(read_recording(file)))
    except RecordingFileError as exc:
        raise click.ClickException(exc.message) from exc


@recordings.command("check")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@_CONFIG_OPTION
def recordings_check(directory: Path | None, config_file: Path | None) -> None:
    """Validate every recording file; report the broken ones and exit 1 if there are any.

    DIRECTORY defaults to inference.recording.dir from the configuration.
    """
    from parley.inference.recording_text import read_all

    directory = _recordings_dir(directory, config_file)
    if not directory.is_dir():
        raise click.ClickException(f"{directory} is not a directory")
    total = broken = 0
    for item in read_all(directory):
        total += 1
        if isinstance(item, Exception):
            broken += 1
            click.echo(f"BROKEN {item.path}: {item.problem}")
    click.echo(f"{total} recording(s) in {directory}: {total - broken} ok, {broken} broken")
    if broken:
        sys.exit(1)


@main.group()
def keys() -> None:
    """Make, list and revoke the API keys kept in the database.

    Once any key exists (revoked ones count), every request needs one:
    `Authorization: Bearer <key>`. Each key acts for its owner, who sees only
    what that owner's keys made; an admin key sees everything.
    """


def _owner(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not re.fullmatch(OWNER_PATTERN, value):
        raise click.BadParameter(f"must be {OWNER_RULE}")
    return value


def _time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@keys.command("create")
@click.option("--owner", required=True, callback=_owner, help="Whose key: what it makes is theirs.")
@click.option("--name", help="What the key is for, to tell it from the owner's others.")
@click.option("--admin", is_flag=True, help="Sees and may delete every owner's responses and conversations.")
@_CONFIG_OPTION
def keys_create(owner: str, name: str | None, admin: bool, config_file: Path | None) -> None:
    """Make a key and print its secret: the only time it is shown (only its hash is kept)."""
    settings = _load(config_file)
    key, secret = _with_keys(settings, lambda keys: keys.create(owner, name, admin))
    kind = "admin key" if admin else "key"
    # The secret alone on stdout, for `KEY=$(parley keys create ...)`; the rest is for the person.
    click.echo(f"Made {kind} {key.id} for {owner}. Keep its secret now: it is not shown again.", err=True)
    click.echo(secret)


@keys.command("list")
@_CONFIG_OPTION
def keys_list(config_file: Path | None) -> None:
    """List the keys in the database, without their secrets: id, owner, name, first characters, admin,
    made, revoked."""
    settings = _load(config_file)
    stored = _with_keys(settings, lambda keys: keys.list())
    click.echo("id\towner\tname\tkey\tadmin\tcreated\trevoked")
    for key in stored:
        admin = "admin" if key.admin else "-"
        click.echo(
            f"{key.id}\t{key.owner}\t{key.name or '-'}\t{key.prefix}...\t{admin}"
            f"\t{_time(key.created_at)}\t{_time(key.revoked_at)}"
        )
    if settings.auth.keys:
        click.echo(f"and {len(settings.auth.keys)} key(s) in the configuration (auth.keys)", err=True)


@keys.command("revoke")
@click.argument("key_id")
@_CONFIG_OPTION
def keys_revoke(key_id: str, config_file: Path | None) -> None:
    """Revoke a key: within a second, every server on the database refuses it."""
    settings = _load(config_file)
    key = _with_keys(settings, lambda keys: keys.revoke(key_id))
    if key is None:
        raise click.ClickException(f"there is no key {key_id} (`parley keys list` lists them)")
    click.echo(f"Revoked {key.id} ({key.owner}{', ' + key.name if key.name else ''}) at {_time(key.revoked_at)}.")
