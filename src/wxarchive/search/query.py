"""One query model for the CLI, exports and (later) the web UI: filters + text → rows.

Text search has substring semantics and must never miss: a segmenter never decides what
is findable. The text's language (phrases, AND/OR/NOT) and which index answers each
substring are in search/text.py; every route is compared with a brute-force scan in
tests/test_search_recall.py. Filters narrow first (the planner uses the time, sender and
conversation indexes), the text index is consulted as ``id IN (SELECT rowid ...)``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import date, datetime, time as dtime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, bindparam, exists, func, literal_column, not_, or_, select, text
from sqlalchemy.exc import OperationalError

from wxarchive.archive.catalog import schema as s
from wxarchive.archive.catalog.fts import NUL_STAND_IN, trigram_text
from wxarchive.archive.catalog.people import people_named as _people
from wxarchive.search import text as textq
from wxarchive.model import iso_time


class QueryError(ValueError):
    """A mistake in a search request (bad date, unknown kind...)."""


@dataclass
class Query:
    text: str | None = None  # the text language of search/text.py
    literal: bool = False  # the whole text is one substring
    fold: bool = False  # case-, width- and Traditional/Simplified-insensitive
    sender: str | None = None  # id or display name
    participant: str | None = None  # sender or recipient: id or display name
    department: str | None = None  # the sender's department, at any time in the directory
    kind: str | None = None
    conversation: str | None = None
    external: bool | None = None  # True: with an external contact taking part; False: internal only
    since: int | None = None  # epoch ms, inclusive
    until: int | None = None  # epoch ms, exclusive
    has_attachment: bool = False
    attachment_name: str | None = None  # substring of a file name, case-insensitive
    attachment_ext: str | None = None  # "pdf", ".pdf", "PDF": the file name's extension
    min_size: int | None = None  # bytes, of at least one attachment
    max_size: int | None = None
    recalled: bool | None = None  # True: recalled originals only; False: never recalled
    consent: str | None = None  # agree | disagree | default: an external party's archiving consent
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
        ms = int(dt.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise QueryError(f"not a date or ISO 8601 time: {value!r} (use e.g. 2024-03-10 or 2024-03-10T15:00+08:00)") from None
    if not _MIN_MS <= ms < _MAX_MS:  # a time every zone can show (years 1 to 9999 in any offset)
        raise QueryError(f"{value!r}: out of range (use a time between the years 1900 and 9998)")
    return ms


_MIN_MS = int(datetime(1900, 1, 1, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)
_MAX_MS = int(datetime(9999, 1, 1, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)


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


def unknown_names(engine, q: Query) -> list[str]:
    """The sender, participant and department filters of ``q`` that nobody in the archive has
    (no participant, no directory entry, current or past): a typo there matches nothing, and an
    officer must hear so rather than read "0 messages" as "none were sent"."""
    out = []
    with engine.connect() as c:
        for flag, value in (("--sender", q.sender), ("--participant", q.participant)):
            if value and c.execute(select(literal_column("1")).select_from(_people(value).subquery()).limit(1)).first() is None:
                out.append(f"{flag} {value!r}: no participant or directory entry has that id, name, e-mail or mobile")
        if q.department and c.execute(select(s.people.c.row).where(s.people.c.department == q.department)
                                      .limit(1)).first() is None:
            out.append(f"--department {q.department!r}: no one in the directory was ever in it")
    return out


CONSENT_STATES = {"agree": "Agree", "disagree": "Disagree", "default": "Default_Agree"}  # WeCom's words
NARROW = 5000  # filters leaving fewer rows than this are scanned with instr(), not looked up in an index
# ... and so are filters leaving more, when the text has more hits still (counted up to WIDE):
# a scan costs ~1 us a row, the index ~1.25 us a hit (docs/search.md)
WIDE = 50_000


def _substring(needle: str, fold: bool, scan: bool = False):
    """Rows whose text contains ``needle``, through the index that cannot miss it (or, with
    ``scan``, by instr() over whatever the other filters leave: faster when they leave few)."""
    m = s.messages
    if fold:
        return func.instr(func.coalesce(m.c.folded, m.c.text), textq.fold(needle)) > 0
    found = func.instr(m.c.text, needle) > 0
    r = "scan" if scan else textq.route(needle)
    if r == "scan":
        return found
    tri = trigram_text(needle)
    table, phrase = ("messages_fts", '"' + tri.replace('"', '""') + '"') if r == "trigram" else \
        ("messages_uni", textq.unigram_phrase(needle))
    hits = m.c.id.in_(select(literal_column("rowid")).select_from(text(table))
                      .where(text(f"{table} MATCH :phrase").bindparams(bindparam("phrase", phrase, unique=True))))
    # a case-sensitive trigram phrase is an exact substring match; so is a unigram phrase of
    # characters that are each their own token and never case-folded
    exact = tri == needle and NUL_STAND_IN not in needle if r == "trigram" else textq.unigram_exact(needle)
    return hits if exact else and_(hits, found)


def _text(tree, fold: bool, scan: bool = False):
    if isinstance(tree, textq.Term):
        return _substring(tree.text, fold, scan)
    if isinstance(tree, textq.Not):
        return not_(_text(tree.part, fold, scan))
    parts = [_text(p, fold, scan) for p in tree.parts]
    return and_(*parts) if isinstance(tree, textq.And) else or_(*parts)


def _tree(q: Query):
    """The parsed text of ``q`` (a QueryError naming it when it does not parse)."""
    try:
        return textq.parse(q.text, literal=q.literal)
    except textq.TextQueryError as e:
        raise QueryError(f"text {q.text!r}: {e}") from None


def _text_terms(q: Query, scan: bool, tree=None) -> list[Any]:
    if not q.text:
        return []
    return [_text(tree if tree is not None else _tree(q), q.fold, scan)]


def _plan(conn, q: Query) -> list[Any]:
    """The WHERE terms, choosing how to answer the text: when the other filters leave fewer
    than NARROW rows (probed through their indexes), a scan of those beats any text index
    (SQLite cannot tell how many rows an FTS match returns, and would drive from it)."""
    return _route(conn, q)[0]


def _route(conn, q: Query) -> tuple[list[Any], bool]:
    """The WHERE terms, and whether a text index drives them (see ``_plan``)."""
    filters = _filter_terms(q, conn)
    tree = _tree(q) if q.text else None
    narrow = False
    if tree is not None and filters:
        narrow = _fewer_rows(conn, filters, NARROW)
        if not narrow:  # both sides may be large: drive from the smaller one
            hits = _estimate(conn, tree, q.fold, WIDE)
            narrow = hits is not None and hits > NARROW and _fewer_rows(conn, filters, hits)
    driven = tree is not None and not narrow and not q.fold and _index_driven(tree)
    return filters + _text_terms(q, narrow, tree), driven


def _index_driven(tree) -> bool:
    """Whether the text's terms include an ``id IN (index match)`` conjunct every hit passes
    (a lone indexed term, or an AND with one): then rows can be found by id."""
    if isinstance(tree, textq.Term):
        return textq.route(tree.text) != "scan"
    return isinstance(tree, textq.And) and any(_index_driven(p) for p in tree.parts)


def _fewer_rows(conn, filters: list[Any], n: int) -> bool:
    """Whether the filters leave fewer than ``n`` rows (probed through their indexes)."""
    probe = select(literal_column("1")).select_from(s.messages).where(and_(True, *filters)).limit(1).offset(n - 1)
    return conn.execute(probe).first() is None


def _only_source(conn, source: str) -> bool:
    """Whether every message has this source (min = max over the (source, msgid) index: two
    index probes). Then a ``source`` filter is left out: SQLite would otherwise check it row by
    row beside the sender/time index (10-15 ms a query at 10,000,000 messages)."""
    # each its own scalar subquery: SQLite answers a lone min() or max() from the index edge
    # (both in one SELECT would scan); as driver SQL, which costs a tenth of a built statement
    lo, hi = conn.exec_driver_sql("SELECT (SELECT min(source) FROM messages), (SELECT max(source) FROM messages)"
                                  ).one()
    return lo == hi == source


def _max_id(conn) -> int:
    """The highest message id (0 when there is none): about how many messages there are."""
    return conn.exec_driver_sql("SELECT max(id) FROM messages").scalar() or 0


def _filter_terms(q: Query, conn=None) -> list[Any]:
    m = s.messages
    a = s.attachments
    conds: list[Any] = []
    if q.source and (conn is None or not _only_source(conn, q.source)):
        conds.append(m.c.source == q.source)
    if q.sender:
        conds.append(m.c.sender.in_(_people(q.sender)))
    if q.participant:
        ids = _people(q.participant)
        conds.append(or_(m.c.sender.in_(ids), exists(
            select(literal_column("1")).select_from(func.json_each(m.c.recipients).table_valued("value"))
            .where(literal_column("value").in_(ids)))))
    if q.department:
        conds.append(m.c.sender.in_(select(s.people.c.person).where(s.people.c.department == q.department)))
    if q.kind:
        conds.append(or_(m.c.kind == q.kind, m.c.source_type == q.kind))
    if q.conversation:
        titles = select(s.conversations.c.id).where(s.conversations.c.title == q.conversation)
        conds.append(or_(m.c.conversation_id == q.conversation, m.c.conversation_id.in_(titles)))
    if q.external is not None:
        conds.append(m.c.external == (1 if q.external else 0))
    if q.since is not None:
        conds.append(m.c.sent_at >= q.since)
    if q.until is not None:
        conds.append(m.c.sent_at < q.until)
    att: list[Any] = []
    if q.attachment_name:
        att.append(func.instr(func.lower(a.c.file_name), q.attachment_name.lower()) > 0)
    if q.attachment_ext:
        # the name ends in "." + ext: compared as hex, because SQLite's LIKE and substr() stop at
        # a NUL inside a name, and no character of the extension is a wildcard
        ext = "." + "".join(c.lower() if c.isascii() else c for c in q.attachment_ext.strip().lstrip("."))
        tail = ext.encode("utf-8").hex().upper()
        att.append(func.substr(func.hex(func.lower(a.c.file_name)), -len(tail)) == tail)
    size = func.coalesce(a.c.size, a.c.declared_size)
    if q.min_size is not None:
        att.append(size >= q.min_size)
    if q.max_size is not None:
        att.append(size <= q.max_size)
    if q.has_attachment or att:
        conds.append(m.c.id.in_(select(a.c.message_id).where(and_(True, *att))))
    if q.consent is not None:
        status = CONSENT_STATES.get(q.consent.lower())
        if status is None:
            raise QueryError(f"consent {q.consent!r}: use one of {', '.join(CONSENT_STATES)}")
        c = s.consent
        conds.append(exists(select(literal_column("1")).select_from(c).where(
            c.c.source == m.c.source, c.c.status == status,
            or_(c.c.scope == m.c.conversation_id,
                m.c.conversation_id == c.c.scope + "|" + c.c.external_id,
                m.c.conversation_id == c.c.external_id + "|" + c.c.scope))))
    if q.recalled is not None:
        conds.append(m.c.recalled_by.is_not(None) if q.recalled else m.c.recalled_by.is_(None))
    return conds


def count(engine, q: Query) -> int:
    with engine.connect() as c:
        fast = _index_count(c, q)
        if fast is not None:
            return fast
        return c.execute(select(func.count()).select_from(s.messages).where(and_(True, *_plan(c, q)))).scalar()


def _index_count(conn, q: Query) -> int | None:
    """The count of a lone substring that an index answers exactly, with no filter but a source
    every message has: the index's own count of the phrase, without reading a message row (a
    term in 20,000 messages: ~6 ms instead of ~40). Every message is in both indexes and leaves
    them when purged, so the two counts are the same (tests/test_search_recall.py)."""
    if not q.text or q.fold or any(getattr(q, f.name) != f.default for f in fields(Query)
                                   if f.name not in ("text", "literal", "fold", "source", "limit", "offset")):
        return None  # any filter at its non-default value (recalled=False and external=False filter too)
    tree = _tree(q)
    if not isinstance(tree, textq.Term):
        return None
    needle, r = tree.text, textq.route(tree.text)
    if r == "trigram" and trigram_text(needle) == needle and NUL_STAND_IN not in needle:
        table, phrase = "messages_fts", '"' + needle.replace('"', '""') + '"'
    elif r == "unigram" and textq.unigram_exact(needle):
        table, phrase = "messages_uni", textq.unigram_phrase(needle)
    else:
        return None
    if q.source is not None and not _only_source(conn, q.source) and _max_id(conn):
        return None
    return conn.exec_driver_sql(f"SELECT count(*) FROM {table} WHERE {table} MATCH ?", (phrase,)).scalar()


def around(engine, msgid: str, n: int, tz: str = "UTC", source: str | None = None) -> list[dict[str, Any]]:
    """The message ``msgid`` with up to ``n`` messages before and after it in its conversation,
    in time order (context for a hit). Raises QueryError if there is no such message."""
    m = s.messages
    with engine.connect() as c:
        cond = [m.c.msgid == msgid] + ([m.c.source == source] if source else [])
        row = c.execute(select(m).where(*cond)).mappings().first()
        if row is None:
            raise QueryError(f"no message {msgid!r} in the archive")
        order = (m.c.sent_at.is_(None), m.c.sent_at, m.c.seq, m.c.id)
        conv = [m.c.source == row["source"], m.c.conversation_id == row["conversation_id"]]
        ids = [r[0] for r in c.execute(select(m.c.id).where(*conv).order_by(*order))]
        pos = ids.index(row["id"])
        window = ids[max(0, pos - n) : pos + n + 1]
        rows = c.execute(select(m).where(m.c.id.in_(window)).order_by(*order)).mappings().all()
        atts = _attachments(c, [r["id"] for r in rows])
    return [row_to_result(r, atts.get(r["id"], []), tz) for r in rows]


def highlights(q: Query, text_value: str) -> list[tuple[int, int]]:
    """Where the query's substrings occur in a text (start, end), for showing hits."""
    if not q.text or not text_value:
        return []
    try:
        needles = textq.terms(textq.parse(q.text, literal=q.literal))
    except textq.TextQueryError:
        return []
    hay = textq.fold(text_value) if q.fold else text_value
    spans = []
    for needle in needles:
        nd = textq.fold(needle) if q.fold else needle
        if not nd or (q.fold and len(hay) != len(text_value)):
            continue  # folding changed lengths: positions would not line up
        start = hay.find(nd)
        while start != -1:
            spans.append((start, start + len(nd)))
            start = hay.find(nd, start + 1)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def matching_ids(engine, q: Query) -> list[tuple[str, str]]:
    """(source, msgid) of every match, unordered (for holds, checks and tests)."""
    m = s.messages
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(select(m.c.source, m.c.msgid).where(and_(True, *_plan(c, q))))]


