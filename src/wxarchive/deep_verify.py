"""``wxarchive verify --deep``: the catalog rebuilt from the journal, compared with the live one.

Plain ``verify`` proves the journal whole and that the catalog holds a row for every record
and none more (identities and counts). It does not re-derive what the rows *say*: someone
editing ``catalog.db`` (a message's text, its sender or time, an attachment's hash) or its
full-text indexes (an index entry removed: searches would then miss that message) goes
unnoticed by it. The deep check closes that gap the only way that cannot drift from the
ingest: it applies every journal entry, with the ingest's own ``apply``, to a scratch
catalog and compares the two, table by table and index by index:

- every table, by natural key (ids and other surrogate keys left out): messages (every
  column, the folded text and the external flag included), attachments (by message and
  path), records, cursors, runs, conversations, participants, people, consent, holds,
  purges — a row the journal does not give, a row missing, or a row altered, with the
  columns that differ;
- both full-text indexes (trigram and unigram), message by message through ``fts5vocab``
  'instance': each message's entries (how many, and sums over their terms and positions)
  keyed by its (source, msgid) through each catalog's own ids, so an entry removed, added or
  moved, and a message whose id was changed under the index (search would no longer find
  it), all show. (A change keeping a message's count and both sums equal would not.)

The live catalog is read in one read transaction (WAL: an ingest may go on meanwhile); the
scratch catalog is built up to what that snapshot has applied. The scratch file is
``<home>/tmp/deep-verify-<host>-<pid>.db`` (``<home>/tmp`` a real folder of ours, mode 0700): SQLCipher under a random key when the live catalog is
encrypted, plain (the same exposure as ``catalog.db``) when it is not; it is deleted at the
end, and files left by a killed run are deleted by the next one.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from pathlib import Path

from wxarchive.archive.catalog.sqlite import Catalog, connect_dbapi
from wxarchive.archive.files import pid_alive as _alive
from wxarchive.archive.journal import Journal
from wxarchive.archive.keys import MasterKeyProvider
from wxarchive.archive.verify import Problem, Report

ProgressFn = Callable[[str, int], None]
EXAMPLES = 10  # differing rows named per table (the rest are counted)

# table -> (SELECT list over alias t (and m for the message an attachment belongs to), FROM
# clause with {db} for the schema, how many leading items of the SELECT list are its natural key)
_TABLES: dict[str, tuple[str, str, int]] = {
    "messages": ("t.source, t.msgid, t.seq, t.conversation_id, t.conversation_kind, t.sender, t.recipients, "
                 "t.sent_at, t.kind, t.source_type, t.action, t.text, t.content, t.reply_to, t.recalls, "
                 "t.recalled_by, t.flags, t.raw_serial, t.serial, t.external, t.folded", "{db}.messages t", 2),
    "attachments": ("m.source, m.msgid, t.path, t.kind, t.file_name, t.media_type, t.declared_size, t.declared_md5, "
                    "t.source_ref, t.state, t.reason, t.sha256, t.size",
                    "{db}.attachments t JOIN {db}.messages m ON m.id = t.message_id", 3),
    "records": ("t.source, t.key, t.kind, t.raw_serial, t.cursor, t.state, t.reason", "{db}.records t", 2),
    "cursors": ("t.source, t.cursor, t.serial", "{db}.cursors t", 1),
    "runs": ("t.id, t.source, t.started_at, t.ended_at, t.status, t.error, t.pulled, t.archived, t.duplicates, "
             "t.quarantined, t.recovered, t.start_cursor, t.end_cursor", "{db}.runs t", 1),
    "conversations": ("t.source, t.id, t.kind, t.title, t.first_at, t.last_at, t.message_count", "{db}.conversations t", 2),
    "participants": ("t.source, t.id, t.kind, t.display_name, t.first_seen, t.last_seen, t.message_count",
                     "{db}.participants t", 2),
    "people": ("t.source, t.person, t.origin, t.valid_from, t.serial, t.kind, t.name, t.alias, t.mobile, "
               "t.mobile_digits, t.email, t.department, t.organisation, t.position, t.valid_to", "{db}.people t", 5),
    "consent": ("t.source, t.external_id, t.scope, t.status, t.changed_at, t.checked_at, t.serial", "{db}.consent t", 3),
    "holds": ("t.name, t.reason, t.filters, t.created_by, t.created_at, t.created_serial, t.released_by, "
              "t.released_at, t.release_reason", "{db}.holds t", 1),
    "purges": ("t.segment, t.tombstone_serial, t.purged_at, t.purged_by, t.records, t.retained", "{db}.purges t", 1),
    # the catalog's own notes (census per WeChat copy, departments...); not when it last ran ANALYZE
    "meta": ("t.key, t.value", "{db}.meta t WHERE t.key != 'analyzed_messages'", 1),
}
_INDEXES = {"messages_fts": "trigram", "messages_uni": "unigram"}


def _noop(stage: str, n: int) -> None:
    pass


class DeepCheckError(Exception):
    """The deep check could not run (not a finding about the archive): exit 2."""


def _scratch_dir(home: Path) -> Path:
    """``<home>/tmp``: a real directory of ours, mode 0700 (never through a symlink: the scratch
    catalog holds what the catalog holds)."""
    d = home / "tmp"
    try:
        d.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(d)
    except OSError as e:
        raise DeepCheckError(f"{d}: cannot make the folder for the scratch catalog ({e.strerror or e})") from None
    import stat

    if not stat.S_ISDIR(st.st_mode):
        raise DeepCheckError(f"{d}: not a folder (a symlink or a file?): the scratch catalog is only written to "
                             "a real folder of the archive home; move it away")
    if st.st_uid != os.getuid():
        raise DeepCheckError(f"{d}: owned by another account; the scratch catalog is only written to a folder of ours")
    if stat.S_IMODE(st.st_mode) != 0o700:
        try:
            os.chmod(d, 0o700)
        except OSError as e:
            raise DeepCheckError(f"{d}: cannot make it private (mode 0700): {e.strerror or e}") from None
    host = _host()
    for old in d.glob("deep-verify-*.db*"):  # left by a killed run of this host (its pid is gone)
        parts = old.name.split(".")[0].split("-")  # deep-verify-<host>-<pid>
        if len(parts) >= 4 and parts[2] == host and parts[3].isdigit() and int(parts[3]) != os.getpid() \
                and not _alive(int(parts[3])):
            old.unlink(missing_ok=True)
    return d


def _host() -> str:
    import socket

    return "".join(c for c in socket.gethostname() if c.isalnum()) or "host"


def _catch_up(journal: Journal, scratch: Catalog, to: int, progress: ProgressFn) -> None:
    """Apply journal entries to the scratch catalog up to serial ``to`` (the ingest's apply)."""
    from wxarchive.ingest import apply

    target = types.SimpleNamespace(catalog=scratch)  # apply only ever touches .catalog
    buf = []
    done = scratch.applied_serial()
    for e in journal.entries(after=done):
        if e.serial > to:
            break
        buf.append(e)
        if len(buf) >= 2000:
            apply(target, buf)
            done = buf[-1].serial
            progress("rebuilding", done)
            buf = []
    apply(target, buf)


def _describe(row: tuple, other: tuple | None, cols: list[str]) -> str:
    if other is None:
        return ""
    diff = [c for c, a, b in zip(cols, row, other) if a != b]
    return f" ({', '.join(diff)} differ{'s' if len(diff) == 1 else ''})"


def _compare_table(con, table: str, report: Report) -> int:
    select_list, source, nkey = _TABLES[table]
    cols = [c.split(".", 1)[1] for c in select_list.split(", ")]
    live = f"SELECT {select_list} FROM {source.format(db='main')}"
    rebuilt = f"SELECT {select_list} FROM {source.format(db='rebuilt')}"
    extra = con.execute(f"SELECT count(*) FROM ({live} EXCEPT {rebuilt})").fetchone()[0]
    missing = con.execute(f"SELECT count(*) FROM ({rebuilt} EXCEPT {live})").fetchone()[0]
    n_live = con.execute(f"SELECT count(*) FROM ({live})").fetchone()[0]
    n_rebuilt = con.execute(f"SELECT count(*) FROM ({rebuilt})").fetchone()[0]
    if not extra and not missing:
        if n_live != n_rebuilt:  # the same rows, some more than once (EXCEPT sees sets)
            report.add(Problem("catalog", f"catalog.db/{table}", f"{n_live} rows where the journal gives {n_rebuilt} "
                                                                  "(rows duplicated)"))
            return abs(n_live - n_rebuilt)
        return 0
    ex = con.execute(f"{live} EXCEPT {rebuilt} LIMIT {EXAMPLES}").fetchall()
    mi = con.execute(f"{rebuilt} EXCEPT {live} LIMIT {EXAMPLES}").fetchall()
    # the rebuilt rows of the same keys, to tell "altered" (and how) from "added"
    others: dict[tuple, tuple] = {}
    key_cols = [c.strip() for c in select_list.split(", ")][:nkey]
    cond = " AND ".join(f"{c} IS ?" for c in key_cols)
    for r in ex:
        got = con.execute(f"{rebuilt} {'AND' if ' WHERE ' in source else 'WHERE'} {cond} LIMIT 1", r[:nkey]).fetchone()
        if got is not None:
            others[r[:nkey]] = got
    for r in ex:
        other = others.get(r[:nkey])
        what = "altered" if other is not None else "not what the journal gives (added or altered)"
        report.add(Problem("catalog", f"catalog.db/{table}", f"row {_key(r[:nkey])} {what}{_describe(r, other, cols)}"))
    for r in mi:
        if r[:nkey] in others:
            continue
        live_row = con.execute(f"{live} {'AND' if ' WHERE ' in source else 'WHERE'} {cond} LIMIT 1", r[:nkey]).fetchone()
        what = "missing (the journal gives it)" if live_row is None else f"altered{_describe(live_row, r, cols)}"
        report.add(Problem("catalog", f"catalog.db/{table}", f"row {_key(r[:nkey])} {what}"))
    n = max(extra, missing)
    if extra > len(ex) or missing > len(mi):
        report.notes.append(f"catalog.db/{table}: {extra} row(s) not as the journal gives them, {missing} it gives "
                            "not there as given (the first of each shown as problems)")
    return n


def _key(k: tuple) -> str:
    return "/".join("NULL" if v is None else str(v) for v in k)


def _compare_index(con, table: str, report: Report) -> int:
    """Each message's entries in a full-text index (from fts5vocab 'instance': how many, and
    sums over their terms and positions), keyed by the message's (source, msgid) through each
    catalog's own ids, live against rebuilt: an entry removed, added or moved, or an index row
    whose id no message has (a message whose id was changed is no longer found by search)."""
    name = _INDEXES[table]
    per_message = {}
    for db in ("main", "rebuilt"):
        con.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab_{db}_{table} USING fts5vocab({db}, {table}, 'instance')")
        per_message[db] = (
            f"SELECT m.source, m.msgid, v.n, v.so, v.su, v.tl FROM (SELECT doc, count(*) AS n, sum(offset) AS so, "
            f"sum(unicode(term) * (offset + 1)) AS su, total(length(term)) AS tl FROM temp.vocab_{db}_{table} "
            f"GROUP BY doc) v LEFT JOIN {db}.messages m ON m.id = v.doc")
    live, rebuilt = per_message["main"], per_message["rebuilt"]
    extra = con.execute(f"SELECT count(*) FROM ({live} EXCEPT {rebuilt})").fetchone()[0]
    missing = con.execute(f"SELECT count(*) FROM ({rebuilt} EXCEPT {live})").fetchone()[0]
    if not extra and not missing:
        return 0
    where = f"catalog.db/{table}"
    if con.execute(f"SELECT count(*) FROM ({live}) WHERE msgid IS NULL").fetchone()[0]:
        report.add(Problem("catalog", where, f"the {name} full-text index holds entries for ids no message has "
                                             "(a message's id changed, or entries added): searches miss or invent hits"))
    wrong = [r[:2] for r in con.execute(f"{live} EXCEPT {rebuilt} LIMIT {EXAMPLES}") if r[1] is not None]
    lost = [r[:2] for r in con.execute(f"{rebuilt} EXCEPT {live} LIMIT {EXAMPLES}")]
    for src, msgid in dict.fromkeys(wrong + lost):
        report.add(Problem("catalog", where, f"message {src}/{msgid}: its {name} index entries are not what its text "
                                             "gives (removed, added or altered: searches may miss or invent it)"))
    if extra > len(wrong) or missing > len(lost):
        report.notes.append(f"{where}: {max(extra, missing)} message(s) whose {name} index entries differ from the "
                            "rebuild (the first shown as problems); run 'wxarchive reindex'")
    return max(extra, missing)


def deep_check(home: Path, master: MasterKeyProvider, report: Report, progress: ProgressFn = _noop) -> None:
    """Rebuild the catalog from the journal in a scratch file and add to ``report`` every way
    the live catalog differs from it (see the module docstring). DeepCheckError: could not run."""
    live_path = home / "catalog.db"
    if not live_path.exists():
        return  # plain verify has said so
    ck = home / "keys" / "catalog.key"
    live_key = master.unwrap(ck.read_bytes()) if ck.exists() else None
    scratch_key = os.urandom(32) if live_key is not None else None
    path = _scratch_dir(home) / f"deep-verify-{_host()}-{os.getpid()}.db"
    files = (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
    for f in files:
        f.unlink(missing_ok=True)
    con = journal = scratch = None
    try:
        scratch = Catalog.open(path, scratch_key)
        journal = Journal.open(home / "journal", master, readonly=True)
        con = connect_dbapi(live_path, live_key, readonly=True)
        key_clause = f" KEY \"x'{scratch_key.hex()}'\"" if scratch_key is not None else ""
        con.execute(f"ATTACH DATABASE ? AS rebuilt{key_clause}", (str(path),))
        con.isolation_level = None  # transactions by hand: one snapshot of the live catalog
        con.execute("BEGIN")
        try:  # the snapshot starts here (WAL: an ingest may go on; this read sees none of it)
            row = con.execute("SELECT value FROM main.meta WHERE key = 'applied_serial'").fetchone()
            applied = int(row[0]) if row else 0
        except ValueError:
            report.add(Problem("catalog", "catalog.db", "its applied serial is not a number (altered)"))
            return
        # the scratch catalog is written by its own connection; this one has not read it yet, so
        # its first read below sees all of it
        _catch_up(journal, scratch, applied, progress)
        if scratch.applied_serial() != applied:
            report.add(Problem("catalog", "catalog.db", f"says it applied journal entry {applied}, which the "
                                                        "journal does not hold"))
            return
        if applied > report.head_serial:
            report.notes.append(f"--deep: an ingest went on meanwhile; the catalog was compared up to entry {applied} "
                                f"(entries after {report.head_serial} were authenticated as they were read, their "
                                "chain is checked by the next verify)")
        progress("comparing", applied)
        try:
            for table in _TABLES:
                _compare_table(con, table, report)
            for table in _INDEXES:
                _compare_index(con, table, report)
        except _db_errors() as e:
            report.add(Problem("catalog", "catalog.db", f"its tables or indexes are damaged ({e}): run 'wxarchive "
                                                        "reindex' after keeping a copy for investigation"))
            return
        report.deep_checked = applied
    except _db_errors() as e:
        raise DeepCheckError(f"the deep check could not run: {e}") from None
    finally:
        if con is not None:
            con.close()
        if journal is not None:
            journal.close()
        if scratch is not None:
            scratch.close()
        for f in files:
            f.unlink(missing_ok=True)


def _db_errors() -> tuple[type[Exception], ...]:
    import sqlite3

    errors: list[type[Exception]] = [sqlite3.Error]
    try:
        from sqlcipher3 import dbapi2

        errors.append(dbapi2.Error)
    except ImportError:
        pass
    return tuple(errors)


# What a transcript or an export shows of a message, as the catalog stores it (JSON columns
# compared as values): checked against the journal entry the row derives from.
_SHOWN = ["serial", "source", "msgid", "conversation_id", "conversation_kind", "sender", "recipients", "sent_at",
          "kind", "source_type", "action", "text", "content", "reply_to", "recalls", "flags"]
_JSON = {"recipients", "content", "flags"}


def check_selection(archive, q, limit: int = 5) -> tuple[int, list[str]]:
    """Every message ``q`` selects, its catalog row compared with what its journal entry says
    (parsed again, as ``apply`` parses it): (messages checked, problems, at most ``limit``).

    What an export is made from, checked before the export is signed: the catalog is a derived
    file anyone with the disk can edit (plain ``verify`` checks only which rows exist), and a
    signed export of an edited row would carry the edit with the archive's signature. Rows
    and entries are walked together in serial order: memory stays flat, and only the message
    entries between the first and last selected serial are decrypted. Not compared: what
    other entries add to a row (recalled_by, attachment outcomes, the directory's names)."""
    import json

    from wxarchive.archive.catalog.sqlite import _dumps
    from wxarchive.ingest import _parse_entry, _parse_wechat
    from wxarchive.search.query import rows_by_serial

    rows = rows_by_serial(archive.catalog.engine, q, _SHOWN)
    problems: list[str] = []
    checked = 0
    row = next(rows, None)
    if row is None:
        return 0, []
    entries = archive.journal.entries(after=row[0] - 1, kinds={"wecom.message", "wechat.row", "shredded"})
    entry = next(entries, None)
    while row is not None:
        while entry is not None and entry.serial < row[0]:
            entry = next(entries, None)
        got = dict(zip(_SHOWN, row))
        where = f"message {got['msgid']} (journal entry {got['serial']})"
        checked += 1
        if entry is None or entry.serial != row[0] or entry.kind == "shredded":
            problems.append(f"{where}: the journal has no readable message entry there")
        else:
            msg, err = (_parse_wechat if entry.kind == "wechat.row" else _parse_entry)(entry)
            if msg is None:
                problems.append(f"{where}: its journal entry does not parse ({err}), yet the catalog has a row")
            else:
                want = {"serial": entry.serial, "source": msg.source, "msgid": msg.msgid,
                        "conversation_id": msg.conversation_id, "conversation_kind": msg.conversation_kind,
                        "sender": msg.sender, "recipients": msg.recipients, "sent_at": msg.sent_at,
                        "kind": msg.kind.value, "source_type": msg.source_type, "action": msg.action,
                        "text": msg.text, "content": msg.content, "reply_to": msg.reply_to,
                        "recalls": msg.recalls, "flags": msg.flags}
                differ = [k for k in _SHOWN if (json.loads(got[k]) if k in _JSON and got[k] is not None
                                                else got[k]) != (json.loads(_dumps(want[k])) if k in _JSON
                                                                 else want[k])]
                if differ:
                    problems.append(f"{where}: the catalog's {', '.join(differ)} differ from the journal's")
        if len(problems) >= limit:
            rows.close()
            break
        row = next(rows, None)
    return checked, problems
