"""Which fields a request may carry, as the installed `openai` package declares them.

Parley's request models name only what Parley reads; which other names a body
may hold follows the package's TypedDicts (`ResponseCreateParams`,
`FunctionToolParam`, ...), so that a field OpenAI adds, once the package has
it, never breaks a client, while a name in no version of the API is still
`Unknown parameter`, as OpenAI answers.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails


def keys_of(*typed_dicts: Any) -> frozenset[str]:
    """Every key the TypedDicts declare, required or not (their bases' included)."""
    keys: set[str] = set()
    for typed_dict in typed_dicts:
        keys |= typed_dict.__required_keys__ | typed_dict.__optional_keys__
    return frozenset(keys)


class PackageFields(BaseModel):
    """A model whose known names are `known`: those it does not declare are kept as sent (and echoed);
    any other name is refused."""

    model_config = ConfigDict(extra="allow")
    known: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [name for name in data if name not in cls.known]
            if unknown:
                # As pydantic's own `extra_forbidden`, so that the error names the field's place.
                errors = [InitErrorDetails(type="extra_forbidden", loc=(name,), input=data[name]) for name in unknown]
                raise ValidationError.from_exception_data(cls.__name__, errors)
        return data
