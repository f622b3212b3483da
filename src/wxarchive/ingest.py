"""Runs a capture source into the archive: the only module that knows both.

The order of durability, for every WeCom batch (nothing is lost, nothing duplicated):

1. ``GetChatData(cursor)`` through the official SDK in its own process;
2. each new raw ``chatdata`` item is appended to the journal (``wecom.chatdata``) and
   fsynced *before* anything is decrypted or parsed; items whose msgid the journal
   already holds are counted as duplicates and not written again;
3. items are decrypted (RSA by ``publickey_ver`` + ``DecryptData``) and parsed in a
   process pool; each plaintext is journaled (``wecom.message``), each failure is
   journaled as ``quarantine`` with its reason (the raw item stays in the journal);
4. the cursor (largest seq of the batch) is journaled and fsynced, and only then is
   the catalog updated, in one transaction that also records the journal serial it
   reflects. A crash anywhere is repaired on the next run by re-applying journal
   entries newer than the catalog (``catch_up``) and finishing raw items that have
   no outcome yet (``pending`` records);
5. media of new messages are fetched chunk by chunk, md5-verified, stored as
   encrypted blobs, and their outcome journaled (``media``).

``reindex`` rebuilds the catalog from the journal alone with the same ``apply``
function the live ingest uses, so both always agree.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterable
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from wxarchive.archive.archive import Archive
from wxarchive.archive.journal import Entry
from wxarchive.capture.wecom import decrypt as wdecrypt
from wxarchive.capture.wecom.messages import ParseError, parse_message
from wxarchive.model import AttachmentState, Message

log = logging.getLogger("wxarchive.ingest")

_ITEM_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
TOKEN_ERRCODES = {40001, 40014, 41001, 42001}
RETRYABLE_SDK = {10001, 10002, 10003}
RATE_LIMIT_CALLS = 600
RATE_LIMIT_WINDOW = 60.0
LAG_WARN_MS = 24 * 3600 * 1000
MEDIA_CHUNK_RETRIES = 5
MEDIA_FILE_RETRIES = 3


class CaptureError(Exception):
    """Capture had to stop; the message is one clear line for the operator."""


ProgressFn = Callable[[str, dict[str, Any]], None]


def _noop(event: str, info: dict[str, Any]) -> None:
    pass


@dataclass
class WeComOptions:
    corp_id: str
    secret: str
    private_keys: dict[int, bytes]  # publickey_ver -> PEM bytes
    proxy: str = ""
    proxy_auth: str = ""
    limit: int = 1000
    timeout: int = 10
    max_records: int | None = None  # stop after pulling this many records (--limit)
    follow: bool = False
    poll_interval: float = 15.0
    sdk_lib: str | None = None
    workers: int | None = None
    native_decrypt: bool = True  # DecryptData through the official library
    fetch_media: bool = True  # False: attachments stay pending for a later run
    media_workers: int = 4  # media downloads in flight (each with its own SDK handle)
    retry_base: float = 0.5
    max_retries: int = 6

    @property
    def source(self) -> str:
        return f"wecom:{self.corp_id}"


@dataclass
class RunResult:
    run_id: int
    source: str
    status: str = "running"
    error: str | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"pulled": 0, "recovered": 0, "archived": 0, "duplicates": 0, "quarantined": 0}
    )
    media: dict[str, int] = field(default_factory=lambda: collections.Counter())
    cursor: str | None = None
    gaps: int = 0
    lag_warned: bool = False


# ---- applying journal entries to the catalog (live ingest, catch-up and reindex) --------


def _parse_entry(e: Entry) -> tuple[Message | None, str | None]:
    try:
        return parse_message(e.data, source=e.meta["source"], seq=_int(e.meta.get("cursor"))), None
    except ParseError as err:
        return None, f"parse: {err}"


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def apply(archive: Archive, entries: list[Entry], parsed: dict[int, tuple[Message | None, str | None]] | None = None,
          *, durable: int | None = None) -> None:
    """Bring the catalog up to the last of ``entries`` (in one transaction). With ``durable``
    (the serial a ``journal.sync_start()`` returned), the transaction is built while that fsync
    runs and committed only after ``journal.sync_wait(durable)``: the catalog never holds an
    entry the journal could still lose."""
    if not entries:
        if durable is not None:
            archive.journal.sync_wait(durable)
        return
    expected = archive.catalog.applied_serial() + 1
    serials = [e.serial for e in entries]
    if serials != list(range(expected, expected + len(entries))):
        # The catalog must follow the journal without gaps, or a crash would hide entries from catch-up.
        raise RuntimeError(f"catalog out of step with the journal: applying {serials[:3]}… after {expected - 1}")
    parsed = parsed or {}
    wait = None if durable is None else (lambda: archive.journal.sync_wait(durable))
    with archive.catalog.batch(entries[-1].serial, before_commit=wait) as b:
        for e in entries:
            m = e.meta
            if e.kind == "wecom.chatdata":
                b.record(m["source"], m["key"], e.kind, e.serial, m.get("cursor"), "pending")
            elif e.kind == "wecom.message":
                msg, err = parsed.get(e.serial) or _parse_entry(e)
                if msg is None:
                    b.record(m["source"], m["key"], "wecom.chatdata", m.get("raw_serial") or e.serial,
                             m.get("cursor"), "quarantined", err)
                else:
                    b.message(msg, e.serial, m.get("raw_serial"))
                    b.record(m["source"], m["key"], "wecom.chatdata", m.get("raw_serial") or e.serial,
                             m.get("cursor"), "archived")
            elif e.kind == "quarantine":
                b.record(m["source"], m["key"], m.get("record_kind", "wecom.chatdata"),
                         m.get("raw_serial") or e.serial, m.get("cursor"), "quarantined", m.get("reason"))
            elif e.kind == "media":
                b.attachment_result(m["source"], m["key"], m["path"], m["state"], m.get("reason"),
                                    m.get("sha256"), m.get("size"), m.get("media_type"))
            elif e.kind == "cursor":  # a copy (retained_from) counts at its original place
                b.cursor(m["source"], m["cursor"], m.get("retained_from", e.serial))
            elif e.kind == "run.start":
                b.run_start(m.get("retained_from", e.serial), m["source"], e.time, m.get("cursor"))
            elif e.kind == "run.end":
                b.run_end(m["run"], m["source"], e.time, m["status"], m.get("error"), m.get("counts", {}),
                          m.get("cursor"))
            elif e.kind == "wechat.row":
                msg, err = parsed.get(e.serial) or _parse_wechat(e)
                if msg is None:
                    b.record(m["source"], m["key"], e.kind, e.serial, m.get("cursor"), "quarantined", err)
                else:
                    b.message(msg, e.serial, e.serial)
                    b.record(m["source"], m["key"], e.kind, e.serial, m.get("cursor"), "archived")
            elif e.kind == "wechat.directory":
                _apply_wechat_directory(b, e)
            elif e.kind == "wechat.census":
                b.census(m["source"], {k: v for k, v in m.items() if k != "retained_from"},
                         m.get("retained_from", e.serial), e.time)
            elif e.kind == "wecom.directory":
                _apply_directory(b, e)
            elif e.kind == "directory.import":
                _apply_hr(b, e)
            elif e.kind == "directory.snapshot":  # a purge's, of the entries it shredded (archive/retention.py)
                b.directory_snapshot(m["source"], json.loads(e.data))
            elif e.kind.startswith("admin."):
                b.admin_event(e.kind, m, m.get("retained_from", e.serial), e.time)
            if "retained_from" in m:
                b.retained_copy(e.kind, m, e.serial)


def _apply_directory(b, e: Entry) -> None:
    from wxarchive.capture.wecom import directory

    src = e.meta["source"]
    for obs in directory.parse(e.meta, e.data, b.departments(src)):
        if obs[0] == "departments":
            b.set_departments(src, obs[1])
        elif obs[0] == "person":
            b.person(src, obs[1], "api", obs[2], e.meta.get("fetched_at", e.time), e.serial)
        elif obs[0] == "group":
            b.group_title(src, obs[1], obs[2])
        elif obs[0] == "consent":
            b.consent(src, obs[1], obs[2], obs[3], obs[4], e.meta.get("fetched_at", e.time), e.serial)


def _parse_wechat(e: Entry) -> tuple[Message | None, str | None]:
    from wxarchive.capture.wechat.messages import ParseError as WeChatParseError, parse_row

    try:
        return parse_row(e.data, e.meta["source"]), None
    except WeChatParseError as err:
        return None, f"parse: {err}"


def _apply_wechat_directory(b, e: Entry) -> None:
    """Names of a device's work contacts and groups, as the device had them when read."""
    src, at = e.meta["source"], e.meta.get("fetched_at", e.time)
    try:
        d = json.loads(e.data)
    except ValueError:
        return
    from wxarchive.model import mobile_digits

    for p in d.get("people", []):
        name = p.get("remark") or p.get("nickname") or p.get("alias")
        kind = "employee" if p.get("kind") == "owner" else "external"
        mobile = next((m for v in (p.get("mobile"), p.get("remark"), p.get("description"))
                       if (m := mobile_digits(v)) and len(m) >= 7), None)
        # every name an officer may type finds them: the nickname, and the remark's and nickname's
        # plain parts ("张三 (ACME)" -> 张三, "Liu Yang 刘洋" -> Liu Yang, 刘洋); the remark last: it is
        # the display name
        variants = [v for v in dict.fromkeys(
            x for n in (p.get("remark"), p.get("nickname")) for x in name_variants(n)) if v and v != name]
        extra = [("wechat.nickname", p.get("nickname"))] if p.get("nickname") and p.get("nickname") != name else []
        extra += [(f"wechat.name{i}", v) for i, v in enumerate(variants) if v != p.get("nickname")]
        for origin, n in extra:
            b.person(src, p["id"], origin, {"kind": kind, "name": n}, at, e.serial)
        b.person(src, p["id"], "wechat", {"kind": kind, "name": name, "alias": p.get("alias"), "mobile": mobile,
                                          "mobile_digits": mobile}, at, e.serial)
    for g in d.get("groups", []):
        b.group_title(src, g["id"], g.get("name"))


