"""``wxarchive verify``: re-read everything and prove the archive is intact, or say where it is not.

Checks, reading the files directly and changing nothing (no torn-tail repair, the
catalog opened read-only):

- **journal**: segment headers (magic, name = first serial, previous segment's last
  hash), every frame's serial (from 1, no gaps, no repeats), its SHA-256 chain hash,
  and its AES-256-GCM authentication under the segment's data key (which also
  authenticates serial, time and kind); the metadata must be JSON;
- **keys**: every segment's wrapped data key opens with the master key;
- **checkpoints**: every signed checkpoint's Ed25519 signature under the archive's key,
  and that the journal still holds the entry it signed, with that hash; with
  ``against``, the same for an auditor's exported copy;
- **blobs**: every blob opens and its content hashes to its name; every attachment the
  catalog calls present has its blob;
- **audit**: the access audit log gets the journal's checks, and its signed head must
  verify and match the log's last entry (an entry cut off the end is caught);
- **catalog**: it reflects no entry the journal lacks (applied serial <= head), every
  message row points at a ``wecom.message`` entry of the same msgid, every such entry
  is a message row or a quarantined record, every raw record has a journal entry of
  the same key, and none is missing (merge joins in serial order: bounded memory).

The first problem names the file, the entry's serial and its byte offset.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wxarchive.archive.blobs import BlobError, BlobStore
from wxarchive.archive.checkpoints import (
    CHECKPOINT_EVERY,
    Checkpoint,
    CheckpointError,
    fingerprint,
    list_checkpoints,
    load_public_pem,
    read_checkpoint,
    signature_ok,
)
from wxarchive.archive.journal import (
    GENESIS_HASH,
    HEAD,
    JournalError,
    decode_meta,
    frames_follow,
    iter_bodies,
    read_segment_header,
)
from wxarchive.archive.keys import KeyError_, MasterKeyProvider, load_archive_master_key

MAX_PROBLEMS = 100


def _db_errors() -> tuple[type[Exception], ...]:
    try:
        from sqlcipher3 import dbapi2
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, dbapi2.Error)


_DB_ERRORS = _db_errors()  # an SQLCipher catalog raises its own DB-API error classes
_KNOWN_FILES = {"append.lock", "head.json", "config.sha256"}  # access-log lock and head; config-change hint


@dataclass
class Problem:
    check: str  # journal | keys | checkpoint | blob | catalog | audit
    file: str
    detail: str
    serial: int | None = None
    offset: int | None = None

    def line(self) -> str:
        where = self.file
        if self.serial is not None:
            where += f" entry {self.serial}"
        if self.offset is not None:
            where += f" at offset {self.offset}"
        return f"{self.check}: {where}: {self.detail}"


@dataclass
class Report:
    entries: int = 0
    segments: int = 0
    head_serial: int = 0
    head_hash: str = GENESIS_HASH.hex()
    checkpoints: int = 0
    blobs: int = 0
    catalog_messages: int = 0  # message rows checked against the journal
    audit_entries: int = 0  # entries of the access audit log
    deep_checked: int | None = None  # --deep: the catalog compared with one rebuilt up to this entry
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, p: Problem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(p)
        else:
            self.more_problems += 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["problems"] = [{**asdict(p), "line": p.line()} for p in self.problems]
        return d


class CannotVerify(Exception):
    """Verification could not run at all (no archive, wrong master key): exit 2."""


ProgressFn = Callable[[str, int], None]


def _noop(stage: str, n: int) -> None:
    pass


# ---- journal ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Seen:
    """What the journal walk hands to the catalog check, in serial order."""

    serial: int
    kind: str
    source: str | None
    key: str | None
    blob: str | None = None  # sha256 of the media a ``media`` entry says was stored
    tomb: dict | None = None  # an ``admin.purge`` tombstone's metadata (segment, blobs, signature...)
    where: tuple[str, int] | None = None  # a tombstone's segment (as reported) and frame offset
    anchor: tuple[int, str] | None = None  # an ``audit.anchor``: the access log's (serial, hash) it vouches for


_PARALLEL_MIN_BYTES = 128 << 20  # journals smaller than this are checked in-process (start-up would dominate)


@dataclass
class _SegmentTask:
    """One segment's frames to check, self-contained so a worker process can do it."""

    path: Path
    name: str  # as reported: <label>/<file>
    key: bytes | None  # its data key, None when missing, unopenable or shredded
    content_gone: bool  # shredded by a purge: only the chain can be checked
    last_segment: bool
    prev: bytes  # what its header says came before it
    first: int
    wanted: frozenset[int]  # serials whose hash the checkpoint checks need
    need: str  # which _Seen to return: "all" | "blobs" (media and purge tombstones) | "none"