def rows_by_serial(engine, q: Query, columns: list[str]) -> Iterator[tuple]:
    """``columns`` of every match, in journal-serial order, streamed (for checking a selection
    against the journal entries its rows derive from)."""
    m = s.messages
    with engine.connect() as c:
        stmt = select(*[m.c[k] for k in columns]).where(and_(True, *_plan(c, q))).order_by(m.c.serial)
        for part in c.execution_options(yield_per=2000).execute(stmt).partitions(2000):
            yield from (tuple(r) for r in part)


WALK_FROM = 1000  # the fewest hits for which a page may be found by walking time order
WALK_MS = 10.0  # how long a walk may take per million messages (at most WALK_MS_MAX) before the indexes answer
WALK_MS_MAX = 60.0
# The walk needs want/f rows for a term in a fraction f of N messages, the index route pays
# per hit: the walk wins from sqrt(r * want * N) hits on, r = (walk cost a row) / (index cost a
# hit). Measured on the bench corpus (docs/search.md; its times are not in capture order, the
# worst case for a walk): r = 1.4 at 1,000,000 messages (0.8 / 0.57 us), 2.5 at 10,000,000
# (3.3 / 1.3 us): in between, by the logarithm of the size.
def _walk_ratio(total: int) -> float:
    import math

    return 1.4 + 1.1 * min(1.0, max(0.0, math.log10(max(total, 1) / 1e6)))