_BRACKETS = re.compile(r"\s*[(（\[【<《][^)）\]】>》]*[)）\]】>》]\s*")
_PHONE = re.compile(r"\+?\d[\d\s-]{5,}\d")
_SCRIPT_RUNS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+(?:\s*[\u3400-\u9fff\uf900-\ufaff]+)*|[A-Za-z][A-Za-z .'-]*[A-Za-z]")


def name_variants(name: str | None) -> list[str]:
    """The plain names inside a WeChat display name: without bracketed notes and phone numbers,
    and its Chinese and Latin parts apart when it has both."""
    if not name:
        return []
    core = " ".join(_PHONE.sub(" ", _BRACKETS.sub(" ", name)).split())
    out = [core] if core and core != name else []
    runs = [r.strip() for r in _SCRIPT_RUNS.findall(core)]
    if len(runs) > 1:
        out += [r for r in runs if len(r) >= 2]
    return out


def _apply_hr(b, e: Entry) -> None:
    from wxarchive.capture import hr

    rows = hr.parse(e.data, hr.when_in(e.meta.get("timezone") or "UTC"), e.meta.get("file") or "HR import")
    for pid, history in rows.people.items():
        b.hr_history(e.meta["source"], pid, history, e.serial)


def sync_directory(archive: Archive, opts, source: str):
    """Ask the WeCom directory APIs about everyone and every group of ``source``; each answer
    is journaled, then applied (see capture/wecom/directory.py)."""
    from sqlalchemy import select

    from wxarchive.archive.catalog import schema as s
    from wxarchive.capture.wecom import directory

    with archive.catalog.engine.connect() as c:
        people = {r[0] for r in c.execute(select(s.participants.c.id).where(s.participants.c.source == source))}
        convs = [tuple(r) for r in c.execute(select(s.conversations.c.id, s.conversations.c.kind)
                                             .where(s.conversations.c.source == source))]
    groups = {cid for cid, kind in convs if kind == "group"}

    def record(meta: dict, raw: bytes) -> None:
        serial = archive.journal.append("wecom.directory", meta, raw)
        archive.journal.sync()
        apply(archive, [Entry(serial, meta["fetched_at"], "wecom.directory", meta, raw)])

    calls = directory.plan(people, groups, directory.conversation_pairs(convs))
    return directory.sync(directory.Client(opts), calls, source, record)


def import_hr(archive: Archive, data: bytes, source: str, file_name: str, timezone: str):
    """Journal an HR export as it is, then apply it; returns the parsed rows (with problems).
    Raises HrImportError, before journaling anything, if the file is unusable."""
    from wxarchive.capture import hr

    rows = hr.parse(data, hr.when_in(timezone), file_name)  # refuse an unusable file before journaling it
    if not rows.people:
        raise hr.HrImportError(f"{file_name}: no usable rows" + (f" ({rows.problems[0]})" if rows.problems else ""))
    meta = {"source": source, "file": file_name, "timezone": timezone, "rows": rows.rows,
            "received_at": int(time.time() * 1000)}
    serial = archive.journal.append("directory.import", meta, data)
    archive.journal.sync()
    apply(archive, [Entry(serial, meta["received_at"], "directory.import", meta, data)])
    return rows


def catch_up(archive: Archive, batch: int = 2000) -> int:
    """Apply journal entries the catalog does not reflect yet; returns how many."""
    after = archive.catalog.applied_serial()
    n = 0
    buf: list[Entry] = []
    for e in archive.journal.entries(after=after):
        buf.append(e)
        if len(buf) >= batch:
            apply(archive, buf)
            n += len(buf)
            buf = []
    apply(archive, buf)
    return n + len(buf)


def reindex(archive: Archive, progress: ProgressFn = _noop) -> int:
    """Drop the catalog and rebuild it from the journal."""
    archive.catalog.drop_all()
    from wxarchive.archive.catalog.migrate import upgrade

    upgrade(archive.catalog.engine)
    total = 0
    buf: list[Entry] = []
    for e in archive.journal.entries():
        buf.append(e)
        if len(buf) >= 2000:
            apply(archive, buf)
            total += len(buf)
            progress("reindex", {"entries": total})
            buf = []
    apply(archive, buf)
    total += len(buf)
    progress("reindex", {"entries": total})
    return total


# ---- worker-pool side ------------------------------------------------------------------


def _init_worker(pems: dict[int, bytes], lib_path: str | None, native: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    wdecrypt.init_decrypt_worker(pems, lib_path, native)


def _decrypt_and_parse(source: str, items: list[tuple[bytes, int | None]]) -> list[tuple[bytes | None, str | None, Message | None, str | None]]:
    """(plaintext, decrypt error, message, parse error) for each raw item, in order."""
    results = wdecrypt.decrypt_items([raw for raw, _ in items])
    out = []
    for (_, seq), (_, plaintext, reason) in zip(items, results):
        if plaintext is None:
            out.append((None, reason, None, None))
            continue
        try:
            out.append((plaintext, None, parse_message(plaintext, source=source, seq=seq), None))
        except ParseError as err:
            out.append((plaintext, None, None, f"parse: {err}"))
    return out


# ---- the WeCom capture loop ------------------------------------------------------------


class _RateLimiter:
    """At most ``calls`` calls in any ``window`` seconds (WeCom: 600 GetChatData per minute)."""

    def __init__(self, calls: int = RATE_LIMIT_CALLS, window: float = RATE_LIMIT_WINDOW):
        self.calls, self.window = calls, window
        self.stamps: collections.deque[float] = collections.deque()

    def wait(self) -> None:
        now = time.monotonic()
        while self.stamps and now - self.stamps[0] >= self.window:
            self.stamps.popleft()
        if len(self.stamps) >= self.calls:
            time.sleep(self.window - (now - self.stamps[0]))
        self.stamps.append(time.monotonic())


class WeComCapture:
    def __init__(self, archive: Archive, opts: WeComOptions, progress: ProgressFn = _noop, sdk=None,
                 replay: Path | None = None):
        self.archive = archive
        self.replay = replay
        self.opts = opts
        self.progress = progress
        self._sdk = sdk
        self.limiter = _RateLimiter()
        self.stop_requested = False
        self._media_pool: ThreadPoolExecutor | None = None
        self._media_local = threading.local()
        self._media_lock = threading.Lock()
        self._media_sdks: list = []

    # -- the SDK, with retries ---------------------------------------------------------

    @property
    def sdk(self):
        if self._sdk is None:
            from wxarchive.capture.wecom.worker import SdkWorker

            self._sdk = SdkWorker(self.opts.corp_id, self.opts.secret, lib_path=self.opts.sdk_lib)
        return self._sdk

    def _call(self, what: str, sdk, method: str, *args):
        """Call ``sdk.method(*args)``, retrying transient SDK errors with exponential backoff.

        GetMediaData reports a server-side token error as 10002 (the SDK maps every
        unexpected media errcode to it) and keeps its stale token (P16), so a repeated
        10002 also recreates the handle before the next try.
        """
        from wxarchive.capture.wecom.sdk import SdkError

        delay = self.opts.retry_base
        for attempt in range(1, self.opts.max_retries + 1):
            try:
                return getattr(sdk, method)(*args)
            except SdkError as err:
                retryable = getattr(err, "retryable", False) or err.code in RETRYABLE_SDK or err.code < 0
                if not retryable or attempt == self.opts.max_retries:
                    raise
                if err.code == 10002:
                    sdk.recreate()
                log.warning("%s failed (%s); retry %d/%d in %.1fs", what, err, attempt,
                            self.opts.max_retries - 1, delay)
                self.progress("retry", {"what": what, "error": str(err), "attempt": attempt})
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def _pull(self, cursor: int) -> list[dict[str, Any]]:
        """One GetChatData call, with token-error recovery; raises CaptureError on server errors."""
        from wxarchive.capture.wecom.sdk import SdkError

        for token_attempt in range(3):
            self.limiter.wait()
            try:
                body = self._call("GetChatData", self.sdk, "get_chat_data", cursor, self.opts.limit,
                                  self.opts.proxy, self.opts.proxy_auth, self.opts.timeout)
            except SdkError as err:
                raise CaptureError(f"GetChatData from seq {cursor} failed: {err}") from None
            try:
                resp = json.loads(body)
                if not isinstance(resp, dict):
                    raise ValueError("not an object")
            except (ValueError, UnicodeDecodeError):
                raise CaptureError(
                    f"GetChatData from seq {cursor}: the server's answer is not JSON ({len(body)} bytes)"
                ) from None
            code = resp.get("errcode", 0)
            if code == 0:
                items = resp.get("chatdata") or []
                if not isinstance(items, list):
                    raise CaptureError(f"GetChatData from seq {cursor}: 'chatdata' is not a list")
                return items
            msg = str(resp.get("errmsg", ""))[:200]
            if code in TOKEN_ERRCODES and token_attempt < 2:
                log.warning("WeCom token rejected (errcode %s); recreating the SDK handle", code)
                self.progress("token", {"errcode": code})
                self.sdk.recreate()
                continue
            hint = ""
            if code == 301042:
                hint = " — add this server's egress IP to the archive's trusted IP list (可信IP)"
            raise CaptureError(f"WeCom refused GetChatData from seq {cursor}: errcode {code} {msg}{hint}")
        raise AssertionError("unreachable")

    # -- durability steps --------------------------------------------------------------

    def _journal_raw(self, items: list[dict[str, Any]], result: RunResult) -> list[tuple[Entry, dict[str, Any]]]:
        """Append the new raw items; returns (entry, item) for each one written."""
        source = self.opts.source
        keyed = []
        for item in items:
            msgid = item.get("msgid") if isinstance(item, dict) else None
            seq = item.get("seq") if isinstance(item, dict) else None
            key = msgid if isinstance(msgid, str) and msgid else f"seq:{seq}"
            keyed.append((key, item))
        known = self.archive.catalog.known_keys(source, {k for k, _ in keyed})
        written: list[tuple[Entry, dict[str, Any]]] = []
        seen: set[str] = set()
        now = int(time.time() * 1000)
        new: list[tuple[dict[str, Any], bytes]] = []
        for key, item in keyed:
            if key in known or key in seen:
                result.counts["duplicates"] += 1
                continue
            seen.add(key)
            meta = {"source": source, "key": key, "cursor": str(item.get("seq")) if isinstance(item, dict) else None,
                    "received_at": now}
            new.append((meta, _ITEM_ENCODER.encode(item).encode()))
            written.append((Entry(0, now, "wecom.chatdata", meta, new[-1][1]), item))
        first = self.archive.journal.append_many("wecom.chatdata", new, at=now)
        for serial, (entry, _) in enumerate(written, first):
            entry.serial = serial
        # The catalog follows the journal in serial order (``applied_serial`` must never pass
        # an entry it has not applied), so the raw items are registered as pending right away,
        # in a transaction built during their fsync and committed after it. They are decrypted
        # and parsed (by the caller) only once this returned: durable first.
        apply(self.archive, [e for e, _ in written], durable=self.archive.journal.sync_start())
        return written

    def _submit(self, pool, raws: list[tuple[Entry, Any]]) -> list:
        """Start decrypting and parsing raw entries in the pool (chunks of about 250)."""
        work = [(e.data, _int(e.meta.get("cursor"))) for e, _ in raws]
        n = max(1, min(250, len(work) // (self.opts.workers or os.cpu_count() or 1) + 1))
        return [pool.submit(_decrypt_and_parse, self.opts.source, work[i : i + n]) for i in range(0, len(work), n)]

    def _collect(self, raws: list[tuple[Entry, Any]], futures: list, result: RunResult
                 ) -> tuple[list[Entry], dict[int, tuple[Message | None, str | None]]]:
        """Journal each outcome (plaintext or quarantine); returns the entries and parsed messages."""
        source = self.opts.source
        outcomes = [o for f in futures for o in f.result()]
        entries: list[Entry] = []
        parsed: dict[int, tuple[Message | None, str | None]] = {}
        for (raw, _), (plaintext, derr, msg, perr) in zip(raws, outcomes):
            base = {"source": source, "key": raw.meta["key"], "cursor": raw.meta.get("cursor"),
                    "raw_serial": raw.serial}
            if plaintext is None:
                meta = {**base, "reason": derr or "undecryptable"}
                serial = self.archive.journal.append("quarantine", meta)
                entries.append(Entry(serial, 0, "quarantine", meta, b""))
                result.counts["quarantined"] += 1
                log.warning("quarantined %s (seq %s): %s", raw.meta["key"], raw.meta.get("cursor"), meta["reason"])
                continue
            serial = self.archive.journal.append("wecom.message", base, plaintext)
            entries.append(Entry(serial, 0, "wecom.message", base, plaintext))
            parsed[serial] = (msg, perr)
            if msg is None:
                result.counts["quarantined"] += 1
                log.warning("quarantined %s (seq %s): %s", raw.meta["key"], raw.meta.get("cursor"), perr)
            else:
                result.counts["archived"] += 1
        return entries, parsed

    def _decrypt_apply(self, pool, raws: list[tuple[Entry, Any]], result: RunResult) -> None:
        """Decrypt, journal outcomes, sync, apply: the unpipelined path (recovery and replay)."""
        entries, parsed = self._collect(raws, self._submit(pool, raws), result)
        self.archive.journal.sync()
        apply(self.archive, entries, parsed)

    def _finish_pending(self, pool, result: RunResult) -> None:
        """Raw items journaled by a run that died before their outcome was journaled."""
        pending = self.archive.catalog.pending_records(self.opts.source)
        if not pending:
            return
        wanted = {serial for _, serial in pending}
        raws = [(e, None) for e in self.archive.journal.entries(after=min(wanted) - 1, kinds={"wecom.chatdata"})
                if e.serial in wanted]
        log.info("finishing %d raw records left pending by an interrupted run", len(raws))
        result.counts["recovered"] += len(raws)
        self._decrypt_apply(pool, raws, result)

    # -- media ---------------------------------------------------------------------------

    def _media_sdk(self):
        """One SDK handle (in its own process) per media thread: the SDK wants a handle per thread."""
        sdk = getattr(self._media_local, "sdk", None)
        if sdk is None:
            from wxarchive.capture.wecom.worker import SdkWorker

            sdk = SdkWorker(self.opts.corp_id, self.opts.secret, lib_path=self.opts.sdk_lib)
            self._media_local.sdk = sdk
            with self._media_lock:
                self._media_sdks.append(sdk)
        return sdk

    def _fetch_one(self, sdkfileid: str) -> bytes:
        chunks: list[bytes] = []
        index = ""
        sdk = self._media_sdk()
        while True:
            chunk = self._call("GetMediaData", sdk, "get_media_chunk", index, sdkfileid,
                               self.opts.proxy, self.opts.proxy_auth, self.opts.timeout)
            chunks.append(chunk.data)
            if chunk.is_finish:
                return b"".join(chunks)
            if not chunk.outindexbuf or chunk.outindexbuf == index:
                raise _MediaFailure("the SDK returned no next range before the end of the file")
            index = chunk.outindexbuf

    def _fetch_attachment(self, att: dict[str, Any]) -> dict[str, Any]:
        from wxarchive.capture.wecom.sdk import SdkError

        if not att.get("source_ref"):
            return {"state": AttachmentState.MISSING.value, "reason": "the message carries no sdkfileid"}
        last = ""
        for attempt in range(1, MEDIA_FILE_RETRIES + 1):
            try:
                data = self._fetch_one(att["source_ref"])
            except SdkError as err:
                if err.code == 10010:
                    return {"state": AttachmentState.EXPIRED.value, "reason": "expired on the WeCom side (10010)"}
                if err.code == 10009:
                    return {"state": AttachmentState.FAILED.value,
                            "reason": "10009: this server's IP is not in the archive's trusted IP list"}
                return {"state": AttachmentState.FAILED.value, "reason": f"GetMediaData: {err}"}
            except _MediaFailure as err:
                last = str(err)
                continue
            declared = (att.get("declared_md5") or "").lower()
            if declared and hashlib.md5(data).hexdigest() != declared:
                last = f"md5 mismatch after {attempt} attempt(s)"
                log.warning("media %s/%s: md5 mismatch, retrying", att["msgid"], att["path"] or "-")
                continue
            sha = self.archive.blobs.put(data)
            return {"state": AttachmentState.PRESENT.value, "sha256": sha, "size": len(data)}
        return {"state": AttachmentState.FAILED.value, "reason": last}

    def fetch_media(self, result: RunResult) -> None:
        """Fetch every pending attachment of this source, several at a time.

        Blobs are written (and fsynced) by the fetching threads; outcomes are journaled
        by this thread only, in the order of the pending list.
        """
        source = self.opts.source
        if self._media_pool is None:
            self._media_pool = ThreadPoolExecutor(self.opts.media_workers, thread_name_prefix="media")
        while not self.stop_requested:
            pending = self.archive.catalog.pending_attachments(source, limit=200)
            if not pending:
                return
            entries = []
            futures = [self._media_pool.submit(self._fetch_attachment, att) for att in pending]
            for att, fut in zip(pending, futures):
                outcome = fut.result()
                meta = {"source": source, "key": att["msgid"], "path": att["path"], **outcome}
                serial = self.archive.journal.append("media", meta)
                entries.append(Entry(serial, 0, "media", meta, b""))
                result.media[outcome["state"]] += 1
                self.progress("media", {"state": outcome["state"]})
            self.archive.journal.sync()
            apply(self.archive, entries)

    # -- the run -------------------------------------------------------------------------

    def run(self) -> RunResult:
        archive, source = self.archive, self.opts.source
        catch_up(archive)
        archive.blobs.sweep()  # partial blob files a killed run left
        ended = []
        # each entry's time as journaled (at=): what reindex gives the catalog, it gets now
        now = int(time.time() * 1000)
        for dead in archive.catalog.unfinished_runs(source):
            meta = {"source": source, "run": dead, "status": "interrupted",
                    "error": "the process ended without closing this run", "counts": {}}
            ended.append(Entry(archive.journal.append("run.end", meta, at=now), now, "run.end", meta, b""))
        cursor = int(archive.catalog.cursor(source) or 0)
        meta = {"source": source, "cursor": str(cursor), "pid": os.getpid(), "follow": self.opts.follow}
        run_id = archive.journal.append("run.start", meta, at=now)
        archive.journal.sync()
        apply(archive, ended + [Entry(run_id, now, "run.start", meta, b"")])
        result = RunResult(run_id, source, cursor=str(cursor))
        ctx = get_context("spawn")
        try:
            with ProcessPoolExecutor(
                max_workers=self.opts.workers or os.cpu_count() or 1, mp_context=ctx,
                initializer=_init_worker,
                initargs=(self.opts.private_keys, self.opts.sdk_lib, self.opts.native_decrypt),
            ) as pool:
                self._finish_pending(pool, result)
                if self.opts.secret and self.opts.fetch_media:
                    self.fetch_media(result)
                self._loop(pool, cursor, result)
            result.status = "stopped" if self.stop_requested else "ok"
        except CaptureError as err:
            result.status, result.error = "failed", str(err)
        except KeyboardInterrupt:
            result.status, result.error = "interrupted", "interrupted by the operator"
        finally:
            self._end_run(result)
        return result

    def _loop(self, pool, cursor: int, result: RunResult) -> None:
        """Pull, journal and decrypt batch n+1 while batch n is finished: a two-stage pipeline.

        Batch n+1's raw items are durable before its decryption starts; batch n's cursor is
        journaled only after batch n's outcomes, so the cursor never covers anything that is
        not durable, whatever the interleaving.
        """
        if self.replay is not None:
            self._loop_replay(pool, result)
            return
        pulled_to = cursor  # largest seq pulled (in memory); ``cursor`` is the durable one
        inflight: _Batch | None = None
        while True:
            items: list[dict[str, Any]] = []
            room = None if self.opts.max_records is None else self.opts.max_records - result.counts["pulled"]
            if not self.stop_requested and (room is None or room > 0):
                try:
                    items = self._pull(pulled_to)
                except CaptureError:
                    if inflight is not None:  # what was pulled before the error is kept
                        self._finish(inflight, result)
                    raise
                if room is not None:
                    items = items[:room]
            batch = None
            if items:
                result.counts["pulled"] += len(items)
                seqs = sorted(s for s in (_int(i.get("seq")) if isinstance(i, dict) else None for i in items)
                              if s is not None)
                if not seqs:
                    raise CaptureError(f"GetChatData from seq {pulled_to}: records carry no usable seq")
                result.gaps += _count_gaps(pulled_to, seqs)
                raws = self._journal_raw(items, result)
                batch = _Batch(raws, self._submit(pool, raws), max(seqs[-1], pulled_to), len(items))
                pulled_to = batch.cursor
            if inflight is not None:
                cursor = self._finish(inflight, result)
            inflight = batch
            if batch is not None:
                continue
            if self.opts.follow and not self.stop_requested and (room is None or room > 0):
                self.progress("idle", {"cursor": cursor})
                self._sleep(self.opts.poll_interval)
                continue
            return

    def _finish(self, batch: _Batch, result: RunResult) -> int:
        entries, parsed = self._collect(batch.raws, batch.futures, result)
        cmeta = {"source": self.opts.source, "cursor": str(batch.cursor)}
        entries.append(Entry(self.archive.journal.append("cursor", cmeta), 0, "cursor", cmeta, b""))
        # the outcomes' catalog rows are built while the journal fsyncs them (and the cursor)
        apply(self.archive, entries, parsed, durable=self.archive.journal.sync_start())
        self.archive.maybe_checkpoint()
        result.cursor = str(batch.cursor)
        self.progress("batch", {"pulled": batch.pulled, "cursor": batch.cursor, **result.counts})
        self._check_lag(parsed, result)
        if self.opts.fetch_media:
            self.fetch_media(result)
        return batch.cursor

    def _loop_replay(self, pool, result: RunResult) -> None:
        """Raw items saved elsewhere: archived and deduplicated, but the live cursor is untouched."""
        for items in replay_items(self.replay):
            if self.stop_requested:
                return
            result.counts["pulled"] += len(items)
            self._decrypt_apply(pool, self._journal_raw(items, result), result)
            self.archive.maybe_checkpoint()  # a long replay is signed as it goes, like a live capture
            self.progress("batch", {"pulled": len(items), **result.counts})
            if self.opts.secret and self.opts.fetch_media:
                self.fetch_media(result)

    def _check_lag(self, parsed: dict[int, tuple[Message | None, str | None]], result: RunResult) -> None:
        if not self.opts.follow or result.lag_warned:
            return
        newest = None
        for msg, _ in parsed.values():
            if msg is not None and msg.sent_at is not None:
                newest = msg.sent_at if newest is None else max(newest, msg.sent_at)
        if newest is not None and time.time() * 1000 - newest > LAG_WARN_MS:
            hours = (time.time() * 1000 - newest) / 3600000
            log.warning("capture lags %.0f hours behind; WeCom keeps records only about 3 days", hours)
            self.progress("lag", {"hours": hours})
            result.lag_warned = True

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < end:
            time.sleep(min(0.5, end - time.monotonic()))

    def _end_run(self, result: RunResult) -> None:
        meta = {"source": result.source, "run": result.run_id, "status": result.status,
                "error": result.error, "counts": dict(result.counts), "media": dict(result.media),
                "cursor": result.cursor, "gaps": result.gaps}
        now = int(time.time() * 1000)
        self.archive.journal.append("run.end", meta, at=now)
        self.archive.journal.sync()
        # an interrupt may have stopped a batch's catalog transaction: the catalog catches up
        # to the journal (whatever it lacks, then this run.end) rather than apply out of step
        catch_up(self.archive)
        if self._media_pool is not None:
            self._media_pool.shutdown(wait=True, cancel_futures=True)
        for sdk in self._media_sdks + ([self._sdk] if self._sdk is not None else []):
            sdk.close()
        log.info("run %s ended %s: %s", result.run_id, result.status, dict(result.counts))


class _MediaFailure(Exception):
    pass


@dataclass
class _Batch:
    """A pulled batch whose raw items are durable and whose decryption is under way."""

    raws: list[tuple[Entry, Any]]
    futures: list
    cursor: int  # the largest seq this batch covers
    pulled: int


def _count_gaps(cursor: int, seqs: list[int]) -> int:
    """Seq gaps are recorded, not treated as loss (case K5)."""
    gaps, prev = 0, cursor
    for s in seqs:
        if prev and s > prev + 1:
            gaps += 1
        prev = max(prev, s)
    return gaps


def replay_items(path: Path) -> Iterable[list[dict[str, Any]]]:
    """Raw chatdata items saved elsewhere (JSON lines: one item, or one GetChatData answer, per line)."""
    batch: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise CaptureError(f"{path}:{lineno}: not a JSON line") from None
            if isinstance(obj, dict) and isinstance(obj.get("chatdata"), list):
                batch.extend(obj["chatdata"])
            elif isinstance(obj, dict):
                batch.append(obj)
            else:
                raise CaptureError(f"{path}:{lineno}: expected a chatdata item or a GetChatData answer")
            if len(batch) >= 1000:
                yield batch
                batch = []
    if batch:
        yield batch


# ---- re-import of an export of record -----------------------------------------------------


@dataclass
class ImportResult:
    entries: int = 0
    records: int = 0
    messages: int = 0
    quarantined: int = 0
    duplicates: int = 0
    media: int = 0
    state: int = 0  # directory, census and hold entries journaled
    state_duplicates: int = 0  # ... already held
    problems: list[str] = field(default_factory=list)
    signed_by: str = ""
    archive_id: str = ""


def import_export(archive: Archive, folder: Path, progress: ProgressFn = _noop, batch: int = 1000,
                  expect_fingerprint: str | None = None) -> ImportResult:
    """Journal the entries of an ``export --format jsonl`` folder into ``archive``.

    Idempotent: a record the archive already holds is counted as a duplicate and skipped.
    Media bytes are stored (and checked against their SHA-256) before the entry naming them.
    The import is one run per source in the catalog, so status reconciles.
    """
    from wxarchive.capture.jsonl import STATE_KINDS, media_bytes, open_export, read_entries, read_state, state_digest

    manifest = open_export(folder, expect_fingerprint)
    catch_up(archive)
    archive.blobs.sweep()  # partial blob files a killed run left
    result = ImportResult(signed_by=manifest["key_fingerprint"], archive_id=manifest.get("archive_id", ""))
    j = archive.journal
    runs: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    new_raw: dict[int, int] = {}
    skip: set[tuple[str, str]] = set()
    pending: list[Entry] = []
    parsed: dict[int, tuple[Message | None, str | None]] = {}  # parsed once: counted here, applied by apply

    def flush() -> None:
        if pending:
            j.sync()
            apply(archive, pending, parsed)
            archive.maybe_checkpoint()
            progress("import", {"entries": result.entries})
            pending.clear()
            parsed.clear()

    # the directory, censuses and holds first (an export of everything carries them), each once
    have: set[str] | None = None
    for e in read_state(folder, result.problems):
        if have is None:
            have = {state_digest(x.kind, x.time, x.meta, x.data) for x in j.entries(kinds=STATE_KINDS)}
        meta = {k: v for k, v in e.meta.items() if k not in ("retained_from", "imported_from")}
        digest = state_digest(e.kind, e.time, meta, e.data)
        if digest in have:
            result.state_duplicates += 1
            continue
        have.add(digest)
        meta["imported_from"] = result.archive_id
        serial = j.append(e.kind, meta, e.data, at=e.time)
        pending.append(Entry(serial, e.time, e.kind, meta, e.data))
        result.state += 1
        if len(pending) >= batch:
            flush()
    flush()
    for e in read_entries(folder, result.problems):
        src, key = e.meta["source"], e.meta["key"]
        if src not in runs:
            flush()
            meta = {"source": src, "cursor": archive.catalog.cursor(src), "pid": os.getpid(),
                    "import": str(folder)}
            now = int(time.time() * 1000)
            runs[src] = j.append("run.start", meta, at=now)
            counts[src] = {"pulled": 0, "recovered": 0, "archived": 0, "duplicates": 0, "quarantined": 0}
            pending.append(Entry(runs[src], now, "run.start", meta, b""))
        c = counts[src]
        if e.kind in ("wecom.chatdata", "wechat.row"):  # raw records: the unit of deduplication
            c["pulled"] += 1
            result.records += 1
            flush()
            if archive.catalog.known_keys(src, [key]):
                c["duplicates"] += 1
                result.duplicates += 1
                skip.add((src, key))
                continue
        if (src, key) in skip:
            continue
        meta = {k: v for k, v in e.meta.items() if k != "retained_from"}
        if "raw_serial" in meta:
            meta["raw_serial"] = new_raw.get(meta["raw_serial"], meta["raw_serial"])
        if e.kind == "media" and meta.get("state") == "present" and meta.get("sha256"):
            data = media_bytes(folder, meta["sha256"])
            if data is None:
                result.problems.append(f"{folder / 'media' / meta['sha256']}: missing or altered; "
                                       f"attachment of {key} recorded as failed")
                meta = {**meta, "state": "failed", "reason": "media file missing from the import"}
                meta.pop("sha256", None)
            else:
                archive.blobs.put(data)
                result.media += 1
        serial = j.append(e.kind, meta, e.data, at=e.time)
        if e.kind == "wecom.chatdata":
            new_raw[e.serial] = serial
        if e.kind in ("wecom.message", "wechat.row"):
            entry = Entry(serial, e.time, e.kind, meta, e.data)
            outcome = parsed[serial] = (_parse_entry if e.kind == "wecom.message" else _parse_wechat)(entry)
            if outcome[0] is None:  # kept, but quarantined as at capture: it does not parse
                c["quarantined"] += 1
                result.quarantined += 1
            else:
                c["archived"] += 1
                result.messages += 1
        elif e.kind == "quarantine":
            c["quarantined"] += 1
            result.quarantined += 1
        result.entries += 1
        pending.append(Entry(serial, e.time, e.kind, meta, e.data))
        if len(pending) >= batch:
            flush()
    flush()
    for src, run_id in runs.items():
        meta = {"source": src, "run": run_id, "status": "ok", "error": None, "counts": counts[src],
                "cursor": archive.catalog.cursor(src)}
        now = int(time.time() * 1000)
        serial = j.append("run.end", meta, at=now)
        pending.append(Entry(serial, now, "run.end", meta, b""))
        flush()
    return result
