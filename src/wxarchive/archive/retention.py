"""Retention, legal holds and purge by crypto-shredding.

**Policy**: records are kept ``retention_years`` (default 7, SEC 17a-4) from capture, per
source overridable (``[archive] retention_by_source = {"wecom:ww…" = 10}``). Capture time
bounds sent-at from above (WeCom keeps records ~3 days), so "expired by capture time"
implies "expired by sent-at".

**Unit of purge**: a closed journal segment, once its newest entry is past retention.
Purging destroys the segment's data key (crypto-shredding): the entries stay in the hash
chain, so ``verify`` still proves the journal whole, but their content is gone for good.

**Legal holds** (``hold create NAME --reason … [filters]``) are journaled admin events; a
record matching an active hold is never purged: before its segment's key is destroyed,
every journal entry of a held record (raw item, decrypted message, media outcomes) is
copied forward into the live segment (``retained_from`` names the original), and the
catalog follows the copies.

**Purge** is a dry run unless executed. Executing, crash-safe in this order (re-running
finishes an interrupted purge): for every eligible segment, copy held records forward and
carry its state entries forward (CARRIED_KINDS) → one directory snapshot per source the
segments fed (below CARRIED_KINDS) → per segment, journal a tombstone (``admin.purge``:
segment, serial range, policy, every removed record (source, key, kind, raw entry, cursor),
every retained one, blobs removed, who; signed with the archive's Ed25519 key and covered
by a checkpoint) → catalog rows removed → blobs only those records used deleted → the
segment's data key destroyed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wxarchive.archive.journal import iter_frames

YEAR_MS = int(365.25 * 24 * 3600 * 1000)
HOLD_FILTERS = ("sender", "conversation", "since", "until", "text")


class RetentionError(Exception):
    """A retention or hold request cannot be carried out; the message says why."""


@dataclass
class RetentionPolicy:
    years: float = 7.0
    by_source: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, archive_settings: dict[str, Any]) -> RetentionPolicy:
        import math

        def years_of(v: Any, what: str) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 1000:
                raise RetentionError(f"[archive] {what} must be a number of years above 0 and at most 1000, "
                                     f"not {v!r}")
            return float(v)

        years = years_of(archive_settings.get("retention_years", 7), "retention_years")
        by_source = archive_settings.get("retention_by_source") or {}
        if not isinstance(by_source, dict):
            raise RetentionError("[archive] retention_by_source must be a table: {\"wecom:ww…\" = 10}")
        return cls(years, {str(k): years_of(v, f"retention_by_source.{k}") for k, v in by_source.items()})

    def years_for(self, sources: set[str]) -> float:
        return max([self.by_source.get(s, self.years) for s in sources] or [self.years])


@dataclass
class SegmentPlan:
    segment: str
    first_serial: int
    last_serial: int
    last_time: int  # ms: the newest entry's capture time
    sources: list[str]
    years: float
    expires_at: int
    records: int  # live (not yet purged) raw records in the segment
    held: list[list[str]]  # [source, msgid] of held records with entries in the segment
    purgeable: int  # of ``records``, those a purge removes (not held)
    eligible: bool
    why: str


def _utc(ms: int) -> str:
    from datetime import datetime, timezone

    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):  # beyond what a date can show (a retention of centuries)
        return ""


@dataclass
class PurgePlan:
    now: int
    segments: list[SegmentPlan]

    @property
    def eligible(self) -> list[SegmentPlan]:
        return [s for s in self.segments if s.eligible]

    def to_dict(self) -> dict[str, Any]:
        """The plan for a script: times in epoch ms, each with an ``_utc`` twin in ISO 8601."""
        segments = [{**asdict(s), "last_time_utc": _utc(s.last_time), "expires_at_utc": _utc(s.expires_at)}
                    for s in self.segments]
        return {"now": self.now, "now_utc": _utc(self.now), "segments": segments,
                "eligible_segments": len(self.eligible),
                "records_to_purge": sum(s.purgeable for s in self.eligible),
                "records_held": sum(s.records - s.purgeable for s in self.eligible)}


# ---- holds --------------------------------------------------------------------------------


def active_holds(con) -> list[dict[str, Any]]:
    return [{"name": n, "reason": r, "filters": json.loads(f or "{}"), "created_by": by, "created_at": at}
            for n, r, f, by, at in con.execute(
                "SELECT name, reason, filters, created_by, created_at FROM holds WHERE released_at IS NULL "
                "ORDER BY created_at")]


def _hold_sql(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """SQL over ``messages m`` matching a hold's filters (substring text: no index, no misses)."""
    from wxarchive.archive.catalog.people import compiled, people_named

    conds, args = [], []
    if filters.get("sender"):  # whoever a search for that sender means (names, past names, e-mail, mobile)
        sql, a = compiled(people_named(filters["sender"]))
        conds.append(f"m.sender IN ({sql})")
        args += a
    if filters.get("participant"):  # sender or recipient, as in search
        sql, a = compiled(people_named(filters["participant"]))
        conds.append(f"(m.sender IN ({sql}) OR EXISTS (SELECT 1 FROM json_each(m.recipients) "
                     f"WHERE value IN ({sql})))")
        args += a + a
    if filters.get("conversation"):
        conds.append("(m.conversation_id = ? OR m.conversation_id IN (SELECT id FROM conversations WHERE title = ?))")
        args += [filters["conversation"]] * 2
    if filters.get("since") is not None:
        conds.append("m.sent_at >= ?")
        args.append(int(filters["since"]))
    if filters.get("until") is not None:
        conds.append("m.sent_at < ?")
        args.append(int(filters["until"]))
    if filters.get("text"):
        conds.append("instr(m.text, ?) > 0")
        args.append(filters["text"])
    return (" AND ".join(conds) or "1"), args