def search(engine, q: Query, tz: str = "UTC") -> Iterator[dict[str, Any]]:
    """Matching messages in time order (ties in source order), as plain dicts."""
    m = s.messages
    with engine.connect() as c:
        rows = _walk_page(c, q)
        if rows is None:
            terms, driven = _route(c, q)
            order = (m.c.sent_at.is_(None), m.c.sent_at, m.c.seq, m.c.id)
            if driven and q.limit is not None:
                # the hits sorted by time from the covering (id, sent_at, seq) index, then only
                # the page's rows read (measured: ~40 % less per hit than sorting whole rows)
                ids = [r[0] for r in c.execute(
                    select(m.c.id).with_hint(m, "INDEXED BY ix_messages_id_time", "sqlite")
                    .where(and_(True, *terms)).order_by(*order).offset(q.offset).limit(q.limit))]
                by_id = {r["id"]: r for r in c.execute(select(m).where(m.c.id.in_(ids))).mappings()}
                rows = [by_id[i] for i in ids]
            else:
                stmt = select(m).where(and_(True, *terms)).order_by(*order).offset(q.offset)
                if q.limit is not None:
                    stmt = stmt.limit(q.limit)
                rows = c.execute(stmt).mappings().all()
        atts = _attachments(c, [r["id"] for r in rows])
    for r in rows:
        yield row_to_result(r, atts.get(r["id"], []), tz)


