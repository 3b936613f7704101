"""Model ids: `provider/model`, or an alias from the configuration."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from parley.config import (
    InferenceSettings,
    LocalEmbeddingsProviderConfig,
    LocalProviderConfig,
    OpenAIProviderConfig,
)
from parley.errors import ModelNotFoundError, UpstreamError
from parley.inference.base import Provider

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class ModelEntry:
    id: str
    provider: str
    created: int
    owned_by: str


@dataclass(slots=True, frozen=True)
class ResolvedModel:
    provider: Provider
    name: str  # the provider's own name for the model


class ModelRegistry:
    def __init__(self, providers: dict[str, Provider], aliases: dict[str, str]) -> None:
        self.providers = providers
        self.aliases = aliases

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> ModelRegistry:
        providers: dict[str, Provider] = {}
        for name, config in settings.providers.items():
            if isinstance(config, OpenAIProviderConfig):
                from parley.inference.openai_compat import OpenAICompatibleProvider

                providers[name] = OpenAICompatibleProvider(name, config)
            elif isinstance(config, LocalProviderConfig):
                from parley.inference.local import LocalProvider

                providers[name] = LocalProvider(name, config)
            elif isinstance(config, LocalEmbeddingsProviderConfig):
                from parley.inference.embeddings import LocalEmbeddingsProvider

                providers[name] = LocalEmbeddingsProvider(name, config)
        if settings.recording.mode != "live":
            from parley.inference.recording import RecordingProvider, RecordingStore

            assert settings.recording.dir is not None  # the settings require it unless live
            store = RecordingStore(settings.recording.dir)
            providers = {name: RecordingProvider(p, settings.recording, store) for name, p in providers.items()}
        return cls(providers, dict(settings.aliases))

    def resolve(self, model: str) -> ResolvedModel:
        canonical = self.aliases.get(model, model)
        provider_name, sep, name = canonical.partition("/")
        provider = self.providers.get(provider_name)
        if not sep or not name or provider is None or not provider.serves(name):
            raise ModelNotFoundError(model)
        return ResolvedModel(provider, name)

    async def list_models(self) -> list[ModelEntry]:
        """Every model of every provider, then the aliases; a provider that cannot list is skipped."""
        names = list(self.providers)
        listings = await asyncio.gather(*(self.providers[n].list_models() for n in names), return_exceptions=True)
        entries: list[ModelEntry] = []
        for name, listing in zip(names, listings, strict=True):
            if isinstance(listing, UpstreamError):
                log.warning("cannot list the models of provider %r: %s", name, listing.message)
                continue
            if isinstance(listing, BaseException):
                raise listing
            entries.extend(ModelEntry(f"{name}/{m.id}", name, m.created, m.owned_by) for m in listing)
        by_id = {entry.id: entry for entry in entries}
        for alias, target in self.aliases.items():
            if target in by_id and alias not in by_id:
                entries.append(ModelEntry(alias, by_id[target].provider, by_id[target].created, by_id[target].owned_by))
        return entries

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.providers.values()))

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.providers.values()), return_exceptions=True)
