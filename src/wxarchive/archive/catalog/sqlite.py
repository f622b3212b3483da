"""The embedded catalog: SQLite (WAL) through SQLAlchemy Core.

Every write happens inside ``Catalog.batch(serial)``, which also records the last
journal serial the catalog reflects (``applied_serial``) in the same transaction:
after a crash, the ingest re-applies journal entries newer than that, so the
catalog always converges on the journal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from wxarchive.archive.catalog import fts, schema as s
from wxarchive.model import AttachmentState, Message, participant_kind


MMAP_BYTES = 1 << 31  # SQLite's default build caps it at just under 2 GiB


def _on_connect(dbapi_conn, _record) -> None:
    _pragmas(dbapi_conn, MMAP_BYTES)


def _on_connect_no_mmap(dbapi_conn, _record) -> None:
    """A writer's connection: no memory map. A capture reads few catalog pages but writes many,
    and mapped pages count in its resident set (a 1,000,000-message WeChat ingest peaked at
    699 MB with the map: bench/ingest_wechat.py)."""
    _pragmas(dbapi_conn, 0)


def _pragmas(dbapi_conn, mmap_bytes: int) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    # readers: reads go through the OS page cache without a read() call per page: random access
    # to rows (time-ordered pages of search, hits looked up by id) costs a third to half less
    cur.execute(f"PRAGMA mmap_size={int(mmap_bytes)}")
    cur.close()


_INSERT_MESSAGE = (
    "INSERT OR IGNORE INTO messages (source, msgid, seq, conversation_id, conversation_kind, sender, "
    "recipients, sent_at, kind, source_type, action, text, content, reply_to, recalls, flags, raw_serial, serial, "
    "external, folded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_RECORD = (
    "INSERT INTO records (source, key, kind, raw_serial, cursor, state, reason) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (source, key) DO UPDATE SET state = excluded.state, reason = excluded.reason "
    "WHERE excluded.state != 'pending'"
)
_INSERT_ATTACHMENT = (
    "INSERT OR IGNORE INTO attachments (message_id, path, kind, file_name, media_type, declared_size, "
    "declared_md5, source_ref, state, reason, sha256, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


_UPSERT_CONVERSATION = (
    "INSERT INTO conversations (source, id, kind, title, first_at, last_at, message_count) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, id) DO UPDATE SET "
    "message_count = message_count + excluded.message_count, "
    "first_at = coalesce(min(first_at, excluded.first_at), excluded.first_at), "
    "last_at = coalesce(max(last_at, excluded.last_at), excluded.last_at), "
    "title = coalesce(title, excluded.title)"
)
_UPSERT_PARTICIPANT = (
    "INSERT INTO participants (source, id, kind, first_seen, last_seen, message_count) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source, id) DO UPDATE SET "
    "message_count = message_count + excluded.message_count, "
    "first_seen = coalesce(min(first_seen, excluded.first_seen), excluded.first_seen), "
    "last_seen = coalesce(max(last_seen, excluded.last_seen), excluded.last_seen)"
)

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(v: Any) -> str:
    """Compact JSON of a message's recipients, content and flags (orjson: a third of the
    stdlib's cost on the ingest's hot path; the stdlib for what orjson refuses, e.g. lone
    surrogates or integers beyond 64 bits)."""
    try:
        return orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return _ENCODER.encode(v)


def _named(cur, source: str, pid: str) -> bool:
    """Whether the APIs or a device named ``pid`` (``Batch.person`` made their participant row
    then); an HR import names no participant of its own."""
    return cur.execute("SELECT 1 FROM people WHERE source = ? AND person = ? AND origin != 'hr' AND name IS NOT NULL "
                       "LIMIT 1", (source, pid)).fetchone() is not None


# What a directory snapshot (a purge's: archive/retention.py) holds of one source: per table,
# the columns and which rows. People, consent and group titles whole (consent messages and
# group messages report some too); of participants, only the names and kinds the directory
# gave them (their counts are the messages').
_SNAPSHOT_TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "people": (("person", "origin", "kind", "name", "alias", "mobile", "mobile_digits", "email", "department",
                "organisation", "position", "valid_from", "valid_to", "serial"), "ORDER BY row"),
    "consent": (("external_id", "scope", "status", "changed_at", "checked_at", "serial"), ""),
    "conversations": (("id", "title"), "AND title IS NOT NULL"),
    "participants": (("id", "kind", "display_name"), "AND display_name IS NOT NULL"),
}


def _snapshot_part(state: dict[str, Any], table: str) -> tuple[list[str], list[tuple]]:
    """A snapshot's columns and rows of ``table``, of the columns the catalog knows only."""
    part = state.get(table) or {}
    given = list(part.get("columns") or [])
    keep = [i for i, c in enumerate(given) if c in _SNAPSHOT_TABLES[table][0]]
    return [given[i] for i in keep], [tuple(row[i] for i in keep) for row in part.get("rows") or []]