@dataclass
class _SegmentResult:
    problems: list[Problem]
    notes: list[str]
    seen: list[_Seen]
    hashes: dict[int, bytes]
    entries: int
    last_hash: bytes
    next_serial: int


def _written_after(t: _SegmentTask, offset: int, serial: int) -> bool:
    """Whether whole entries (``serial`` on) that decrypt follow ``offset`` of the segment: then
    what looks like an incomplete final frame is a damaged length field (True without a key)."""
    if t.key is None:
        return True
    with open(t.path, "rb") as f:
        f.seek(offset)
        return frames_follow(f.read(), serial, AESGCM(t.key))


def _check_segment(t: _SegmentTask) -> _SegmentResult:
    """Check every frame of one segment: serial, chain hash, GCM tag, metadata. The hot loop of
    verify, written flat (one pass over large reads, no per-frame objects but the _Seen wanted)."""
    problems: list[Problem] = []
    notes: list[str] = []
    seen: list[_Seen] = []
    hashes: dict[int, bytes] = {}
    add, keep = problems.append, seen.append
    name, wanted, need_all, need_any = t.name, t.wanted, t.need == "all", t.need != "none"
    decrypt = AESGCM(t.key).decrypt if t.key is not None else None
    unpack_head, hsize, sha256 = HEAD.unpack_from, HEAD.size, hashlib.sha256
    kinds: dict[bytes, str] = {}
    prev, expected, entries = t.prev, t.first, 0
    for offset, body in iter_bodies(t.path):
        if isinstance(offset, str):
            if t.last_segment and not _written_after(t, body, expected):
                notes.append(f"{name}: incomplete final frame at offset {body} "
                             "(a crash mid-write; cut off at the next open)")
            elif t.last_segment:
                add(Problem("journal", name, "frame length damaged: whole entries follow it", expected, body))
            else:
                add(Problem("journal", name, "truncated frame inside the journal", offset=body))
            break
        entries += 1
        serial, _t, klen = unpack_head(body)
        if serial != expected:
            add(Problem("journal", name, f"serial out of order (expected {expected})", serial, offset))
        stored = body[-32:]
        if sha256(prev + body[:-32]).digest() != stored:  # = chain_hash(prev, head, nonce, ciphertext)
            add(Problem("journal", name, "hash chain broken (entry altered, inserted, removed or reordered)",
                        serial, offset))
        prev, expected = stored, serial + 1
        if serial in wanted:
            hashes[serial] = stored
        hl = hsize + klen
        kb = body[hsize:hl]
        kind = kinds.get(kb)
        if kind is None:
            kind = kinds[kb] = kb.decode("ascii", "replace")
        if decrypt is None:
            if need_all and not t.content_gone:
                keep(_Seen(serial, kind, None, None))
            continue
        try:
            pt = decrypt(body[hl : hl + 12], body[hl + 12 : -32], body[:hl])
        except InvalidTag:
            add(Problem("journal", name, "fails authentication (content altered)", serial, offset))
            continue
        try:
            meta = decode_meta(pt[4 : 4 + int.from_bytes(pt[:4], "big")])
            if not isinstance(meta, dict):
                raise ValueError
        except ValueError:
            add(Problem("journal", name, "metadata is not a JSON object", serial, offset))
            continue
        if kind == "media":
            blob = meta.get("sha256") if meta.get("state") == "present" else None
            if need_any:
                keep(_Seen(serial, kind, meta.get("source"), meta.get("key"), blob if isinstance(blob, str) else None))
        elif kind == "admin.purge":
            if need_any:
                keep(_Seen(serial, kind, meta.get("source"), meta.get("key"), None, meta, (name, offset)))
        elif kind == "audit.anchor":
            if need_any:
                a_serial, a_hash = meta.get("audit_serial"), meta.get("audit_hash")
                ok = isinstance(a_serial, int) and isinstance(a_hash, str)
                if not ok:
                    add(Problem("journal", name, "access-log anchor without a serial and hash", serial, offset))
                keep(_Seen(serial, kind, None, None, anchor=(a_serial, a_hash) if ok else None))
        elif need_all:
            keep(_Seen(serial, kind, meta.get("source"), meta.get("key")))
    return _SegmentResult(problems, notes, seen, hashes, entries, prev, expected)


