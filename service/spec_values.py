"""Values no JSON document or database can hold, found anywhere in a request body before
pydantic sees it: non-finite numbers, lone surrogates and NUL characters, and nesting deeper
than a job body needs. Each is reported at its location with a printable echo."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

Loc = tuple[str | int, ...]
MAX_DEPTH = 8  # nesting of a job body (the spec itself is three levels deep)


def unrepresentable(value: Any, loc: Loc) -> Iterable[tuple[Loc, str, Any]]:
    """Values anywhere in ``value`` that no JSON document (or database) can hold."""
    if len(loc) > MAX_DEPTH:
        yield loc, f"nested deeper than {MAX_DEPTH} levels", None
    elif isinstance(value, float) and not math.isfinite(value):
        yield loc, "numbers must be finite (no NaN or Infinity)", str(value)
    elif isinstance(value, str) and not _encodable(value):
        yield loc, "text must be valid Unicode (no lone surrogates, no NUL)", _printable(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not _encodable(key):
                yield (*loc, _printable(key)), "keys must be valid Unicode", None
            else:
                yield from unrepresentable(item, (*loc, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from unrepresentable(item, (*loc, index))


def _encodable(text: str) -> bool:
    """UTF-8 can encode it and PostgreSQL can store it (no NUL character)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