class CatalogError(Exception):
    """The catalog cannot be opened (e.g. SQLCipher wanted but not installed)."""


def connect_dbapi(path: Path, key: bytes | None = None, readonly: bool = False):
    """A DB-API connection to the catalog: plain SQLite, or SQLCipher when ``key`` is given
    (raw 256-bit key; ``PRAGMA key`` must be the first statement on the connection)."""
    if key is None:
        import sqlite3

        return sqlite3.connect(f"file:{path}?mode=ro" if readonly else str(path), uri=readonly,
                               check_same_thread=False)
    try:
        from sqlcipher3 import dbapi2 as sqlcipher
    except ImportError:
        raise CatalogError(f"{path} is encrypted with SQLCipher, but the sqlcipher3 module is not installed "
                           "(pip install sqlcipher3-binary)") from None
    con = sqlcipher.connect(f"file:{path}?mode=ro" if readonly else str(path), uri=readonly,
                            check_same_thread=False)
    con.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    # explicit, not the process's defaults: reading WeChat databases (or their fixtures) in the same
    # process may have changed SQLCipher's default compatibility and page size
    con.execute("PRAGMA cipher_compatibility = 4")
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher.DatabaseError:
        con.close()
        raise CatalogError(f"{path}: the catalog key does not open this SQLCipher database") from None
    return con