@dataclass
class _Plan:
    """A segment's header read and its key opened (in order, in the main process)."""

    seg: Path
    name: str
    header_problems: list[Problem]
    key_problems: list[Problem]
    task: _SegmentTask | None  # None: the header is unreadable, its frames cannot be walked


class _JournalWalk:
    def __init__(self, journal_dir: Path, master: MasterKeyProvider, report: Report,
                 wanted_hashes: set[int], progress: ProgressFn, label: str = "journal", *,
                 need: str = "all", workers: int | None = None):
        self.dir = journal_dir
        self.label = label
        self.master = master
        self.report = report
        self.wanted = frozenset(wanted_hashes)
        self.hashes: dict[int, tuple[bytes, str]] = {}  # serial -> (hash, segment) for checkpoints
        self.progress = progress
        self.key_failures = 0
        self.keys_opened = 0
        self.shredded: set[str] = set()  # segments whose key was destroyed by a purge
        self.need = need
        self.workers = workers  # None: in parallel when the journal is large and there are cores

    def _key(self, seg: Path, out: list[Problem]) -> bytes | None:
        kp = self.dir / "keys" / (seg.stem + ".key")
        try:
            wrapped = kp.read_bytes()
        except FileNotFoundError:
            if (self.dir / "keys" / (seg.stem + ".shredded")).exists():
                self.shredded.add(seg.name)  # purged: a tombstone must say so (checked at the end)
                return None
            out.append(Problem("keys", f"{self.label}/keys/{kp.name}", f"the data key of {seg.name} is missing"))
            return None
        try:
            key = self.master.unwrap(wrapped)
        except (KeyError_, ValueError):
            self.key_failures += 1
            out.append(Problem("keys", f"{self.label}/keys/{kp.name}",
                               f"the data key of {seg.name} does not open (altered, or another master key)"))
            return None
        if len(key) != 32:
            out.append(Problem("keys", f"{self.label}/keys/{kp.name}", "the data key has the wrong length"))
            return None
        self.keys_opened += 1
        return key

    def _plan(self, seg: Path, last_segment: bool) -> _Plan:
        name = f"{self.label}/{seg.name}"
        hp: list[Problem] = []
        try:
            first = int(seg.stem.split("-")[1])
        except (IndexError, ValueError):
            hp.append(Problem("journal", name, "segment name does not carry its first serial"))
            first = None
        try:
            with open(seg, "rb") as f:
                header = read_segment_header(f)
            hdr_first = int(header["first_serial"])
            hdr_prev = bytes.fromhex(header["prev_hash"])
        except (JournalError, OSError, ValueError, KeyError, TypeError) as e:
            hp.append(Problem("journal", name, f"segment header unreadable ({e.__class__.__name__})", offset=0))
            return _Plan(seg, name, hp, [], None)
        bad = [k for k, want in (("segment", seg.name), ("cipher", "AES-256-GCM"), ("chain", "SHA-256"))
               if header.get(k) != want]
        if bad or not isinstance(header.get("created_at"), int):
            hp.append(Problem("journal", name, f"segment header altered ({', '.join(bad) or 'created_at'})",
                              serial=hdr_first, offset=0))
        if first is not None and first != hdr_first:
            hp.append(Problem("journal", name, f"segment name says it starts at entry {first}, its header "
                                               f"{hdr_first} (renamed or swapped)", serial=hdr_first, offset=0))
        kp: list[Problem] = []
        key = self._key(seg, kp)
        task = _SegmentTask(seg, name, key, key is None and seg.name in self.shredded, last_segment,
                            hdr_prev, hdr_first, self.wanted, self.need)
        return _Plan(seg, name, hp, kp, task)

    def _results(self, plans: list[_Plan]) -> Iterator[tuple[_Plan, _SegmentResult | None]]:
        """Each plan with its segment checked, in order: in worker processes for a large journal
        (at most two segments ahead per worker in flight, so memory stays bounded)."""
        workers = self.workers
        if workers is None:
            size = sum(p.seg.stat().st_size for p in plans if p.task is not None)
            workers = min(os.cpu_count() or 1, 4) if size >= _PARALLEL_MIN_BYTES else 1
        todo = [p for p in plans if p.task is not None]
        if workers <= 1 or len(todo) < 2:
            for p in plans:
                yield p, _check_segment(p.task) if p.task is not None else None
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending: deque = deque()
            it = iter(plans)
            for p in it:
                pending.append((p, pool.submit(_check_segment, p.task) if p.task is not None else None))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                p, fut = pending.popleft()
                yield p, fut.result() if fut is not None else None
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(_check_segment, nxt.task) if nxt.task is not None else None))

    def walk(self) -> Iterator[_Seen]:
        r = self.report
        segs = sorted(self.dir.glob("seg-*.wxj"))
        stray = [p.name for p in self.dir.iterdir() if p.is_file() and p.suffix != ".wxj"
                 and not p.name.startswith(".") and p.name not in _KNOWN_FILES]
        for name in stray:
            r.notes.append(f"{self.label}/{name}: not a segment (ignored)")
        r.segments = len(segs)
        plans = [self._plan(seg, i == len(segs) - 1) for i, seg in enumerate(segs)]
        prev, expected = GENESIS_HASH, 1
        for plan, res in self._results(plans):
            for p in plan.header_problems:
                r.add(p)
            t = plan.task
            if t is None or res is None:
                continue
            name = plan.name
            if t.first > expected:
                r.add(Problem("journal", name, f"entries {expected} to {t.first - 1} are missing before it "
                                               f"({self.label}/seg-{expected:012d}.wxj deleted or cut short?)",
                              serial=t.first, offset=0))
            elif t.first < expected:
                r.add(Problem("journal", name, f"starts at entry {t.first}, but entries up to {expected - 1} "
                                               "came before it (duplicated or reordered)", serial=t.first, offset=0))
            elif t.prev != prev:
                r.add(Problem("journal", name, "segment header does not chain to the previous segment's last entry",
                              serial=t.first, offset=0))
            for p in plan.key_problems + res.problems:
                r.add(p)
            r.notes.extend(res.notes)
            for serial, h in res.hashes.items():
                self.hashes[serial] = (h, plan.seg.name)
            r.entries += res.entries
            self.progress("journal", r.entries)
            yield from res.seen
            # go on from what this segment says of itself: one problem per break, not a cascade
            prev, expected = res.last_hash, res.next_serial
        r.head_serial, r.head_hash = expected - 1, prev.hex()