def held_in_range(con, first: int, last: int) -> list[list[str]]:
    """[source, msgid] of messages derived from journal entries first..last under an active hold,
    and of the recalls of held messages: that a held message was recalled, and by whom and when,
    is part of its record (a hold's filters would match the recall itself only by chance: it has
    no text, and WeChat's system recall no sender)."""
    out: set[tuple[str, str]] = set()
    in_range = "(m.serial BETWEEN ? AND ? OR m.raw_serial BETWEEN ? AND ?)"
    for hold in active_holds(con):
        where, args = _hold_sql(hold["filters"])
        for src, msgid in con.execute(
                f"SELECT m.source, m.msgid FROM messages m WHERE {in_range} AND {where}",
                [first, last, first, last, *args]):
            out.add((src, msgid))
        # ``where`` speaks of ``m``: here the held original, whose recall ``r`` is in the range
        for src, msgid in con.execute(
                f"SELECT r.source, r.msgid FROM messages r JOIN messages m ON m.source = r.source "
                f"AND m.msgid = r.recalls WHERE {in_range.replace('m.', 'r.')} AND {where}",
                [first, last, first, last, *args]):
            out.add((src, msgid))
    return sorted([list(k) for k in out])


def count_held(con, filters: dict[str, Any]) -> int:
    where, args = _hold_sql(filters)
    return con.execute(f"SELECT count(*) FROM messages m WHERE {where}", args).fetchone()[0]


# ---- planning -----------------------------------------------------------------------------


def _last_time(seg: Path) -> tuple[int, int]:
    """(serial, time) of a segment's newest entry, read from the frames' plain headers."""
    serial, t = 0, 0
    for fr in iter_frames(seg):
        if isinstance(fr, tuple):
            break
        serial, t = fr.serial, fr.time
    return serial, t