class Catalog:
    def __init__(self, engine: Engine, path: Path):
        self.engine = engine
        self.path = path

    @classmethod
    def open(cls, path: Path, key: bytes | None = None, *, mmap: bool = True, readonly: bool = False) -> Catalog:
        """Open (creating and migrating as needed) the catalog; ``key``: SQLCipher-encrypted.
        ``readonly`` (a reader, which holds no writer lock): an existing catalog of another
        schema revision is refused (CatalogError) rather than migrated beside a running writer."""
        if readonly and not path.exists():
            raise CatalogError(f"{path}: no catalog (a reader makes none: it would answer as an empty archive); "
                               "run 'wxarchive reindex' to rebuild it from the journal")
        if key is None:
            engine = create_engine(f"sqlite:///{path}")
        else:
            connect_dbapi(path, key).close()  # fail here, clearly, on a wrong key or a missing module
            engine = create_engine("sqlite://", creator=lambda: connect_dbapi(path, key))
        event.listen(engine, "connect", _on_connect if mmap else _on_connect_no_mmap)
        cat = cls(engine, path)
        from sqlalchemy.exc import DatabaseError

        from wxarchive.archive.catalog.migrate import HEAD, current, upgrade

        try:
            rev = current(engine) if path.exists() else None
            if readonly and rev is None:
                engine.dispose()
                raise CatalogError(f"{path}: not a catalog (no schema revision); move it aside and run "
                                   "'wxarchive reindex' to rebuild it from the journal")
            if rev != HEAD:
                if readonly and rev is not None:
                    engine.dispose()
                    raise CatalogError(
                        f"{path}: catalog schema revision {rev}, this wxarchive uses {HEAD}: run a command "
                        "that writes (an ingest, 'wxarchive checkpoint' or 'wxarchive reindex') once to "
                        + ("migrate it" if rev < HEAD else "match it (or use the newer wxarchive that wrote it)"))
                try:
                    upgrade(engine)
                except DatabaseError:
                    raise
                except Exception as e:  # noqa: BLE001 - Alembic's CommandError, or its assertion on a bad id
                    engine.dispose()
                    raise CatalogError(f"{path}: catalog schema revision {rev!r} is unknown to this wxarchive "
                                       f"({e.__class__.__name__}); move it aside and run 'wxarchive reindex' "
                                       "to rebuild it from the journal") from None
        except DatabaseError as e:
            engine.dispose()
            raise CatalogError(f"{path}: not a usable catalog ({e.orig}); move it aside and run 'wxarchive reindex' "
                               "to rebuild it from the journal") from None
        return cat

    def close(self) -> None:
        self.engine.dispose()

    def analyze_if_grown(self) -> bool:
        """Refresh the query planner's statistics (ANALYZE) when the catalog has more than
        doubled since they were taken: without them SQLite scans a whole low-selectivity
        index (e.g. ``source``) instead of using the text index. Writers call this on close."""
        with self.engine.begin() as c:
            n = c.execute(text("SELECT count(*) FROM messages")).scalar() or 0
            row = c.execute(select(s.meta.c.value).where(s.meta.c.key == "analyzed_messages")).first()
            last = int(row[0]) if row else -1
            if n < 1000 or (last >= 0 and n <= 2 * last):
                return False
            c.execute(text("ANALYZE"))
            c.execute(sqlite_insert(s.meta).values(key="analyzed_messages", value=str(n))
                      .on_conflict_do_update(index_elements=["key"], set_={"value": str(n)}))
        return True

    # ---- state ---------------------------------------------------------------------

    def applied_serial(self) -> int:
        with self.engine.connect() as c:
            v = c.execute(select(s.meta.c.value).where(s.meta.c.key == "applied_serial")).scalar()
        return int(v or 0)

    def cursor(self, source: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(s.cursors.c.cursor).where(s.cursors.c.source == source)).scalar()

    def known_keys(self, source: str, keys: Iterable[str]) -> dict[str, str]:
        """{key: state} for the given record keys already in the journal."""
        keys = list(keys)
        out: dict[str, str] = {}
        with self.engine.connect() as c:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = select(s.records.c.key, s.records.c.state).where(
                    s.records.c.source == source, s.records.c.key.in_(chunk)
                )
                out.update({k: st for k, st in c.execute(q)})
        return out

    def pending_records(self, source: str) -> list[tuple[str, int]]:
        """(key, raw_serial) of raw records journaled but not yet decrypted or quarantined."""
        with self.engine.connect() as c:
            q = select(s.records.c.key, s.records.c.raw_serial).where(
                s.records.c.source == source, s.records.c.state == "pending"
            ).order_by(s.records.c.raw_serial)
            return [(k, r) for k, r in c.execute(q)]

    def unfinished_runs(self, source: str) -> list[int]:
        """Runs that started but never journaled their end (the process died)."""
        with self.engine.connect() as c:
            q = select(s.runs.c.id).where(s.runs.c.source == source, s.runs.c.status == "running")
            return [r for (r,) in c.execute(q)]

    def pending_attachments(self, source: str, limit: int | None = None) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            q = (
                select(s.attachments, s.messages.c.msgid)
                .join(s.messages, s.messages.c.id == s.attachments.c.message_id)
                .where(s.messages.c.source == source, s.attachments.c.state == AttachmentState.PENDING.value)
                .order_by(s.attachments.c.id)
            )
            if limit:
                q = q.limit(limit)
            return [dict(r._mapping) for r in c.execute(q)]

    def directory_state(self, source: str) -> dict[str, Any] | None:
        """What the catalog holds of ``source``'s directory (see _SNAPSHOT_TABLES, and its
        departments), as plain data for a snapshot (``Batch.directory_snapshot``); None: nothing."""
        state: dict[str, Any] = {}
        with self.engine.connect() as c:
            for table, (cols, cond) in _SNAPSHOT_TABLES.items():
                rows = c.exec_driver_sql(f"SELECT {', '.join(cols)} FROM {table} WHERE source = ? {cond}",
                                         (source,)).fetchall()
                state[table] = {"columns": list(cols), "rows": [list(r) for r in rows]}
            state["departments"] = c.execute(select(s.meta.c.value).where(
                s.meta.c.key == f"departments:{source}")).scalar()  # the stored text, as it is
        if state["departments"] is None and not any(state[t]["rows"] for t in _SNAPSHOT_TABLES):
            return None
        return state

    def media_to_look_again(self, source: str) -> list[dict[str, Any]]:
        """Device media of ``source`` not (fully) archived: missing or failed, only a thumbnail,
        or a ``.dat`` kept as found, with the capture cursor of their message (where its row was read)."""
        a, m, r = s.attachments, s.messages, s.records
        with self.engine.connect() as c:
            q = (
                select(a.c.path, a.c.kind, a.c.file_name, a.c.declared_md5, a.c.declared_size, a.c.state, a.c.reason,
                       a.c.sha256, m.c.msgid,
                       m.c.conversation_id, r.c.cursor)
                .join(m, m.c.id == a.c.message_id)
                .join(r, (r.c.source == m.c.source) & (r.c.key == m.c.msgid))
                .where(m.c.source == source, a.c.path == "", a.c.kind.in_(("image", "video", "file")),
                       a.c.state.in_(("missing", "failed", "present")))
                .order_by(a.c.id)
            )
            return [dict(x._mapping) for x in c.execute(q)
                    if x.state != "present" or "only the thumbnail" in (x.reason or "")
                    or "stored as found" in (x.reason or "")]

    # ---- writing -------------------------------------------------------------------

    @contextmanager
    def batch(self, serial: int, before_commit: Callable[[], None] | None = None) -> Iterator[Batch]:
        """One transaction that brings the catalog up to journal entry ``serial``;
        ``before_commit`` is called last before the commit (the ingest waits there for the
        journal's fsync of those entries: if it raises, nothing is committed)."""
        with self.engine.begin() as conn:
            b = Batch(conn)
            yield b
            b.flush()
            conn.execute(
                sqlite_insert(s.meta)
                .values(key="applied_serial", value=str(serial))
                .on_conflict_do_update(index_elements=["key"], set_={"value": str(serial)})
            )
            if before_commit is not None:
                before_commit()

    def drop_all(self) -> None:
        with self.engine.begin() as c:
            for table in fts.TABLES:
                c.execute(text(f"DROP TABLE IF EXISTS {table}"))
        s.metadata.drop_all(self.engine)
        with self.engine.begin() as c:
            c.execute(text("DROP TABLE IF EXISTS alembic_version"))


