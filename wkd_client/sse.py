"""A minimal server-sent-events reader (the WHATWG event-stream format)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from wkd_client.models import Event


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the stream's lines; comments and ``retry`` are skipped.

    An event without an ``id`` field inherits none (ids of this service are always sent).
    """
    fields: dict[str, str] = {}
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield Event(id=fields.get("id"), event=fields.get("event", "message"),
                            data=json.loads("\n".join(data)))  # fmt: skip
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("id", "event"):
            fields[name] = value