def plan_purge(archive, policy: RetentionPolicy, now: int | None = None) -> PurgePlan:
    now = int(time.time() * 1000) if now is None else now
    j = archive.journal
    segs = j.segments()
    con = archive.catalog.engine.raw_connection()
    try:
        purged = {r[0] for r in con.execute("SELECT segment FROM purges")}
        plans = []
        for i, seg in enumerate(segs):
            if seg.name in purged:
                continue
            first = int(seg.stem.split("-")[1])
            last, last_time = _last_time(seg)
            # a record's raw item and the entry its message derives from may lie in two segments:
            # either is kept as long as the record's source wants
            sources = {r[0] for r in con.execute(
                "SELECT DISTINCT source FROM records WHERE raw_serial BETWEEN ? AND ? UNION "
                "SELECT DISTINCT source FROM messages WHERE serial BETWEEN ? AND ?", (first, last, first, last))}
            years = policy.years_for(sources)
            expires = last_time + int(years * YEAR_MS)
            records = con.execute("SELECT count(*) FROM records WHERE raw_serial BETWEEN ? AND ? "
                                  "AND state != 'purged'", (first, last)).fetchone()[0]
            if i == len(segs) - 1:
                eligible, why = False, "the segment still open for appending"
            elif expires > now:
                eligible, why = False, f"kept until {time.strftime('%Y-%m-%d', time.gmtime(expires / 1000))} (UTC)"
            else:
                eligible, why = True, f"past {years:g} years of retention"
            held = held_in_range(con, first, last) if eligible else []
            held_keys = {tuple(k) for k in held}
            purgeable = sum(1 for src, key in con.execute(
                "SELECT source, key FROM records WHERE raw_serial BETWEEN ? AND ? AND state != 'purged'",
                (first, last)) if (src, key) not in held_keys)
            plans.append(SegmentPlan(seg.name, first, last, last_time, sorted(sources), years, expires, records,
                                     held, purgeable, eligible, why))
    finally:
        con.close()
    return PurgePlan(now, plans)


# ---- executing ----------------------------------------------------------------------------


@dataclass
class PurgeResult:
    segments: list[str] = field(default_factory=list)
    records_purged: int = 0
    records_retained: int = 0
    blobs_deleted: int = 0
    tombstones: list[int] = field(default_factory=list)


ApplyFn = Any  # ingest.apply(archive, entries): brings the catalog up to the given journal entries


def _copy_forward(archive, sp: SegmentPlan, apply: ApplyFn) -> None:
    """Re-journal every entry of the segment's held records, unless already copied."""
    held = {tuple(k) for k in sp.held}
    if not held:
        return
    con = archive.catalog.engine.raw_connection()
    try:  # a held message whose row already derives from outside the segment was copied before
        inside = range(sp.first_serial, sp.last_serial + 1)
        done = {(src, key) for src, key, ser, raw in con.execute(
            "SELECT source, msgid, serial, raw_serial FROM messages WHERE serial BETWEEN ? AND ? "
            "OR raw_serial BETWEEN ? AND ?", (sp.first_serial, sp.last_serial, sp.first_serial, sp.last_serial))
            if ser not in inside and raw not in inside}
    finally:
        con.close()
    todo = held - done
    if not todo:
        return
    from wxarchive.archive.journal import Entry

    con = archive.catalog.engine.raw_connection()
    try:  # where each held record's raw item is now (an earlier purge may have moved it)
        raw_at = {(src, key): raw for src, key, raw in con.execute(
            "SELECT source, key, raw_serial FROM records WHERE raw_serial IS NOT NULL") if (src, key) in todo}
    finally:
        con.close()
    j = archive.journal
    copies = []
    head = j.head_serial
    # the segment's own entries of held records, and every later media outcome of theirs: a
    # rebuild must meet a message's media outcomes after the message, so those move with it
    for e in j.entries(after=sp.first_serial - 1):
        if e.serial > head:
            break
        if (e.source, e.key) not in todo or (e.serial > sp.last_serial and e.kind != "media"):
            continue
        meta = {**e.meta, "retained_from": e.serial}
        if e.kind == "wecom.message" and (e.source, e.key) in raw_at:
            meta["raw_serial"] = raw_at[(e.source, e.key)]
        serial = j.append(e.kind, meta, e.data, at=e.time)
        if e.kind == "wecom.chatdata":
            raw_at[(e.source, e.key)] = serial
        copies.append(Entry(serial, e.time, e.kind, meta, e.data))
    j.sync()
    apply(archive, copies)


