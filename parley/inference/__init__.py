"""Inference providers: one interface, over OpenAI-compatible upstreams and llama.cpp."""

from parley.inference.base import ModelInfo, Provider
from parley.inference.collect import Completion, collect
from parley.inference.registry import ModelRegistry, ResolvedModel
from parley.inference.types import ChatChunk, ChatRequest, ToolCallDelta, Usage

__all__ = [
    "ChatChunk",
    "ChatRequest",
    "Completion",
    "ModelInfo",
    "ModelRegistry",
    "Provider",
    "ResolvedModel",
    "ToolCallDelta",
    "Usage",
    "collect",
]