class Batch:
    """Writes of one catalog transaction; messages are buffered and inserted together."""

    def __init__(self, conn):
        self.conn = conn
        self._messages: list[tuple[Message, int, int | None]] = []
        self._records: dict[tuple[str, str], dict[str, Any]] = {}

    def record(self, source: str, key: str, kind: str, raw_serial: int, cursor: str | None,
               state: str, reason: str | None = None) -> None:
        """Note a raw record's state; written with the batch (one statement for all of them).

        ``pending`` never overwrites an outcome (archived / quarantined) already recorded.
        """
        row = {"source": source, "key": key, "kind": kind, "raw_serial": raw_serial, "cursor": cursor,
               "state": state, "reason": reason}
        prev = self._records.get((source, key))
        if prev is not None and state == "pending":
            return
        if prev is not None:
            row["raw_serial"] = prev["raw_serial"]
        self._records[(source, key)] = row

    def _flush_records(self) -> None:
        if not self._records:
            return
        rows, self._records = list(self._records.values()), {}
        cur = self.conn.connection.driver_connection.cursor()
        cur.executemany(_UPSERT_RECORD, [
            (r["source"], r["key"], r["kind"], r["raw_serial"], r["cursor"], r["state"], r["reason"]) for r in rows
        ])

    def message(self, msg: Message, serial: int, raw_serial: int | None) -> None:
        self._messages.append((msg, serial, raw_serial))

    def flush(self) -> None:
        self._flush_records()
        if not self._messages:
            return
        msgs, self._messages = self._messages, []
        # The hot path of every ingest: plain DB-API calls on the transaction's connection
        # (SQLAlchemy's per-row parameter processing cost more than SQLite itself).
        cur = self.conn.connection.driver_connection.cursor()
        new: list[tuple[Message, int]] = []
        for m, ser, raw in msgs:
            cur.execute(_INSERT_MESSAGE, (
                m.source, m.msgid, m.seq, m.conversation_id, m.conversation_kind, m.sender,
                _dumps(m.recipients), m.sent_at, m.kind.value, m.source_type, m.action, m.text,
                _dumps(m.content), m.reply_to, m.recalls, _dumps(m.flags), raw, ser,
                int(any(participant_kind(p, m.source) == "external" for p in (m.sender, *m.recipients))),
                fts.folded_or_none(m.text),
            ))
            if cur.rowcount == 1:  # 0: already archived (idempotent re-apply)
                new.append((m, cur.lastrowid))
        if not new:
            return
        fts.index_rows(cur, [(i, m.text) for m, i in new])
        cur.executemany(_INSERT_ATTACHMENT, [
            (i, a.path, a.kind, a.file_name, a.media_type, a.declared_size, a.declared_md5, a.source_ref,
             a.state.value, a.reason, a.sha256, a.size)
            for m, i in new
            for a in m.attachments
        ])
        self._link_recalls([m for m, _ in new])
        self._consent_messages(new)
        self._conversations([m for m, _ in new])
        self._participants([m for m, _ in new])

    def _link_recalls(self, msgs: list[Message]) -> None:
        """A recall marks its original, whichever of the two was archived first (case C2)."""
        for m in msgs:
            if m.recalls:
                self.conn.execute(
                    update(s.messages)
                    .where(s.messages.c.source == m.source, s.messages.c.msgid == m.recalls)
                    .values(recalled_by=m.msgid)
                )
        originals = [m for m in msgs if not m.recalls]
        if originals:
            q = select(s.messages.c.msgid, s.messages.c.recalls, s.messages.c.source).where(
                s.messages.c.recalls.in_([m.msgid for m in originals])
            )
            for rid, orig, src in self.conn.execute(q).all():
                self.conn.execute(
                    update(s.messages)
                    .where(s.messages.c.source == src, s.messages.c.msgid == orig)
                    .values(recalled_by=rid)
                )

    def _conversations(self, msgs: list[Message]) -> None:
        # (kind, title, first_at, last_at, count) per conversation of the batch
        agg: dict[tuple[str, str], list[Any]] = {}
        for m in msgs:
            t = m.sent_at
            a = agg.get((m.source, m.conversation_id))
            if a is None:
                title = m.content.get("room_name") if isinstance(m.content, dict) else None
                agg[(m.source, m.conversation_id)] = [m.conversation_kind, title, t, t, 1]
                continue
            a[4] += 1
            if a[1] is None and isinstance(m.content, dict):
                a[1] = m.content.get("room_name")
            if t is not None:
                a[2] = t if a[2] is None or t < a[2] else a[2]
                a[3] = t if a[3] is None or t > a[3] else a[3]
        if agg:
            cur = self.conn.connection.driver_connection.cursor()
            cur.executemany(_UPSERT_CONVERSATION, [(src, cid, *a) for (src, cid), a in agg.items()])

    def _participants(self, msgs: list[Message]) -> None:
        from wxarchive.model import participant_kind

        # [first_seen, last_seen, messages sent] per participant of the batch
        agg: dict[tuple[str, str], list[Any]] = {}
        for m in msgs:
            t, src = m.sent_at, m.source
            if m.sender:
                a = agg.get((src, m.sender))
                if a is None:
                    agg[(src, m.sender)] = [t, t, 1]
                else:
                    a[2] += 1
                    if t is not None:
                        a[0] = t if a[0] is None or t < a[0] else a[0]
                        a[1] = t if a[1] is None or t > a[1] else a[1]
            for pid in m.recipients:
                if not pid:
                    continue
                a = agg.get((src, pid))
                if a is None:
                    agg[(src, pid)] = [t, t, 0]
                elif t is not None:
                    a[0] = t if a[0] is None or t < a[0] else a[0]
                    a[1] = t if a[1] is None or t > a[1] else a[1]
        if agg:
            cur = self.conn.connection.driver_connection.cursor()
            cur.executemany(_UPSERT_PARTICIPANT, [
                (src, pid, participant_kind(pid, src), *a) for (src, pid), a in agg.items()
            ])

    # ---- the directory ------------------------------------------------------------

    PERSON_FIELDS = ("kind", "name", "alias", "mobile", "mobile_digits", "email", "department", "organisation",
                     "position")

    def person(self, source: str, pid: str, origin: str, fields: dict[str, Any], at: int | None, serial: int,
               valid_to: int | None = None) -> None:
        """What ``origin`` says of a person from ``at`` on: a new history row when it differs
        from the row current at ``at`` (which then ends at ``at``). The participant's display
        name follows the newest name."""
        p = s.people
        vals = {k: fields.get(k) for k in self.PERSON_FIELDS}
        cur = self.conn.execute(
            select(p).where(p.c.source == source, p.c.person == pid, p.c.origin == origin, p.c.valid_to.is_(None))
            .order_by(p.c.valid_from.desc()).limit(1)).mappings().first()
        if cur is not None and all(cur[k] == v for k, v in vals.items()) and valid_to is None:
            return
        if cur is not None and valid_to is None:
            self.conn.execute(update(p).where(p.c.row == cur["row"]).values(valid_to=at))
        elif cur is None and self.conn.execute(select(p.c.row).where(
                p.c.source == source, p.c.person == pid, p.c.origin == origin).limit(1)).first() is None:
            at = None  # the first we hear of them: true since before anything we know
        self.conn.execute(p.insert().values(source=source, person=pid, origin=origin, valid_from=at,
                                            valid_to=valid_to, serial=serial, **vals))
        if vals["name"] and valid_to is None:
            from wxarchive.model import participant_kind

            self.conn.execute(
                sqlite_insert(s.participants)
                .values(source=source, id=pid, kind=vals["kind"] or participant_kind(pid, source), display_name=vals["name"],
                        message_count=0)
                .on_conflict_do_update(index_elements=["source", "id"], set_={"display_name": vals["name"]}))

    def hr_history(self, source: str, pid: str, rows: list[tuple[dict[str, Any], int | None, int | None]],
                   serial: int) -> None:
        """An HR import's whole statement about a person (fields, valid_from, valid_to per row):
        it replaces what earlier imports said of them (a re-import changes nothing)."""
        p = s.people
        self.conn.execute(p.delete().where(p.c.source == source, p.c.person == pid, p.c.origin == "hr"))
        from wxarchive.model import participant_kind

        for fields, start, end in rows:
            vals = {k: fields.get(k) for k in self.PERSON_FIELDS}
            vals["kind"] = vals["kind"] or participant_kind(pid, source)
            self.conn.execute(p.insert().values(source=source, person=pid, origin="hr", valid_from=start,
                                                valid_to=end, serial=serial, **vals))
        current = [f for f, _, end in rows if end is None and f.get("name")]
        known = self.conn.execute(select(s.participants.c.display_name).where(
            s.participants.c.source == source, s.participants.c.id == pid)).first()
        if current and known is not None and not known[0]:  # the APIs' name, when there is one, stays shown
            self.conn.execute(update(s.participants).where(s.participants.c.source == source,
                                                           s.participants.c.id == pid)
                              .values(display_name=current[-1]["name"]))

    def set_departments(self, source: str, names: dict[int, str]) -> None:
        key = f"departments:{source}"
        self.conn.execute(sqlite_insert(s.meta).values(key=key, value=json.dumps(names))
                          .on_conflict_do_update(index_elements=["key"], set_={"value": json.dumps(names)}))

    def departments(self, source: str) -> dict[int, str]:
        row = self.conn.execute(select(s.meta.c.value).where(s.meta.c.key == f"departments:{source}")).first()
        return {int(k): v for k, v in json.loads(row[0]).items()} if row else {}

    def group_title(self, source: str, roomid: str, title: str | None) -> None:
        if title:
            self.conn.execute(update(s.conversations).where(s.conversations.c.source == source,
                                                            s.conversations.c.id == roomid).values(title=title))

    def consent(self, source: str, external_id: str, scope: str, status: str, changed_at: int | None,
                checked_at: int, serial: int) -> None:
        """The latest known consent state: a report replaces the stored one unless it is older
        (a consent message, or an API answer with its status_change_time; an answer with no
        time, such as Default_Agree, replaces only a state of unknown time)."""
        self.conn.exec_driver_sql(
            "INSERT INTO consent (source, external_id, scope, status, changed_at, checked_at, serial) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, external_id, scope) DO UPDATE SET "
            "status = excluded.status, changed_at = excluded.changed_at, checked_at = excluded.checked_at, "
            "serial = excluded.serial WHERE consent.changed_at IS NULL OR "
            "(excluded.changed_at IS NOT NULL AND excluded.changed_at >= consent.changed_at)",
            (source, external_id, scope, status, changed_at, checked_at, serial))

    def directory_snapshot(self, source: str, state: dict[str, Any]) -> None:
        """Make the catalog's directory of ``source`` what a purge's snapshot of it says (taken
        just before the purge, by ``Catalog.directory_state``): the entries it was derived from
        may be shredded since, and a rebuild meets the snapshot instead. People, consent, group
        titles and participants' names and kinds are set as they were; a participant row is
        made only for one the APIs or a device named (as ``person`` made it, and a purge keeps it:
        anyone else's row is their messages')."""
        self.flush()
        cur = self.conn.connection.driver_connection.cursor()
        for table in ("people", "consent"):
            cols, rows = _snapshot_part(state, table)
            cur.execute(f"DELETE FROM {table} WHERE source = ?", (source,))
            cur.executemany(f"INSERT INTO {table} (source, {', '.join(cols)}) VALUES (?{', ?' * len(cols)})",
                            [(source, *r) for r in rows])
        cols, rows = _snapshot_part(state, "conversations")
        cur.execute("UPDATE conversations SET title = NULL WHERE source = ?", (source,))
        cur.executemany("UPDATE conversations SET title = ? WHERE source = ? AND id = ?",
                        [(d.get("title"), source, d["id"]) for d in (dict(zip(cols, r)) for r in rows)])
        cols, rows = _snapshot_part(state, "participants")
        cur.execute("UPDATE participants SET display_name = NULL WHERE source = ?", (source,))
        from wxarchive.model import participant_kind

        for d in (dict(zip(cols, r)) for r in rows):
            kind = d.get("kind") or participant_kind(d["id"], source)
            cur.execute("UPDATE participants SET kind = ?, display_name = ? WHERE source = ? AND id = ?",
                        (kind, d.get("display_name"), source, d["id"]))
            if cur.rowcount == 0 and _named(cur, source, d["id"]):
                cur.execute("INSERT INTO participants (source, id, kind, display_name, message_count) "
                            "VALUES (?, ?, ?, ?, 0)", (source, d["id"], kind, d.get("display_name")))
        key = f"departments:{source}"
        if state.get("departments") is None:
            cur.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            cur.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                        "value = excluded.value", (key, state["departments"]))

    def _consent_messages(self, msgs: list[tuple[Message, int]]) -> None:
        """Agree / disagree messages are consent reports of their own (case P4)."""
        for m, _ in msgs:
            if m.kind.value != "consent" or not isinstance(m.content, dict):
                continue
            ext = m.content.get("userid") or m.sender
            if not ext:
                continue
            if m.conversation_kind == "direct":
                others = [p for p in m.conversation_id.split("|") if p != ext]
                scope = others[0] if others else m.conversation_id
            else:
                scope = m.conversation_id
            at = m.content.get("time") if isinstance(m.content.get("time"), int) else m.sent_at
            self.consent(m.source, str(ext), scope, "Agree" if m.content.get("agree") else "Disagree", at,
                         m.sent_at or 0, 0)

    # ---- admin events (legal holds, purge tombstones) -------------------------------

    def census(self, source: str, meta: dict[str, Any], serial: int, at: int) -> None:
        """The latest census of a device copy: how many messages it held, captured and excluded
        (personal) — counts only, per UTC day."""
        value = json.dumps({**{k: v for k, v in meta.items() if k != "source"}, "serial": serial, "at": at},
                           ensure_ascii=False)
        # the newest by journal serial wins (a census carried forward by a purge is an older one)
        self.conn.exec_driver_sql(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value "
            "WHERE coalesce(json_extract(meta.value, '$.serial'), 0) <= ?", (f"census:{source}", value, serial))

    def admin_event(self, kind: str, meta: dict[str, Any], serial: int, at: int) -> None:
        """What an administrative journal entry changes in the catalog (most change nothing)."""
        self.flush()
        cur = self.conn.connection.driver_connection.cursor()
        # Each sets only its own columns, whatever came first: after a purge carried a hold's
        # creation forward, a rebuild meets its (older) release before it.
        if kind == "admin.hold.create":
            cur.execute("INSERT INTO holds (name, reason, filters, created_by, created_at, created_serial) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET reason = excluded.reason, "
                        "filters = excluded.filters, created_by = excluded.created_by, "
                        "created_at = excluded.created_at, created_serial = excluded.created_serial",
                        (meta["name"], meta["reason"], _dumps(meta.get("filters") or {}), meta.get("who", ""),
                         at, serial))
        elif kind == "admin.hold.release":
            cur.execute("INSERT INTO holds (name, reason, filters, created_by, created_at, created_serial, released_by, "
                        "released_at, release_reason) VALUES (?, '', '{}', '', 0, 0, ?, ?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET released_by = excluded.released_by, "
                        "released_at = excluded.released_at, release_reason = excluded.release_reason "
                        "WHERE holds.released_at IS NULL OR holds.released_at = excluded.released_at",
                        (meta["name"], meta.get("who", ""), at, meta.get("reason")))
        elif kind == "admin.purge":
            self._purge(cur, meta, serial, at)


    def _purge(self, cur, meta: dict[str, Any], serial: int, at: int) -> None:
        removed = [tuple(k) for k in meta.get("removed", [])]  # (source, key, kind, raw_serial, cursor)
        convs: set[tuple[str, str]] = set()
        people: set[tuple[str, str]] = set()
        for src, key, kind, raw, cursor in removed:
            row = cur.execute("SELECT id, text, conversation_id, sender, recipients FROM messages "
                              "WHERE source = ? AND msgid = ?", (src, key)).fetchone()
            if row is not None:
                mid, txt, conv, sender, recipients = row
                fts.unindex_row(cur, mid, txt)
                cur.execute("DELETE FROM attachments WHERE message_id = ?", (mid,))
                cur.execute("DELETE FROM messages WHERE id = ?", (mid,))
                convs.add((src, conv))
                people.update((src, p) for p in [sender, *json.loads(recipients or "[]")] if p)
            # an upsert: a rebuild from the journal no longer sees the shredded raw entry
            cur.execute("INSERT INTO records (source, key, kind, raw_serial, cursor, state, reason) "
                        "VALUES (?, ?, ?, ?, ?, 'purged', ?) ON CONFLICT (source, key) DO UPDATE SET "
                        "state = 'purged', reason = excluded.reason",
                        (src, key, kind, raw, cursor, f"purged under retention (journal entry {serial})"))
        self._recount(cur, convs, people)
        cur.execute("INSERT OR REPLACE INTO purges (segment, tombstone_serial, purged_at, purged_by, records, retained) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (meta["segment"], serial, at, meta.get("who", ""), len(removed), len(meta.get("retained", []))))

    @staticmethod
    def _recount(cur, convs: set[tuple[str, str]], people: set[tuple[str, str]]) -> None:
        """Conversation and participant aggregates as a rebuild from the remaining messages (and
        the directory) gives them."""
        for src, conv in convs:
            n, lo, hi = cur.execute("SELECT count(*), min(sent_at), max(sent_at) FROM messages "
                                    "WHERE source = ? AND conversation_id = ?", (src, conv)).fetchone()
            if n == 0:
                cur.execute("DELETE FROM conversations WHERE source = ? AND id = ?", (src, conv))
            else:
                cur.execute("UPDATE conversations SET message_count = ?, first_at = ?, last_at = ? "
                            "WHERE source = ? AND id = ?", (n, lo, hi, src, conv))
        for src, pid in people:
            sent, lo, hi = 0, None, None
            for sender, t, recipients in cur.execute(
                    "SELECT sender, sent_at, recipients FROM messages WHERE source = ? AND "
                    "(sender = ? OR instr(recipients, ?) > 0)", (src, pid, json.dumps(pid))):
                if sender != pid and pid not in json.loads(recipients or "[]"):
                    continue
                sent += sender == pid
                if t is not None:
                    lo = t if lo is None or t < lo else lo
                    hi = t if hi is None or t > hi else hi
            # one the APIs or a device named stays (with no messages): a rebuild, which no longer
            # meets the purged messages, makes their row from the directory answer alone
            if not cur.execute("SELECT 1 FROM messages WHERE source = ? AND (sender = ? OR instr(recipients, ?) > 0) "
                               "LIMIT 1", (src, pid, json.dumps(pid))).fetchone() and not _named(cur, src, pid):
                cur.execute("DELETE FROM participants WHERE source = ? AND id = ?", (src, pid))
            else:
                cur.execute("UPDATE participants SET message_count = ?, first_seen = ?, last_seen = ? "
                            "WHERE source = ? AND id = ?", (sent, lo, hi, src, pid))

    def retained_copy(self, kind: str, meta: dict[str, Any], serial: int) -> None:
        """An entry copied forward out of a segment about to be purged (a held record): the
        catalog's rows now derive from the copy."""
        self.flush()
        cur = self.conn.connection.driver_connection.cursor()
        if kind == "wecom.chatdata":
            cur.execute("UPDATE records SET raw_serial = ? WHERE source = ? AND key = ?",
                        (serial, meta["source"], meta["key"]))
            cur.execute("UPDATE messages SET raw_serial = ? WHERE source = ? AND msgid = ? AND raw_serial = ?",
                        (serial, meta["source"], meta["key"], meta["retained_from"]))
        elif kind == "wecom.message":
            cur.execute("UPDATE messages SET serial = ?, raw_serial = ? WHERE source = ? AND msgid = ?",
                        (serial, meta.get("raw_serial"), meta["source"], meta["key"]))
        elif kind == "wechat.row":
            cur.execute("UPDATE records SET raw_serial = ? WHERE source = ? AND key = ?",
                        (serial, meta["source"], meta["key"]))
            cur.execute("UPDATE messages SET serial = ?, raw_serial = ? WHERE source = ? AND msgid = ?",
                        (serial, serial, meta["source"], meta["key"]))

    def attachment_result(self, source: str, msgid: str, path: str, state: str, reason: str | None,
                          sha256: str | None, size: int | None, media_type: str | None = None) -> None:
        self.flush()
        mid = self.conn.execute(
            select(s.messages.c.id).where(s.messages.c.source == source, s.messages.c.msgid == msgid)
        ).scalar()
        if mid is None:
            return
        self.conn.execute(
            update(s.attachments)
            .where(s.attachments.c.message_id == mid, s.attachments.c.path == path)
            .values(state=state, reason=reason, sha256=sha256, size=size,
                    **({"media_type": media_type} if media_type else {}))
        )

    def cursor(self, source: str, cursor: str, serial: int) -> None:
        """The newest cursor by journal serial (one a purge carried forward is an older one)."""
        now = int(time.time() * 1000)
        self.conn.execute(
            sqlite_insert(s.cursors)
            .values(source=source, cursor=cursor, serial=serial, updated_at=now)
            .on_conflict_do_update(
                index_elements=["source"], set_={"cursor": cursor, "serial": serial, "updated_at": now},
                where=s.cursors.c.serial <= serial,
            )
        )

    _COUNTS = ("pulled", "archived", "duplicates", "quarantined", "recovered")

    def run_start(self, run_id: int, source: str, at: int, start_cursor: str | None) -> None:
        """A run's start; its end may have been applied first (a rebuild after a purge carried
        the start forward): then only the start's own columns are set."""
        ins = sqlite_insert(s.runs).values(id=run_id, source=source, started_at=at, status="running",
                                           start_cursor=start_cursor, **{k: 0 for k in self._COUNTS})
        self.conn.execute(ins.on_conflict_do_update(
            index_elements=["id"], set_={"source": source, "started_at": at, "start_cursor": start_cursor}))

    def run_end(self, run_id: int, source: str, at: int, status: str, error: str | None, counts: dict[str, int],
                end_cursor: str | None) -> None:
        """A run's end, its start applied or not yet (its started_at stands in until then)."""
        end = {"ended_at": at, "status": status, "error": error, "end_cursor": end_cursor,
               **{k: counts.get(k, 0) for k in self._COUNTS}}
        ins = sqlite_insert(s.runs).values(id=run_id, source=source, started_at=at, **end)
        self.conn.execute(ins.on_conflict_do_update(index_elements=["id"], set_=end))