# What a purge carries forward out of a segment besides held records: the entries the catalog
# derives lasting state from, which are not records under retention — legal holds and their
# releases, earlier purge tombstones, every other administrative event (the audit trail),
# capture runs, cursors, WeChat censuses. Without them a rebuild (reindex, verify --deep) would
# forget a hold whose creation was shredded, and verify could no longer read an earlier
# tombstone. Their apply is written to give the same catalog wherever they come (by their
# original serial, ``retained_from``).
#
# The directory (DIRECTORY_KINDS: WeCom API answers, HR imports, device contact lists) is not
# carried entry by entry: what it gives is history built in journal order (a rename ends one
# row where the next begins; a user's department is named by the department list applied
# before it; an import replaces the one before), which copies met out of order would build
# otherwise, and every purge would carry every answer ever again. Instead a purge journals one
# ``directory.snapshot`` per source the purged segments fed (their records' sources: consent
# and group names also come from messages; and their directory entries' and snapshots'):
# what the catalog holds of that source's directory then (people with their history, consent,
# department names, group titles, participants' names: Catalog.directory_state). It comes
# after the held records' copies (whose participants and conversations it names) and before
# any tombstone, one for all the segments of a purge, and applying it replaces that state
# whole: a rebuild that met some, or none, of the shredded entries is set to what the live
# catalog had, and the entries after it build on it as they did live. A segment holding a
# snapshot fed its source: purging it takes a newer one.
CARRIED_KINDS = frozenset({"run.start", "run.end", "cursor", "wechat.census"})
SNAPSHOT_KIND = "directory.snapshot"
DIRECTORY_KINDS = frozenset({"wecom.directory", "directory.import", "wechat.directory", SNAPSHOT_KIND})


def _carried(kind: str) -> bool:
    return kind in CARRIED_KINDS or kind.startswith("admin.")


def _carry_state(archive, sp: SegmentPlan, apply: ApplyFn) -> int:
    """Re-journal the segment's state entries (see CARRIED_KINDS) with ``retained_from``; how many."""
    from wxarchive.archive.journal import Entry

    j = archive.journal
    copies = []
    for e in j.entries(after=sp.first_serial - 1):
        if e.serial > sp.last_serial:
            break
        if not _carried(e.kind):
            continue
        meta = {**e.meta, "retained_from": e.meta.get("retained_from", e.serial)}
        copies.append(Entry(j.append(e.kind, meta, e.data, at=e.time), e.time, e.kind, meta, e.data))
    j.sync()
    apply(archive, copies)
    return len(copies)


def _fed_sources(archive, sp: SegmentPlan) -> set[str]:
    """The sources whose directory state the segment fed: those of its records, and of its
    directory entries and snapshots."""
    out = set(sp.sources)
    for e in archive.journal.entries(after=sp.first_serial - 1):
        if e.serial > sp.last_serial:
            break
        if e.kind in DIRECTORY_KINDS and e.meta.get("source"):
            out.add(e.meta["source"])
    return out


def _snapshot_directory(archive, sources: set[str], segments: list[str], apply: ApplyFn) -> int:
    """Journal a ``directory.snapshot`` of each source's directory state as the catalog has it
    now (see CARRIED_KINDS), naming the segments about to be purged; how many (a source of no
    directory state has none)."""
    from wxarchive.archive.journal import Entry

    j = archive.journal
    now = int(time.time() * 1000)
    snaps = []
    for src in sorted(sources):
        state = archive.catalog.directory_state(src)
        if state is None:
            continue
        meta = {"source": src, "segments": segments}
        data = json.dumps(state, ensure_ascii=False, separators=(",", ":")).encode()
        snaps.append(Entry(j.append(SNAPSHOT_KIND, meta, data, at=now), now, SNAPSHOT_KIND, meta, data))
    j.sync()
    apply(archive, snaps)
    return len(snaps)


