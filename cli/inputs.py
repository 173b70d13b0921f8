"""What the ``wkd`` command line reads from its user, checked: ``--set`` overrides, YAML job
and study files, ports and intervals; and how errors become one line (``cli.main``)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import yaml

# OSError: a path that is a folder, a file where a folder should be, a full disk; the message
# names the path.
USER_ERRORS = (ValueError, KeyError, OSError)


def is_user_error(error: BaseException) -> bool:
    """Errors that get one line on stderr instead of a traceback."""
    return isinstance(error, USER_ERRORS)


def describe_error(error: BaseException) -> str:
    """One line: pydantic errors become ``field: message`` pairs."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        try:
            parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors()]
            return "invalid job spec: " + "; ".join(parts)
        except (TypeError, KeyError):
            pass
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(text.split())


def port_number(text: str) -> int:
    """A TCP port to listen on, 1 … 65535 (uvicorn would take 99999 and listen elsewhere)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 … 65535, got {port}")
    return port


def positive_seconds(text: str) -> float:
    """A positive, finite number of seconds (``--poll``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"a positive number of seconds, got {text}")
    return value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["training.epochs=2", "params.temperature=4"]`` → nested dict (values as YAML)."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        node = nested
        *parents, leaf = key.split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: depth + 1])
                raise ValueError(f"--set {key}: {where} is already set to a value, not fields")
        node[leaf] = _yaml_value(raw, f"--set {key}")
    return nested


def _yaml_value(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as error:
        raise ValueError(f"{where}: not a YAML value ({_first_line(error)})") from None


def load_mapping_file(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that holds a mapping (``what`` names it in errors): every way a file can
    be unreadable or hold something else is one ``ValueError`` / ``OSError`` naming it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not {what}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file ({what} is YAML)") from None
    except (yaml.YAMLError, RecursionError) as error:
        raise ValueError(f"{path}: not valid YAML ({_first_line(error)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {what} holds a mapping of fields")
    return data


def require_json(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` when it is plain JSON (what a request body carries), else a ``ValueError``:
    YAML also reads dates, binary and NaN, which the service never takes."""
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: only JSON values (text, numbers, lists, fields): "
                         f"{_first_line(error)}") from None  # fmt: skip
    return data


def _first_line(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    text = str(error).strip().splitlines()
    return " ".join(text[0].split()) if text else type(error).__name__


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, merging nested dicts."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