# ---- checkpoints ------------------------------------------------------------------------


def _tombstone_signed(meta: dict, public) -> bool:
    """An ``admin.purge`` entry's signature over its body (everything but who and the
    signature itself, as retention.sign_tombstone signed it)."""
    if public is None:  # no public key: reported on its own (a missing keys/signing.pub)
        return True
    body = {k: v for k, v in meta.items() if k not in ("who", "signature", "retained_from")}  # a carried copy too
    try:
        public.verify(bytes.fromhex(str(meta.get("signature", ""))),
                      json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    except (InvalidSignature, ValueError, AttributeError, TypeError):
        return False
    return True


def _load_checkpoints(home: Path, report: Report) -> list[tuple[str, Checkpoint]]:
    out = []
    for p in list_checkpoints(home / "journal"):
        try:
            out.append((f"journal/checkpoints/{p.name}", read_checkpoint(p)))
        except CheckpointError as e:
            report.add(Problem("checkpoint", f"journal/checkpoints/{p.name}", str(e).split(": ", 1)[-1]))
    return out


def _check_checkpoint(name: str, cp: Checkpoint, public, archive_id: str, walk: _JournalWalk,
                      report: Report) -> None:
    if public is None or not signature_ok(cp, public):
        report.add(Problem("checkpoint", name, "signature does not verify under the archive's signing key",
                           cp.serial))
        return
    if cp.archive_id != archive_id:
        report.add(Problem("checkpoint", name, f"signed for archive {cp.archive_id}, not {archive_id}", cp.serial))
        return
    if cp.serial > report.head_serial:
        report.add(Problem("checkpoint", name, f"signed entry {cp.serial} but the journal ends at "
                                               f"{report.head_serial} (entries removed)", cp.serial))
        return
    got = walk.hashes.get(cp.serial)
    if got is None or got[0].hex() != cp.head_hash:
        report.add(Problem("checkpoint", name, "the journal no longer holds the entry this checkpoint signed "
                                               "(history rewritten)", cp.serial))


# ---- blobs ------------------------------------------------------------------------------


def _blob_ok(home: Path, master: MasterKeyProvider, sha: str | None) -> bool:
    """Whether blob ``sha`` is stored now and reads back intact."""
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        return False
    try:
        BlobStore(home / "blobs", master).get(sha)
    except (BlobError, KeyError_, ValueError, OSError):
        return False
    return True


def _check_blobs(home: Path, master: MasterKeyProvider, report: Report, progress: ProgressFn) -> set[str]:
    store = BlobStore(home / "blobs", master)
    good: set[str] = set()
    for p in sorted((home / "blobs").rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(home))
        name = p.name
        if ".tmp" in name:
            report.notes.append(f"{rel}: unfinished temporary file (ignored)")
            continue
        if len(name) != 64 or any(c not in "0123456789abcdef" for c in name) or p != store.path(name):
            report.add(Problem("blob", rel, "not a blob name (or stored under the wrong folder)"))
            continue
        report.blobs += 1
        if report.blobs % 1000 == 0:
            progress("blobs", report.blobs)
        try:
            store.get(name)
        except (BlobError, KeyError_, ValueError) as e:
            report.add(Problem("blob", rel, str(e).split(": ", 1)[-1]))
            continue
        good.add(name)
    return good


# ---- catalog ----------------------------------------------------------------------------


class _CatalogCheck:
    """Merge joins, in serial order, of the journal's entries (fed one by one as the journal
    is walked) against the catalog's rows: bounded memory however large the archive."""

    def __init__(self, db_path: Path, report: Report, key: bytes | None = None):
        from wxarchive.archive.catalog.sqlite import connect_dbapi

        self.name, self.report = db_path.name, report
        self.con = connect_dbapi(db_path, key, readonly=True)
        row = self.con.execute("SELECT value FROM meta WHERE key = 'applied_serial'").fetchone()
        try:
            self.applied = int(row[0]) if row else 0
        except (TypeError, ValueError):
            report.add(Problem("catalog", self.name, "its applied serial is not a number (altered): run "
                                                     "'wxarchive reindex'"))
            self.applied = 0
        # records with no message row by design: quarantined, or purged under retention
        self.quarantined = {(src, key) for src, key in self.con.execute(
            "SELECT source, key FROM records WHERE state IN ('quarantined', 'purged')")}
        self.messages = self.con.execute(
            "SELECT serial, source, msgid FROM messages ORDER BY serial")
        self.records = self.con.execute(
            "SELECT raw_serial, source, key FROM records WHERE kind IN ('wecom.chatdata', 'wechat.row') "
            "AND state != 'purged' "
            "ORDER BY raw_serial")
        self.msg_row = next(self.messages, None)
        self.rec_row = next(self.records, None)

    def _problem(self, detail: str, serial: int | None) -> None:
        self.report.add(Problem("catalog", self.name, detail, serial))

    def feed(self, s: _Seen) -> None:
        if s.serial > self.applied:
            return
        # a WeChat row is both: the raw record and the entry its message derives from
        if s.kind in ("wecom.message", "wechat.row"):
            self.msg_row = self._join(self.messages, self.msg_row, s, "message")
        if s.kind in ("wecom.chatdata", "wechat.row"):
            self.rec_row = self._join(self.records, self.rec_row, s, "raw record")

    def _join(self, cursor, row, s: _Seen, what: str):
        while row is not None and row[0] < s.serial:
            self._problem(f"{what} {row[2]} has no journal entry {row[0]}", row[0])
            self.report.catalog_messages += what == "message"
            row = next(cursor, None)
        if row is None or row[0] != s.serial:
            if what == "raw record" or (s.source, s.key) not in self.quarantined:
                self._problem(f"journal {what} {s.key} is missing from the catalog", s.serial)
            return row
        if (row[1], row[2]) != (s.source, s.key):
            self._problem(f"{what} {row[2]} does not match journal entry {s.serial} ({s.key})", s.serial)
        self.report.catalog_messages += what == "message"
        return next(cursor, None)

    def finish(self, good_blobs: set[str] | None, recheck=lambda sha: False) -> None:
        """The end of the merge joins, and every attachment the catalog has as present against
        ``good_blobs`` (those read back intact); one not among them is read again with
        ``recheck`` before it is reported: an ingest running beside verify stores blobs after
        they were listed."""
        if self.applied > self.report.head_serial:
            self._problem(f"reflects journal entries up to {self.applied} but the journal ends at "
                          f"{self.report.head_serial} (entries removed)", None)
        for cursor, row, what in ((self.messages, self.msg_row, "message"), (self.records, self.rec_row, "raw record")):
            while row is not None:
                self._problem(f"{what} {row[2]} has no journal entry {row[0]}", row[0])
                self.report.catalog_messages += what == "message"
                row = next(cursor, None)
        if good_blobs is not None:
            for sha, msgid in self.con.execute(
                    "SELECT a.sha256, m.msgid FROM attachments a JOIN messages m ON m.id = a.message_id "
                    "WHERE a.state = 'present'"):
                if sha not in good_blobs and not recheck(sha):
                    self.report.add(Problem("blob", f"blobs/{(sha or '')[:2]}/{(sha or '')[2:4]}/{sha}",
                                            f"attachment of message {msgid} is missing or damaged"))

    def close(self) -> None:
        self.con.close()


# ---- the whole archive ------------------------------------------------------------------


def identify(home: Path, master_key_file: str | None = None) -> tuple[str, MasterKeyProvider]:
    """The archive id and master key, read without opening (or repairing) anything else."""
    info_path = home / "archive.json"
    try:
        info = json.loads(info_path.read_text())
        archive_id = str(info["archive_id"])
    except FileNotFoundError:
        raise CannotVerify(f"no archive at {home} (no archive.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CannotVerify(f"{info_path}: unreadable ({e.__class__.__name__})") from None
    import re

    if not re.fullmatch(r"wxa-[0-9a-f]{16}", archive_id):
        raise CannotVerify(f"{info_path}: not an archive description (no valid archive_id)")
    try:
        return archive_id, load_archive_master_key(home, archive_id, master_key_file)
    except KeyError_ as e:
        raise CannotVerify(str(e)) from None


def verify_archive(home: Path, master: MasterKeyProvider, archive_id: str, *,
                   against: Path | None = None, blobs: bool = True, catalog: bool = True,
                   progress: ProgressFn = _noop, workers: int | None = None) -> Report:
    """Check everything the archive holds (see the module docstring). ``workers``: processes for
    the journal walk; None picks by size (in-process below 128 MiB of segments)."""
    report = Report()
    journal_dir = home / "journal"
    if not journal_dir.is_dir():
        raise CannotVerify(f"{home}: no journal directory")
    cps = _load_checkpoints(home, report)
    external: Checkpoint | None = None
    if against is not None:
        try:
            external = read_checkpoint(against)
        except CheckpointError as e:
            raise CannotVerify(str(e)) from None
    public = None
    pub_path = home / "keys" / "signing.pub"
    try:
        public = load_public_pem(pub_path.read_text(), str(pub_path))
    except (OSError, CheckpointError):
        if cps or external:
            report.add(Problem("checkpoint", "keys/signing.pub", "the archive's public key is missing or unreadable"))
    if pub_path.exists() and not (home / "keys" / "signing.key").exists():
        report.add(Problem("keys", "keys/signing.key", "missing (signing.pub is there): restore it from backup"))
    wanted = {cp.serial for _, cp in cps} | ({external.serial} if external else set())
    check: _CatalogCheck | None = None
    try:
        if catalog and (home / "catalog.db").exists():
            from wxarchive.archive.catalog.sqlite import CatalogError

            try:
                ck = home / "keys" / "catalog.key"
                check = _CatalogCheck(home / "catalog.db", report, master.unwrap(ck.read_bytes()) if ck.exists() else None)
            except (*_DB_ERRORS, CatalogError, KeyError_) as e:
                report.add(Problem("catalog", "catalog.db", f"unreadable ({e})"))
        walk = _JournalWalk(journal_dir, master, report, wanted, progress, need="all" if check is not None else "blobs",
                            workers=workers)
        journal_blobs: dict[str, int] = {}  # sha256 -> first entry saying it was stored
        tombstoned: set[str] = set()
        purged_blobs: set[str] = set()
        journal_anchors: list[tuple[str, int, str]] = []  # every audit.anchor entry's, in order
        try:
            for seen in walk.walk():
                if seen.anchor is not None:
                    name = f"journal entry {seen.serial} (audit.anchor)"
                    if journal_anchors and seen.anchor[0] < journal_anchors[-1][1]:
                        report.add(Problem("audit", name, f"vouches for access-log entry {seen.anchor[0]}, below "
                                                          f"entry {journal_anchors[-1][1]} that "
                                                          f"{journal_anchors[-1][0]} vouched for (the access log "
                                                          "was rolled back or replaced)", seen.anchor[0]))
                    journal_anchors.append((name, *seen.anchor))
                if seen.blob is not None:
                    journal_blobs.setdefault(seen.blob, seen.serial)
                if seen.tomb is not None:
                    if _tombstone_signed(seen.tomb, public):
                        tombstoned.add(str(seen.tomb.get("segment")))
                        purged_blobs.update(b for b in seen.tomb.get("blobs") or [] if isinstance(b, str))
                    else:
                        file, offset = seen.where or ("journal", None)
                        report.add(Problem("journal", file, "purge tombstone's signature does not verify under "
                                                            "the archive's signing key", seen.serial, offset))
                if check is not None:
                    check.feed(seen)
        except _DB_ERRORS as e:
            report.add(Problem("catalog", "catalog.db", f"unreadable ({e})"))
            check = None
        if walk.key_failures and not walk.keys_opened and not _opens_signing_key(home, master):
            raise CannotVerify("the master key opens none of the journal's data keys: wrong master key "
                               "(set WXARCHIVE_MASTER_KEY_FILE), or every key file was replaced")
        progress("journal", report.entries)
        for seg in sorted(walk.shredded - tombstoned):
            report.add(Problem("keys", f"journal/keys/{Path(seg).stem}.key",
                               f"the data key of {seg} was destroyed but no purge tombstone says so"))
        report.checkpoints = len(cps)
        newest = max((cp.serial for _, cp in cps), default=0)
        if not cps and report.entries >= CHECKPOINT_EVERY:
            report.add(Problem("checkpoint", "journal/checkpoints", f"no signed checkpoint for a journal of "
                                                                   f"{report.entries} entries (deleted?)"))
        elif not cps and report.entries:
            report.notes.append("journal/checkpoints: none yet (a first capture that did not finish?)")
        if catalog and report.entries:
            if not (home / "catalog.db").exists():
                report.add(Problem("catalog", "catalog.db", "missing: run 'wxarchive reindex' to rebuild it"))
            elif check is not None and check.applied == 0 and newest:
                report.add(Problem("catalog", "catalog.db", f"reflects none of the journal's {report.entries} "
                                                            "entries (deleted and recreated empty?): run "
                                                            "'wxarchive reindex'"))
            elif check is not None and check.applied < newest:  # e.g. a crash before the catalog caught up
                report.notes.append(f"catalog.db: reflects the journal up to entry {check.applied}, behind its "
                                    f"checkpoint at {newest}; the next ingest catches up (or run 'wxarchive reindex')")
        for name, cp in cps:
            _check_checkpoint(name, cp, public, archive_id, walk, report)
        if external is not None:
            _check_external(str(against), external, public, archive_id, walk, report)
        # the access log's heads the (genuine) checkpoints anchored: it must still hold them
        anchors = [(name, cp.audit_serial, cp.audit_hash)
                   for name, cp in cps + ([(str(against), external)] if external else [])
                   if cp.audit_serial is not None and public is not None and signature_ok(cp, public)
                   and cp.archive_id == archive_id]
        anchors += journal_anchors  # in the hash chain: they outlive deleted checkpoint files
        _check_audit(home / "audit", master, public, archive_id, report, progress, anchors)
        good = _check_blobs(home, master, report, progress) if blobs else None
        if good is not None:
            for sha, serial in journal_blobs.items():
                if sha not in good and sha not in purged_blobs and not _blob_ok(home, master, sha):
                    report.add(Problem("blob", f"blobs/{sha[:2]}/{sha[2:4]}/{sha}",
                                       f"stored per journal entry {serial}, but missing or damaged", serial))
        if check is not None:
            try:
                check.finish(good, lambda sha: _blob_ok(home, master, sha))
            except _DB_ERRORS as e:
                report.add(Problem("catalog", "catalog.db", f"unreadable ({e})"))
    finally:
        if check is not None:
            check.close()
    return report


def _check_audit(audit_dir: Path, master: MasterKeyProvider, public, archive_id: str, report: Report,
                 progress: ProgressFn, anchors: list[tuple[str, int, str]] = ()) -> None:
    """The access audit log: the same journal checks, its signed head, and the heads the journal
    anchored (``anchors``: (who vouches, access-log serial, its hash), from checkpoints whose
    signature was checked and from every ``audit.anchor`` entry of the journal)."""
    if not audit_dir.is_dir():
        if anchors:
            name, a_serial, _ = max(anchors, key=lambda a: a[1])
            report.add(Problem("audit", "audit/", f"missing, but {name} vouches for its entry {a_serial} "
                                                  "(the access log was deleted)", a_serial))
        return
    head: Checkpoint | None = None
    head_path = audit_dir / "head.json"
    if head_path.exists():
        try:
            head = read_checkpoint(head_path)
        except CheckpointError as e:
            report.add(Problem("audit", "audit/head.json", str(e).split(": ", 1)[-1]))
    scratch = Report()
    wanted = ({head.serial} if head else set()) | {a_serial for _, a_serial, _ in anchors}
    walk = _JournalWalk(audit_dir, master, scratch, wanted, progress, label="audit", need="none", workers=1)
    for _ in walk.walk():
        pass
    report.audit_entries = scratch.entries
    report.notes.extend(scratch.notes)
    for p in scratch.problems:
        report.add(Problem("audit", p.file, p.detail, p.serial, p.offset))
    for name, a_serial, a_hash in anchors:
        if a_serial > scratch.head_serial:
            report.add(Problem("audit", name, f"vouches for access-log entry {a_serial} but the log ends at "
                                              f"{scratch.head_serial} (entries removed)", a_serial))
        elif walk.hashes.get(a_serial, (b"",))[0].hex() != a_hash:
            report.add(Problem("audit", name, f"the access log no longer holds the entry {a_serial} "
                                              "it vouches for (history rewritten)", a_serial))
    if head is None:
        if scratch.entries and (audit_dir.parent / "keys" / "signing.pub").exists():
            report.add(Problem("audit", "audit/head.json", "the signed head of the access log is missing"))
        return
    if public is None or not signature_ok(head, public) or head.archive_id != archive_id:
        report.add(Problem("audit", "audit/head.json", "signature does not verify under the archive's signing key",
                           head.serial))
    elif head.serial > scratch.head_serial:
        report.add(Problem("audit", "audit/head.json", f"signed entry {head.serial} but the access log ends at "
                                                       f"{scratch.head_serial} (entries removed)", head.serial))
    elif walk.hashes.get(head.serial, (b"",))[0].hex() != head.head_hash:
        report.add(Problem("audit", "audit/head.json", "the access log no longer holds the entry its head signed",
                           head.serial))
    elif head.serial < scratch.head_serial:
        report.notes.append(f"audit/head.json: signed at entry {head.serial}, the log holds {scratch.head_serial} "
                            "(an append interrupted before signing)")


def _opens_signing_key(home: Path, master: MasterKeyProvider) -> bool:
    try:
        master.unwrap((home / "keys" / "signing.key").read_bytes())
        return True
    except (OSError, KeyError_):
        return False


def _check_external(name: str, cp: Checkpoint, public, archive_id: str, walk: _JournalWalk,
                    report: Report) -> None:
    """An auditor's exported checkpoint: signed by this archive's key, and still extended."""
    if cp.archive_id != archive_id:
        report.add(Problem("checkpoint", name, f"is a checkpoint of archive {cp.archive_id}, not of {archive_id}",
                           cp.serial))
        return
    if cp.public_key:
        try:
            embedded = load_public_pem(cp.public_key, name)
        except CheckpointError:
            report.add(Problem("checkpoint", name, "its public key is unreadable", cp.serial))
            return
        if public is None or fingerprint(embedded) != fingerprint(public):
            report.add(Problem("checkpoint", name, "was signed by another key than this archive's "
                                                   "(the archive's signing key was replaced?)", cp.serial))
            return
    _check_checkpoint(name, cp, public, archive_id, walk, report)
