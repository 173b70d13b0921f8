"""Newest-first keyset pages over a table with ``created_at`` and ``id`` (``GET /jobs``,
``GET /studies``): the token is the last row's (created_at, id), and it pins the filter so a
token cannot be replayed under another one."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

_TOKEN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # the ids new_id makes (job_…, ck_…, study_…)


@dataclass
class Page:
    items: list
    next_page_token: str


def newest_first_page(
    session: Session,
    query: Select,
    model: Any,
    *,
    page_size: int,
    page_token: str | None,
    filter_value: str | None = None,
) -> Page:
    """The rows of ``query`` (over ``model``) after ``page_token``, newest first.

    Raises ``ValueError`` for a malformed token or one issued for another ``filter_value``.
    """
    if page_token:
        created_at, last_id = decode_page_token(page_token, filter_value)
        query = query.where(
            (model.created_at < created_at)
            | ((model.created_at == created_at) & (model.id < last_id))
        )
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(page_size + 1)
    rows = list(session.scalars(query))
    more = len(rows) > page_size
    token = encode_page_token(rows[page_size - 1], filter_value) if more else ""
    return Page(rows[:page_size], token)


def encode_page_token(last: Any, filter_value: str | None) -> str:
    """The keyset token after ``last`` (its ``created_at`` and ``id``), pinning the filter."""
    payload = {"c": last.created_at.isoformat(), "i": last.id, "s": filter_value}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def decode_page_token(token: str, filter_value: str | None) -> tuple[datetime, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        created_at, last_id, token_filter = payload["c"], payload["i"], payload["s"]
        created = datetime.fromisoformat(created_at)
        # what this service issues: an aware time that converts to UTC, a printable id
        created = created.astimezone(UTC) if created.tzinfo is not None else None
    except (ValueError, KeyError, TypeError, OverflowError) as error:
        raise ValueError("malformed page_token") from error
    if created is None or not isinstance(last_id, str) or not _TOKEN_ID.match(last_id):
        raise ValueError("malformed page_token")
    if token_filter != filter_value:
        raise ValueError("page_token was issued for another status filter")
    return created, str(last_id)