def _tombstone(archive, sp: SegmentPlan, retained: list[list[str]]) -> dict[str, Any]:
    con = archive.catalog.engine.raw_connection()
    try:
        keep = {tuple(k) for k in retained}
        removed = sorted([src, key, kind, raw, cursor] for src, key, kind, raw, cursor in con.execute(
            "SELECT source, key, kind, raw_serial, cursor FROM records WHERE raw_serial BETWEEN ? AND ? "
            "AND state != 'purged'", (sp.first_serial, sp.last_serial)) if (src, key) not in keep)
        gone_keys = {(k[0], k[1]) for k in removed}
        gone = set()
        for src, key in gone_keys:
            gone.update(r[0] for r in con.execute(
                "SELECT a.sha256 FROM attachments a JOIN messages m ON m.id = a.message_id "
                "WHERE m.source = ? AND m.msgid = ? AND a.sha256 IS NOT NULL", (src, key)))
        still = set()  # content-addressed: a blob another (kept) message uses stays
        for sha in gone:
            users = {(r[0], r[1]) for r in con.execute(
                "SELECT m.source, m.msgid FROM attachments a JOIN messages m ON m.id = a.message_id "
                "WHERE a.sha256 = ?", (sha,))}
            if users - gone_keys:
                still.add(sha)
    finally:
        con.close()
    return {"segment": sp.segment, "first_serial": sp.first_serial, "last_serial": sp.last_serial,
            "retention_years": sp.years, "newest_entry_at": sp.last_time, "removed": removed,
            "retained": sorted(retained), "blobs": sorted(gone - still)}


def sign_tombstone(signer, body: dict[str, Any]) -> str:
    return signer.private.sign(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hex()


def execute_purge(archive, plan: PurgePlan, apply: ApplyFn) -> PurgeResult:
    """Purge every eligible segment of ``plan`` (the caller holds the writer lock), then
    finish any purge an earlier run left half done."""
    result = PurgeResult()
    if archive.catalog.applied_serial() != archive.journal.head_serial:
        raise RetentionError("the catalog lags the journal: catch it up (any ingest or 'wxarchive reindex') and "
                             "plan the purge again")
    # First, for every segment, what a rebuild needs of it is journaled after it; then one
    # directory snapshot per source they fed (see CARRIED_KINDS); then the tombstones.
    fed: set[str] = set()
    for sp in plan.eligible:
        _copy_forward(archive, sp, apply)
        _carry_state(archive, sp, apply)
        fed |= _fed_sources(archive, sp)
    if fed:
        _snapshot_directory(archive, fed, [sp.segment for sp in plan.eligible], apply)
    for sp in plan.eligible:
        body = _tombstone(archive, sp, sp.held)
        body["signature"] = sign_tombstone(archive.signer, body)
        serial = archive.record_admin_event("admin.purge", body)  # journaled, catalog rows removed
        archive.checkpoint()
        result.segments.append(sp.segment)
        result.records_purged += len(body["removed"])
        result.records_retained += sp.records - sp.purgeable  # held records whose raw item is in the segment
        result.tombstones.append(serial)
    result.blobs_deleted = finish_purges(archive)
    return result


def finish_purges(archive) -> int:
    """For every tombstoned segment: delete the blobs it lists, destroy the segment's key."""
    con = archive.catalog.engine.raw_connection()
    try:
        done = list(con.execute("SELECT segment, tombstone_serial FROM purges ORDER BY tombstone_serial"))
    finally:
        con.close()
    deleted = 0
    for segment, serial in done:
        key = archive.journal.keys_dir / (Path(segment).stem + ".key")
        if not key.exists():
            continue
        tomb = next(archive.journal.entries(after=serial - 1), None)
        if tomb is None or tomb.serial != serial or tomb.kind != "admin.purge":
            raise RetentionError(f"journal entry {serial}: not the tombstone of {segment}; run 'wxarchive verify'")
        for sha in tomb.meta.get("blobs", []):
            p = archive.blobs.path(sha)
            if p.exists():
                p.unlink()
                deleted += 1
        archive.journal.shred(segment, serial)
    return deleted
