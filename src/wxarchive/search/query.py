"""One query model for the CLI, exports and (later) the web UI: filters + text → rows.

Text search has substring semantics and must never miss: a segmenter never decides what
is findable. Routing (measured in docs/search-and-storage.md):
- 3+ characters: FTS5 trigram candidates (``id IN (SELECT rowid ...)``), re-checked with
  ``instr`` so the result is exactly the substring matches;
- 1–2 characters: an ``instr`` scan, narrowed first by every other filter.
Both are compared against a brute-force scan in the tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, literal_column, or_, select, text

from wxarchive.archive.catalog import schema as s
from wxarchive.model import iso_time


class QueryError(ValueError):
    """A mistake in a search request (bad date, unknown kind...)."""


@dataclass
class Query:
    text: str | None = None
    sender: str | None = None
    kind: str | None = None
    conversation: str | None = None
    since: int | None = None  # epoch ms, inclusive
    until: int | None = None  # epoch ms, exclusive
    has_attachment: bool = False
    source: str | None = None
    limit: int | None = None
    offset: int = 0


def parse_when(value: str, tz: str, *, end: bool = False) -> int:
    """'2024-03-10' or an ISO datetime (zone-less = the configured zone) → epoch ms.

    For a bare date used as an upper bound, the whole day is included.
    """
    zone = ZoneInfo(tz)
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            dt = datetime.combine(d + timedelta(days=1) if end else d, dtime(0), zone)
        else:
            dt = datetime.fromisoformat(value)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=zone)
        return int(dt.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise QueryError(f"not a date or ISO 8601 time: {value!r} (use e.g. 2024-03-10 or 2024-03-10T15:00+08:00)") from None


def check_kind(engine, kind: str) -> None:
    """Refuse a ``--type`` that can match nothing: not one of our kinds, and no archived
    message carries it as its source type (a typo must not read as "no such messages")."""
    from wxarchive.model import MessageKind

    if kind in {k.value for k in MessageKind}:
        return
    with engine.connect() as c:
        if c.execute(select(s.messages.c.id).where(s.messages.c.source_type == kind).limit(1)).first():
            return
    kinds = ", ".join(k.value for k in MessageKind)
    raise QueryError(f"unknown message type {kind!r}: use a kind ({kinds}) or a WeCom msgtype found in the archive")


def _where(q: Query) -> list[Any]:
    m = s.messages
    conds: list[Any] = []
    if q.source:
        conds.append(m.c.source == q.source)
    if q.sender:
        names = select(s.participants.c.id).where(s.participants.c.display_name.contains(q.sender, autoescape=True))
        conds.append(or_(m.c.sender == q.sender, m.c.sender.in_(names)))
    if q.kind:
        conds.append(or_(m.c.kind == q.kind, m.c.source_type == q.kind))
    if q.conversation:
        titles = select(s.conversations.c.id).where(s.conversations.c.title == q.conversation)
        conds.append(or_(m.c.conversation_id == q.conversation, m.c.conversation_id.in_(titles)))
    if q.since is not None:
        conds.append(m.c.sent_at >= q.since)
    if q.until is not None:
        conds.append(m.c.sent_at < q.until)
    if q.has_attachment:
        conds.append(m.c.id.in_(select(s.attachments.c.message_id)))
    if q.text:
        conds.append(func.instr(m.c.text, q.text) > 0)
        if len(q.text) >= 3:
            phrase = '"' + q.text.replace('"', '""') + '"'
            conds.append(
                m.c.id.in_(
                    select(literal_column("rowid")).select_from(text("messages_fts"))
                    .where(text("messages_fts MATCH :fts_phrase").bindparams(fts_phrase=phrase))
                )
            )
    return conds


def count(engine, q: Query) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(s.messages).where(and_(True, *_where(q)))).scalar()


def search(engine, q: Query, tz: str = "UTC") -> Iterator[dict[str, Any]]:
    """Matching messages in time order (ties in source order), as plain dicts."""
    m = s.messages
    stmt = (
        select(m).where(and_(True, *_where(q)))
        .order_by(m.c.sent_at.is_(None), m.c.sent_at, m.c.seq, m.c.id)
        .offset(q.offset)
    )
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    with engine.connect() as c:
        rows = c.execute(stmt).mappings().all()
        atts = _attachments(c, [r["id"] for r in rows])
    for r in rows:
        yield row_to_result(r, atts.get(r["id"], []), tz)


def _attachments(conn, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    a = s.attachments
    for i in range(0, len(ids), 500):
        q = select(a).where(a.c.message_id.in_(ids[i : i + 500])).order_by(a.c.message_id, a.c.path)
        for r in conn.execute(q).mappings():
            out.setdefault(r["message_id"], []).append(
                {"path": r["path"], "kind": r["kind"], "file_name": r["file_name"],
                 "media_type": r["media_type"], "size": r["size"] if r["size"] is not None else r["declared_size"],
                 "sha256": r["sha256"], "state": r["state"], "reason": r["reason"]}
            )
    return out


def iter_results(engine, q: Query, tz: str = "UTC", *, by_conversation: bool = False,
                 batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Like ``search`` but streamed (memory stays flat however many match) and with each
    message's ``content`` and ``reply_to``; ``by_conversation``: ordered by conversation, then
    time, for exporters that write one file per conversation."""
    m = s.messages
    order = [m.c.sent_at.is_(None), m.c.sent_at, m.c.seq, m.c.id]
    if by_conversation:
        order = [m.c.source, m.c.conversation_id, *order]
    stmt = select(m).where(and_(True, *_where(q))).order_by(*order).offset(q.offset)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    with engine.connect() as c:
        # a second connection reads the attachments: the first one's cursor stays open
        with engine.connect() as c2:
            result = c.execution_options(yield_per=batch).execute(stmt).mappings()
            for rows in result.partitions(batch):
                atts = _attachments(c2, [r["id"] for r in rows])
                for r in rows:
                    d = row_to_result(r, atts.get(r["id"], []), tz)
                    d["sent_at_ms"] = r["sent_at"]
                    d["reply_to"] = r["reply_to"]
                    d["content"] = json.loads(r["content"])
                    yield d


def row_to_result(r, attachments: list[dict[str, Any]], tz: str) -> dict[str, Any]:
    return {
        "msgid": r["msgid"],
        "source": r["source"],
        "conversation": r["conversation_id"],
        "conversation_kind": r["conversation_kind"],
        "sender": r["sender"],
        "recipients": json.loads(r["recipients"]),
        "sent_at": iso_time(r["sent_at"], tz),
        "kind": r["kind"],
        "source_type": r["source_type"],
        "text": r["text"],
        "attachments": attachments,
        "recalled_by": r["recalled_by"],
        "recalls": r["recalls"],
        "flags": json.loads(r["flags"]),
        "seq": r["seq"],
    }
