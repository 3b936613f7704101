"""Attribute filters of a vector store search: OpenAI's `ComparisonFilter` and `CompoundFilter`, checked, and
tested against a store's files in memory (`FileAttributes`) or compiled to SQL over
`vector_store_files.attributes` (`compile_filter`, for a store of too many files to keep), with one meaning
on SQLite and PostgreSQL alike.

    {"type": "eq" | "ne" | "gt" | "gte" | "lt" | "lte" | "in" | "nin", "key": str, "value": ...}
    {"type": "and" | "or", "filters": [filter, ...]}

What a comparison means, for an attribute value (a string, a number or a boolean, as a file's attributes hold):

- `eq`, `ne`: equal in type and value (`"1"` is not `1`; `1` is `1.0`); `true` equals only `true`.
- `gt`, `gte`, `lt`, `lte`: a number against a number, a string against a string (by its UTF-8 bytes, the same on
  both databases, so ISO 8601 dates compare as dates); across types, or against a boolean, nothing matches.
- `in`, `nin`: the attribute equals one of the listed strings or numbers (or none of them).
- `ne` and `nin` are the negations of `eq` and `in`: a file without the key matches them, and matches no other.

A filter is checked whole before it runs (`check_filter`): a bad one is a 400 naming its place
(`filters.filters[1].type`). Its size is bounded, since each node becomes SQL: `MAX_FILTER_DEPTH` nested
compounds, `MAX_FILTER_NODES` filters in all, `MAX_IN_VALUES` values in one `in` or `nin`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa

from parley.errors import InvalidRequestError, missing_parameter

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
COMPOUNDS = ("and", "or")

# Compounds inside compounds: a person's filter nests two or three deep; each level is a level of SQL.
MAX_FILTER_DEPTH = 16
# Filters in all, compounds and comparisons: each is a condition every candidate file is tested against.
MAX_FILTER_NODES = 512
# Values of one `in` / `nin`: each is a bound parameter.
MAX_IN_VALUES = 1024

_ORDERED = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def check_filter(value: Any, param: str = "filters") -> dict[str, Any]:
    """The filter, checked and normalized (a comparison without `type` is `eq`, as OpenAI's schema defaults it).

    Raises InvalidRequestError naming the offending place under `param`.
    """
    nodes = [0]
    return _check(value, param, 0, nodes)


def _invalid(param: str, message: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(f"Invalid value for '{param}': {message}", param=param, code=code)


def _check(value: Any, param: str, depth: int, nodes: list[int]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _type_error(param, "an object", value)
    nodes[0] += 1
    if nodes[0] > MAX_FILTER_NODES:
        raise _invalid(param, f"a filter may hold at most {MAX_FILTER_NODES} filters in all.")
    kind = value.get("type", "eq" if "filters" not in value else None)
    if kind is None:
        raise missing_parameter(f"{param}.type")
    if kind in COMPOUNDS:
        return _check_compound(value, kind, param, depth, nodes)
    if kind in COMPARISONS:
        return _check_comparison(value, kind, param)
    expected = ", ".join(f"'{name}'" for name in (*COMPARISONS, *COMPOUNDS))
    raise _invalid(f"{param}.type", f"expected one of {expected}, but got {_show(kind)}.")


def _check_compound(value: dict[str, Any], kind: str, param: str, depth: int, nodes: list[int]) -> dict[str, Any]:
    _no_other_keys(value, ("type", "filters"), param)
    if depth >= MAX_FILTER_DEPTH:
        raise _invalid(param, f"compound filters may nest at most {MAX_FILTER_DEPTH} deep.")
    if "filters" not in value:
        raise missing_parameter(f"{param}.filters")
    children = value["filters"]
    if not isinstance(children, list):
        raise _type_error(f"{param}.filters", "an array", children)
    checked = [_check(child, f"{param}.filters[{i}]", depth + 1, nodes) for i, child in enumerate(children)]
    return {"type": kind, "filters": checked}


def _check_comparison(value: dict[str, Any], kind: str, param: str) -> dict[str, Any]:
    _no_other_keys(value, ("type", "key", "value"), param)
    for field in ("key", "value"):
        if field not in value:
            raise missing_parameter(f"{param}.{field}")
    key = value["key"]
    if not isinstance(key, str):
        raise _type_error(f"{param}.key", "a string", key)
    operand = value["value"]
    where = f"{param}.value"
    if kind in ("in", "nin"):
        if not isinstance(operand, list):
            raise _invalid(where, f"'{kind}' compares with an array of strings and numbers, not {_type_name(operand)}.")
        if len(operand) > MAX_IN_VALUES:
            raise _invalid(where, f"an array of '{kind}' may hold at most {MAX_IN_VALUES} values.")
        for i, item in enumerate(operand):
            if not _is_string_or_number(item):
                raise _invalid(f"{where}[{i}]", f"expected a string or a number, but got {_type_name(item)}.")
    elif kind in _ORDERED:
        if not _is_string_or_number(operand):
            raise _invalid(where, f"'{kind}' compares with a string or a number, not {_type_name(operand)}.")
    elif not (isinstance(operand, bool) or _is_string_or_number(operand)):
        raise _invalid(where, f"'{kind}' compares with a string, a number or a boolean, not {_type_name(operand)}.")
    return {"type": kind, "key": key, "value": _as_stored(operand)}


def _no_other_keys(value: dict[str, Any], allowed: tuple[str, ...], param: str) -> None:
    for name in value:
        if name not in allowed:
            raise InvalidRequestError(
                f"Unknown parameter: '{param}.{name}'.", param=f"{param}.{name}", code="unknown_parameter"
            )


def _is_string_or_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        return math.isfinite(_as_float(value))
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int))


_INT64 = (-(2**63), 2**63 - 1)


def _as_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _as_stored(value: Any) -> Any:
    """An integer past 64 bits as the float it is compared as: neither database binds it, nor does orjson."""
    if isinstance(value, list):
        return [_as_stored(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        return _as_float(value)
    return value


def _type_error(param: str, expected: str, value: Any) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 60 else text[:57] + "..."


# Compilation. Both compile a checked filter into a condition on one row's attributes column; a file's
# attributes are few (at most 16), and a filter is applied to the files of the searched stores, never to chunks.


def compile_filter(checked: dict[str, Any], attributes: Any, dialect: str) -> sa.ColumnElement[bool]:
    """The SQL condition that the attributes in column `attributes` pass the `checked` filter.

    `dialect` is `"sqlite"` (attributes as JSON text, read with json_each) or `"postgresql"` (jsonb).
    """
    compile_one = _sqlite_comparison if dialect == "sqlite" else _postgres_comparison
    return _compile(checked, attributes, compile_one)


def _compile(checked: dict[str, Any], attributes: Any, compile_one: Any) -> sa.ColumnElement[bool]:
    kind = checked["type"]
    if kind in COMPOUNDS:
        parts = [_compile(child, attributes, compile_one) for child in checked["filters"]]
        if kind == "and":
            return sa.and_(sa.true(), *parts)
        return sa.or_(sa.false(), *parts)
    if kind == "ne":
        return sa.not_(compile_one("eq", checked["key"], checked["value"], attributes))
    if kind == "nin":
        return sa.not_(compile_one("in", checked["key"], checked["value"], attributes))
    return compile_one(kind, checked["key"], checked["value"], attributes)


def _sqlite_comparison(kind: str, key: str, value: Any, attributes: Any) -> sa.ColumnElement[bool]:
    # json_each names each attribute by its exact key (any characters), and says its JSON type, which
    # json_extract alone would lose (true reads as 1). Its `value` is the SQL value: text, integer or real,
    # which SQLite compares numerically across integer and real.
    each = sa.func.json_each(attributes).table_valued("key", "value", "type").alias("attribute")
    condition: sa.ColumnElement[bool]
    if kind == "eq" and isinstance(value, bool):
        condition = each.c.type == ("true" if value else "false")
    elif kind == "eq":
        condition = sa.and_(_sqlite_type_is(each, value), each.c.value == sa.literal(value))
    elif kind == "in":
        strings = [v for v in value if isinstance(v, str)]
        numbers = [v for v in value if not isinstance(v, str)]
        options = []
        if strings:
            options.append(sa.and_(each.c.type == "text", each.c.value.in_(strings)))
        if numbers:
            options.append(sa.and_(each.c.type.in_(("integer", "real")), each.c.value.in_(numbers)))
        condition = sa.or_(sa.false(), *options)
    else:
        condition = sa.and_(_sqlite_type_is(each, value), each.c.value.op(_ORDERED[kind])(sa.literal(value)))
    return sa.exists(sa.select(sa.literal(1)).select_from(each).where(each.c.key == key, condition))


def _sqlite_type_is(each: Any, value: Any) -> sa.ColumnElement[bool]:
    if isinstance(value, str):
        return each.c.type == "text"
    return each.c.type.in_(("integer", "real"))


def _postgres_comparison(kind: str, key: str, value: Any, attributes: Any) -> sa.ColumnElement[bool]:
    # NULL (no such key, or no attributes) is false here, so that `ne` and `nin`, its negations, hold.
    return sa.func.coalesce(_postgres_test(kind, key, value, attributes), sa.false())


def _postgres_test(kind: str, key: str, value: Any, attributes: Any) -> Any:
    # jsonb compares by type and value (1 = 1.0, "1" <> 1); `<@` of a one-element array tests membership
    # with the same equality. Ordered comparisons are guarded by type, since jsonb also orders across types,
    # and strings compare in the "C" collation: by bytes, as SQLite compares them.
    member = attributes.op("->")(sa.literal(key))
    if kind == "eq":
        return member == sa.cast(sa.literal(orjson.dumps(value).decode()), attributes.type)
    if kind == "in":
        listed = sa.cast(sa.literal(orjson.dumps(value).decode()), attributes.type)
        return sa.func.jsonb_build_array(member).op("<@")(listed)
    operator = _ORDERED[kind]
    is_string = isinstance(value, str)
    # The CASE keeps each comparison to values of its type: PostgreSQL may test conditions in any order, and
    # a cast of a string to a number fails.
    typed = sa.func.jsonb_typeof(member) == ("string" if is_string else "number")
    text = attributes.op("->>", return_type=sa.Text)(sa.literal(key))
    if is_string:
        operand = sa.case((typed, text.collate("C")), else_=None)
        return operand.op(operator)(sa.literal(value, sa.Text))
    operand = sa.case((typed, sa.cast(text, sa.Numeric)), else_=None)
    return operand.op(operator)(sa.literal(value, sa.Numeric))


# In process. `FileAttributes` tests a checked filter against every file of a store at once, as compile_filter's
# SQL would: the search keeps a store's files in memory (parley.vectors.catalog), since the SQL reads and parses
# every file's attributes at each search (20 ms at 8,500 files on either database) where these columns take
# well under a millisecond. The two agree on every operator (tests/test_vectors_index.py runs both).

_MISSING, _STRING, _NUMBER, _BOOLEAN = 0, 1, 2, 3


class _Column:
    """One attribute of every file: its type code, and its values by type (None where of another type)."""

    __slots__ = ("kinds", "values")

    def __init__(self, values: list[Any]) -> None:
        kinds = np.zeros(len(values), dtype=np.int8)
        for i, value in enumerate(values):
            if isinstance(value, bool):
                kinds[i] = _BOOLEAN
            elif isinstance(value, str):
                kinds[i] = _STRING
            elif isinstance(value, (int, float)):
                kinds[i] = _NUMBER
        self.kinds = kinds
        self.values = np.empty(len(values), dtype=object)
        self.values[:] = values

    def of_type(self, kind: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """The rows holding a value of this type, and their values."""
        rows = np.flatnonzero(self.kinds == kind)
        return rows, self.values[rows]


class FileAttributes:
    """The attributes of a list of files (a dict or None each), by column, built as filters ask for them."""

    def __init__(self, attributes: list[dict[str, Any] | None]) -> None:
        self._rows = attributes
        self.size = len(attributes)
        self._columns: dict[str, _Column] = {}

    def matches(self, checked: dict[str, Any]) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Which files pass the `checked` filter (see check_filter), as a boolean per file."""
        kind = checked["type"]
        if kind in COMPOUNDS:
            parts = [self.matches(child) for child in checked["filters"]]
            if kind == "and":
                return np.logical_and.reduce(parts) if parts else np.ones(self.size, dtype=bool)
            return np.logical_or.reduce(parts) if parts else np.zeros(self.size, dtype=bool)
        column = self._column(checked["key"])
        if kind == "ne":
            return ~self._test(column, "eq", checked["value"])
        if kind == "nin":
            return ~self._test(column, "in", checked["value"])
        return self._test(column, kind, checked["value"])

    def _column(self, key: str) -> _Column:
        column = self._columns.get(key)
        if column is None:
            column = self._columns[key] = _Column([(row or {}).get(key) for row in self._rows])
        return column

    def _test(self, column: _Column, kind: str, value: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
        passed = np.zeros(self.size, dtype=bool)
        if kind == "in":
            # Numbers and strings apart: True == 1 in Python, never here, and 1 == 1.0 as on both databases.
            for type_code, listed in (
                (_STRING, {v for v in value if isinstance(v, str)}),
                (_NUMBER, {v for v in value if not isinstance(v, str)}),
            ):
                if listed:
                    rows, values = column.of_type(type_code)
                    passed[rows] = np.fromiter((v in listed for v in values), dtype=bool, count=len(rows))
            return passed
        if isinstance(value, bool):  # only `eq` takes a boolean
            rows, values = column.of_type(_BOOLEAN)
            passed[rows] = values == value
            return passed
        rows, values = column.of_type(_STRING if isinstance(value, str) else _NUMBER)
        if not len(rows):
            return passed
        # Python orders strings by code point, which is the order of their UTF-8 bytes, as the databases compare.
        compare = {
            "eq": np.equal,
            "gt": np.greater,
            "gte": np.greater_equal,
            "lt": np.less,
            "lte": np.less_equal,
        }[kind]
        passed[rows] = compare(values, value).astype(bool)
        return passed