def count_and_page(engine, q: Query, tz: str = "UTC") -> tuple[int, list[dict[str, Any]]]:
    """What a search shows: how many messages match, and the page ``q`` asks for. The count runs
    in a thread on a connection of its own while the page is read (SQLite lets go of the GIL
    while it works), so on two cores a search costs about the longer of the two, not their sum."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="wxarchive-count") as pool:
        counted = pool.submit(count, engine, q)
        rows = list(search(engine, q, tz))
        return counted.result(), rows


def _walk_page(conn, q: Query):
    """A page of a text search whose terms are common, found by walking the messages in time
    order and testing each with instr() until the page is full: for a term in one message of
    a hundred, 50 hits take ~5,000 rows, where the index would first fetch and sort all of
    them. A walk that has not filled the page within WALK_MS per million messages is abandoned and the indexes
    answer (None). Either way the rows are the same: every row is tested for every term and
    filter, in the same order (tests/test_search_recall.py compares the two routes)."""
    if not q.text or q.limit is None or q.offset + q.limit > 1000:
        return None
    tree = _tree(q)
    want = q.offset + q.limit
    total = _max_id(conn)
    threshold = max(WALK_FROM, int((_walk_ratio(total) * want * total) ** 0.5))
    # Counted among the newest 1/ESTIMATE_SLICE of the ids only, and scaled: a plan needs no
    # exact count, and a common term's full count up to the threshold cost more than the walk.
    part = ESTIMATE_SLICE if total >= 100 * threshold else 1
    est = _estimate(conn, tree, q.fold, -(-threshold // part), total - total // part + 1 if part > 1 else None)
    if est is not None and est * part < threshold:
        return None
    m = s.messages
    filters = _filter_terms(q, conn)
    if filters and conn.execute(select(literal_column("1")).select_from(m).where(*filters).limit(1)
                                .offset(NARROW - 1)).first() is None:
        return None  # the filters leave few rows: the scan of those is faster still
    stmt = (select(m).with_hint(m, "INDEXED BY ix_messages_time", "sqlite")
            .where(m.c.sent_at.is_not(None), *filters, _text(tree, q.fold, scan=True))
            .order_by(m.c.sent_at, m.c.seq, m.c.id).limit(want))
    raw = conn.connection.driver_connection
    deadline = time.perf_counter() + min(WALK_MS_MAX, max(WALK_MS, WALK_MS * total / 1e6)) / 1000
    raw.set_progress_handler(lambda: time.perf_counter() > deadline, 2000)
    try:
        rows = conn.execute(stmt).mappings().all()
    except OperationalError as e:
        if "interrupted" not in str(e):
            raise
        return None
    finally:
        raw.set_progress_handler(None, 0)
    if len(rows) < want:
        return None  # fewer hits with a time than the page needs: the rest are among those without
    return rows[q.offset:]


ESTIMATE_SLICE = 8


def _estimate(conn, tree, fold: bool, cap: int, from_id: int | None = None) -> int | None:
    """How many messages the text matches, counted through the indexes up to ``cap`` (an
    upper bound for AND; a phrase of the index that cannot miss it); None when they cannot tell
    (folded text, 1-2 ASCII characters, NOT). ``from_id``: only among ids from that one on."""
    if isinstance(tree, textq.Term):
        r = textq.route(tree.text)
        if fold or r == "scan":
            return None
        if r == "trigram":
            table, phrase = "messages_fts", '"' + trigram_text(tree.text).replace('"', '""') + '"'
        else:
            table, phrase = "messages_uni", textq.unigram_phrase(tree.text)
        low = "" if from_id is None else f" AND rowid >= {int(from_id)}"
        return conn.exec_driver_sql(
            f"SELECT count(*) FROM (SELECT rowid FROM {table} WHERE {table} MATCH ?{low} LIMIT {int(cap)})",
            (phrase,)).scalar()
    if isinstance(tree, textq.Not):
        return None
    parts = [_estimate(conn, p, fold, cap, from_id) for p in tree.parts]
    if isinstance(tree, textq.And):
        known = [x for x in parts if x is not None]
        return min(known) if known else None
    return None if any(x is None for x in parts) else sum(parts)


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
    with engine.connect() as c:
        stmt = select(m).where(and_(True, *_plan(c, q))).order_by(*order).offset(q.offset)
        if q.limit is not None:
            stmt = stmt.limit(q.limit)
        # a second connection reads the attachments: the first one's cursor stays open
        with engine.connect() as c2:
            result = c.execution_options(yield_per=batch).execute(stmt).mappings()
            for rows in result.partitions(batch):
                atts = _attachments(c2, [r["id"] for r in rows])
                for r in rows:
                    d = row_to_result(r, atts.get(r["id"], []), tz)
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
        "sent_at_ms": r["sent_at"],
        "kind": r["kind"],
        "source_type": r["source_type"],
        "text": r["text"],
        "attachments": attachments,
        "recalled_by": r["recalled_by"],
        "recalls": r["recalls"],
        "flags": json.loads(r["flags"]),
        "seq": r["seq"],
    }
