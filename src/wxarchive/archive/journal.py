"""The journal: the archive's record of truth.

Append-only segment files. Every entry is numbered (serial, from 1, no gaps),
time-stamped, encrypted with AES-256-GCM under its segment's data key, and
SHA-256 hash-chained to the entry before it, across segments. The chain covers
the ciphertext, so an auditor can check it without any key, and crypto-shredding
(destroying a segment's data key) leaves the chain intact.

Segment file ``seg-<first serial, 12 digits>.wxj``::

    b"WXJ1" | u32 n | n bytes of JSON header (segment, first_serial, prev_hash, created_at)
    frame*

    frame  = u32 length of the rest | head | nonce (12) | ciphertext+tag | hash (32)
    head   = u64 serial | u64 time_ms | u16 len(kind) | kind (ascii)
    hash   = SHA-256(previous entry's hash | head | nonce | ciphertext+tag)
    plaintext = u32 len(meta) | meta (JSON: source, key, cursor, received_at, ...) | data

The data key of a segment lives wrapped under the master key in
``keys/seg-<first serial>.key`` beside the segments.

Durability: ``append`` holds frames in memory (writing them every 256 KiB and starting
their writeback, without waiting, into blocks reserved ahead); ``sync`` writes the rest and
fsyncs. Nothing that depends on an entry (a capture cursor, a catalog row) may be committed
before ``sync`` returned. ``sync_start`` / ``sync_wait`` split it for group commit: the fsync
runs in a thread while the caller prepares what depends on the entries, and ``sync_wait``
comes before that is committed. A failed write or fsync is not retried: the journal refuses until reopened. A crash can leave a torn tail; ``open`` cuts it off (only a
tail nothing relied on and nothing readable follows: see ``_recover``; damage anywhere else is
refused, for ``wxarchive verify`` to report).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wxarchive.archive.files import fsync_dir, write_atomic
from wxarchive.archive.keys import MasterKeyProvider, new_data_key

MAGIC = b"WXJ1"
GENESIS_HASH = b"\0" * 32
SEGMENT_BYTES = 64 * 1024 * 1024
HEAD = struct.Struct(">QQH")
_U32 = struct.Struct(">I")
_U64x2 = struct.Struct(">QQ")  # the head's serial and time, before the kind's u16 length
_KIND_BYTES: dict[str, bytes] = {}  # kind -> u16 length | ascii, built once per kind
_sha256 = hashlib.sha256
def _not_json(o: Any) -> Any:
    raise TypeError(f"journal metadata: {type(o).__name__} is not JSON serializable")


_META_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME  # those: refused


def _encode_meta(meta: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (what json.dumps(ensure_ascii=False, separators=(",", ":")) writes),
    by orjson: the stdlib encoder cost more per entry than the AES-GCM over it."""
    return orjson.dumps(meta, default=_not_json, option=_META_OPTIONS)


def _kind_bytes(kind: str) -> bytes:
    """The head's ``u16 len(kind) | kind``, built once per kind."""
    kb = _KIND_BYTES[kind] = len(kind).to_bytes(2, "big") + kind.encode("ascii")
    return kb


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def decode_meta(raw: bytes) -> Any:
    """The JSON metadata of an entry (a ValueError if it is not one JSON value in UTF-8)."""
    return orjson.loads(raw)


# Appended frames are held in memory up to this many bytes, then written and their writeback
# started; ``sync`` writes the rest and fsyncs. 256 KiB: about 4 writes per ingest batch of 1,000
# records of 600 bytes (smaller costs more in sync_file_range calls than it saves in fsync).
_WRITE_BYTES = 1 << 18
_NONCE_BASES = (1 << 96) - (1 << 64)  # nonce = base + serial, base < this: no overflow
_time_ns = time.time_ns


def _libc_call(name: str, flag: int):
    """``name(fd, <flag>, offset, n)`` / ``name(fd, offset, n, <flag>)`` of the C library as a
    function of (fd, offset, n), its result ignored by callers; None where there is no such call."""
    try:
        import ctypes

        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    c_int, c_i64 = ctypes.c_int, ctypes.c_int64
    fn.restype = c_int
    if name == "fallocate":
        fn.argtypes = (c_int, c_int, c_i64, c_i64)
        return lambda fd, offset, n: fn(fd, flag, offset, n)
    fn.argtypes = (c_int, c_i64, c_i64, ctypes.c_uint)
    return lambda fd, offset, n: fn(fd, offset, n, flag)


# ``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`` (Linux): start writing those pages to
# disk now, without waiting for it, so that the fsync of the next ``sync`` finds less to do
# (measured by bench/journal.py: the wait in ``sync`` about halves, most under a busy disk). A
# hint only: durability comes from that fsync alone.
_start_writeback = _libc_call("sync_file_range", 2)  # 2: SYNC_FILE_RANGE_WRITE
# ``fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, n)`` (Linux): reserve the segment's next blocks
# ahead of the writes without changing its size (readers, which stop at the file's end, see
# nothing of it): appending into reserved blocks spares each write the file system's block
# allocation. Its result is ignored: a file system without it (or a full disk, which the write
# itself then reports) just allocates as it writes.
_preallocate = _libc_call("fallocate", 1)  # 1: FALLOC_FL_KEEP_SIZE
_PREALLOCATE_BYTES = 8 << 20  # reserved ahead of the writes, at most this much at a time
_dumps = orjson.dumps


class JournalError(Exception):
    """The journal cannot be used as it is; the message names the file and offset."""


@dataclass
class Entry:
    serial: int
    time: int
    kind: str
    meta: dict[str, Any]
    data: bytes
    segment: str = ""
    offset: int = 0
    hash: bytes = b""

    @property
    def source(self) -> str | None:
        return self.meta.get("source")

    @property
    def key(self) -> str | None:
        return self.meta.get("key")


@dataclass
class Frame:
    """A frame as stored, before decryption."""

    serial: int
    time: int
    kind: str
    head: bytes
    nonce: bytes
    ciphertext: bytes
    hash: bytes
    segment: Path
    offset: int


def chain_hash(prev: bytes, head: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    h = hashlib.sha256(prev)
    h.update(head)
    h.update(nonce)
    h.update(ciphertext)
    return h.digest()


def read_segment_header(f) -> dict[str, Any]:
    """A segment's JSON header (JournalError, naming the file, when it is not a whole one)."""
    name = Path(str(f.name)).name
    magic = f.read(4)
    if magic != MAGIC:
        raise JournalError(f"{name}: not a journal segment (bad magic)")
    size = f.read(4)
    if len(size) < 4:
        raise JournalError(f"{name}: segment header cut short")
    (n,) = _U32.unpack(size)
    raw = f.read(n) if n <= _MAX_HEADER else b""
    try:
        header = json.loads(raw)
        if not isinstance(header, dict) or not isinstance(header.get("first_serial"), int) \
                or not isinstance(header.get("prev_hash"), str):
            raise ValueError
        bytes.fromhex(header["prev_hash"])
    except ValueError:
        raise JournalError(f"{name}: segment header cut short or not a segment header") from None
    return header


_MIN_BODY = HEAD.size + 12 + 16 + 32
_MAX_HEADER = 1 << 16  # a segment header is ~200 bytes of JSON
_READ_CHUNK = 4 << 20


def iter_bodies(path: Path) -> Iterator[tuple[int, bytes] | tuple[str, int]]:
    """``(offset, body)`` of each frame of one segment, read in large chunks (``body`` is the
    frame after its length: head | nonce | ciphertext+tag | hash); ``("torn", offset)`` for an
    incomplete final frame, after which nothing more is read."""
    with open(path, "rb", buffering=0) as f:
        read_segment_header(f)
        base = f.tell()  # file offset of buf[0]
        buf, pos, eof = f.read(_READ_CHUNK), 0, False
        unpack = _U32.unpack_from
        while True:
            avail = len(buf) - pos
            need = 4
            if avail >= 4:
                need = 4 + unpack(buf, pos)[0]
                if avail >= need:
                    if need - 4 < _MIN_BODY:
                        yield ("torn", base + pos)
                        return
                    yield base + pos, buf[pos + 4 : pos + need]
                    pos += need
                    continue
            if eof:
                if avail:
                    yield ("torn", base + pos)
                return
            more = f.read(max(_READ_CHUNK, need - avail))
            if not more:
                eof = True
                continue
            buf, base, pos = buf[pos:] + more, base + pos, 0


def iter_frames(path: Path) -> Iterator[Frame | tuple[str, int]]:
    """Frames of one segment; yields ("torn", offset) for an incomplete final frame."""
    for item in iter_bodies(path):
        offset, body = item
        if isinstance(offset, str):
            yield item  # type: ignore[misc]
            return
        serial, t, klen = HEAD.unpack_from(body)
        hl = HEAD.size + klen
        yield Frame(serial, t, body[HEAD.size : hl].decode("ascii", "replace"), body[:hl],
                    body[hl : hl + 12], body[hl + 12 : -32], body[-32:], path, offset)


# A frame's head as bytes: serial (u64, below 2**40), time in ms (u64, below 2**48), kind length
# (u16, 1-127): zeros and random bytes match it almost never, so candidates are few.
_HEAD_SHAPE = re.compile(rb"\x00\x00\x00.{5}\x00\x00.{6}\x00[\x01-\x7f]", re.DOTALL)


def frames_follow(tail: bytes, serial: int, aead: AESGCM) -> bool:
    """Whether ``tail`` (bytes of a segment, from some offset to its end) holds a whole frame of
    entry ``serial`` or a later one that decrypts under ``aead``: written entries, which a
    damaged frame before them must not get cut off with. One pass over the bytes."""
    highest = serial + len(tail) // (4 + _MIN_BODY)
    if highest >= 1 << 40:  # beyond _HEAD_SHAPE: test every offset
        starts: Iterable[int] = range(4, len(tail))
    else:
        starts = (m.start() for m in _HEAD_SHAPE.finditer(tail, 4))
    for pos in starts:
        s = int.from_bytes(tail[pos : pos + 8], "big")
        if not serial <= s <= highest:
            continue
        n = _U32.unpack_from(tail, pos - 4)[0]
        body = tail[pos : pos + n]
        if n < _MIN_BODY or len(body) < n:
            continue
        hl = HEAD.size + HEAD.unpack_from(body)[2]
        try:
            aead.decrypt(body[hl : hl + 12], body[hl + 12 : -32], body[:hl])
            return True
        except (InvalidTag, ValueError):
            continue
    return False


class Journal:
    def __init__(self, directory: Path, master: MasterKeyProvider):
        self.dir = directory
        self.keys_dir = directory / "keys"
        self.repair: dict[str, Any] | None = None  # what opening cut off a torn tail (see _recover)
        self.master = master
        self.head_serial = 0
        self.head_hash = GENESIS_HASH
        self._file = None  # the segment open for appending (unbuffered: ``_pending`` is the buffer)
        self._segment: Path | None = None
        self._aead: AESGCM | None = None
        self._aead_cache: dict[str, AESGCM] = {}
        self.readonly = False
        self._segment_bytes: int | None = None
        # Appended frames not yet written, as parts (length, head | nonce, ciphertext, hash).
        self._pending: list[bytes] = []
        # Bookkeeping of the hot path: ``append`` only subtracts each frame's size from
        # ``_budget``; when it is spent, ``_make_room`` writes the pending frames or starts a
        # new segment. ``_seg_bytes`` and ``_pending_bytes`` are as of the last ``_settle``.
        self._budget = 0  # 0: nothing is open for appending
        self._budget_set = 0
        self._seg_bytes = 0
        self._pending_bytes = 0
        self._reserved = 0  # the segment's blocks reserved up to this offset (see _preallocate)
        self._synced = 0  # head_serial when the last sync returned (or the journal was opened)
        self._failed: BaseException | None = None  # a write or fsync that failed: no more appends
        self._syncer: ThreadPoolExecutor | None = None  # runs the fsyncs of ``sync_start``
        self._inflight: tuple[int, Future] | None = None  # (serial covered, its running fsync)
        self._nonce_base = 0  # drawn from os.urandom whenever a segment is opened for appending

    @property
    def segment_bytes(self) -> int | None:
        """Size at which a new segment is started (None: the module's ``SEGMENT_BYTES``)."""
        return self._segment_bytes

    @segment_bytes.setter
    def segment_bytes(self, value: int | None) -> None:
        self._settle()  # the next append re-reads it
        self._segment_bytes = value

    # ---- opening -------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, master: MasterKeyProvider, *, readonly: bool = False,
             durable_floor: int = 0) -> Journal:
        """Open for appending (repairing a torn tail first), or ``readonly`` to only read:
        then nothing is created or cut, so a reader is safe beside a running writer.

        ``durable_floor``: the newest serial something outside the journal already relied on
        (a signed checkpoint, the catalog's applied serial). A tail that fails the chain above
        it may be a tear a power loss left (see ``_recover``); at or below it, never."""
        if readonly:
            j = cls(directory, master)
            j.readonly = True
            return j
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "keys").mkdir(exist_ok=True)
        j = cls(directory, master)
        j._recover(durable_floor)
        return j

    def segments(self) -> list[Path]:
        return sorted(self.dir.glob("seg-*.wxj"))

    def _recover(self, floor: int = 0) -> None:
        """Find the head; cut a torn tail off the newest segment.

        A crash mid-write leaves an incomplete final frame; a power loss can also leave
        complete-length frames whose bytes never reached the disk (zeros, stale sectors), which
        fail the chain. Either is cut, but only when both hold: the first entry lost is above
        ``floor`` (nothing outside the journal relied on it), and nothing from it to the end of
        the file is a frame that decrypts under the segment's key (garbage cannot pass AES-GCM;
        written data would: a damaged length field must not pass for a tear). A newest segment
        whose header was never completely written (a crash while starting it) is set aside the
        same way. The bytes cut are kept in ``torn/`` and described in ``self.repair`` for the
        archive to journal. Anything else: JournalError, for ``wxarchive verify`` to report."""
        segs = self.segments()
        if not segs:
            return
        last = segs[-1]
        try:
            with open(last, "rb") as f:
                header = read_segment_header(f)
        except JournalError:
            if last.stat().st_size > 8 + _MAX_HEADER:
                raise
            # Only a segment start that died: nothing is appended before its header is synced.
            self.repair = self._cut(last, 0, int(last.stem.split("-")[1]) - 1, "segment header never completed")
            last.unlink()
            fsync_dir(self.dir)
            repair = self.repair
            self._recover(floor)
            self.repair = self.repair or repair
            return
        prev = bytes.fromhex(header["prev_hash"])
        serial = header["first_serial"] - 1
        cut_at, reason = None, ""
        for fr in iter_frames(last):
            if isinstance(fr, tuple):
                cut_at, reason = fr[1], "incomplete final frame"
                break
            if fr.serial != serial + 1 or chain_hash(prev, fr.head, fr.nonce, fr.ciphertext) != fr.hash:
                cut_at, reason = fr.offset, f"entry {serial + 1} and after fail the chain (never durable: torn)"
                break
            serial, prev = fr.serial, fr.hash
        if cut_at is not None:
            why = "a checkpoint or the catalog relies on it" if serial + 1 <= floor else \
                "entries that were written follow it" if self._written_after(last, cut_at, serial + 1) else ""
            if why:
                raise JournalError(f"{last.name}: entry {serial + 1} ({why}) at offset {cut_at} breaks the chain; "
                                   "run 'wxarchive verify'")
            # Nothing from ``cut_at`` on was ever relied on; its bytes are kept for forensics.
            self.repair = self._cut(last, cut_at, serial, reason)
        self.head_serial, self.head_hash = serial, prev
        self._synced = serial

    def _written_after(self, segment: Path, offset: int, serial: int) -> bool:
        """Whether a frame of entry ``serial`` or later starts at or after ``offset`` of
        ``segment`` and decrypts (True too when there is no key to tell)."""
        with open(segment, "rb") as f:
            f.seek(offset)
            tail = f.read()
        try:
            aead = self._segment_aead(segment)
        except JournalError:
            return True
        return frames_follow(tail, serial, aead)

    def _cut(self, segment: Path, offset: int, serial: int, reason: str) -> dict[str, Any] | None:
        """Keep ``segment``'s bytes from ``offset`` in ``torn/`` (if any), then truncate it there."""
        with open(segment, "r+b") as f:
            f.seek(offset)
            rest = f.read()
            if not rest:
                return None
            kept = self.dir / "torn" / f"{segment.stem}-{offset:012d}.bin"
            kept.parent.mkdir(exist_ok=True)
            n = 1
            while kept.exists():  # cut at the same place before: keep both
                kept, n = kept.with_name(f"{segment.stem}-{offset:012d}-{n}.bin"), n + 1
            with open(kept, "wb") as out:
                out.write(rest)
                out.flush()
                os.fsync(out.fileno())
            fsync_dir(kept.parent)
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        return {"segment": segment.name, "offset": offset, "bytes": len(rest), "after_serial": serial,
                "sha256": hashlib.sha256(rest).hexdigest(), "kept": f"torn/{kept.name}", "reason": reason}

    # ---- writing -------------------------------------------------------------------

    def _key_path(self, segment: Path) -> Path:
        return self.keys_dir / (segment.stem + ".key")

    def _segment_aead(self, segment: Path) -> AESGCM:
        name = segment.stem
        aead = self._aead_cache.get(name)
        if aead is None:
            kp = self._key_path(segment)
            if not kp.exists():
                raise JournalError(f"{segment.name}: its data key is gone (shredded or deleted)")
            aead = AESGCM(self.master.unwrap(kp.read_bytes()))
            self._aead_cache[name] = aead
        return aead

    def _start_segment(self) -> None:
        self._close_file()
        first = self.head_serial + 1
        seg = self.dir / f"seg-{first:012d}.wxj"
        kp = self._key_path(seg)
        data_key = new_data_key()
        with open(kp, "wb") as f:
            f.write(self.master.wrap(data_key))
            f.flush()
            os.fsync(f.fileno())
        header = json.dumps(
            {"segment": seg.name, "first_serial": first, "prev_hash": self.head_hash.hex(),
             "created_at": int(time.time() * 1000), "cipher": "AES-256-GCM", "chain": "SHA-256"}
        ).encode()
        f = open(seg, "xb", buffering=0)
        try:
            _write_all(f.fileno(), MAGIC + _U32.pack(len(header)) + header)
            os.fsync(f.fileno())
            fsync_dir(self.keys_dir)
            fsync_dir(self.dir)
        except BaseException:
            f.close()
            raise
        self._file, self._segment = f, seg
        self._aead = AESGCM(data_key)
        self._aead_cache[seg.stem] = self._aead
        self._nonce_base = int.from_bytes(os.urandom(12), "big") % _NONCE_BASES
        self._seg_bytes = self._reserved = 8 + len(header)

    def _open_tail(self) -> None:
        segs = self.segments()
        if not segs or segs[-1].stat().st_size >= (self.segment_bytes or SEGMENT_BYTES):
            self._start_segment()
            return
        self._segment = segs[-1]
        self._aead = self._segment_aead(self._segment)
        self._nonce_base = int.from_bytes(os.urandom(12), "big") % _NONCE_BASES
        self._file = open(self._segment, "ab", buffering=0)
        self._seg_bytes = self._reserved = self._file.seek(0, os.SEEK_END)

    def _settle(self) -> None:
        """Account the frames appended since the last call (``append`` only spends ``_budget``)."""
        used = self._budget_set - self._budget
        self._seg_bytes += used
        self._pending_bytes += used
        self._budget = self._budget_set = 0

    def _make_room(self) -> None:
        """Before an append whose budget is spent: open the tail, or write the pending frames,
        or start a new segment when this one is full; then set the next budget."""
        self._settle()
        self._check_usable()
        limit = self.segment_bytes or SEGMENT_BYTES
        if self._file is None:
            if self.readonly:
                raise JournalError(f"{self.dir}: opened read-only")
            self._open_tail()
        elif self._seg_bytes >= limit:
            self._start_segment()
        elif self._pending_bytes >= _WRITE_BYTES:
            start = self._seg_bytes - self._pending_bytes
            self._write_pending()
            if _start_writeback is not None:
                _start_writeback(self._file.fileno(), start, self._seg_bytes - start)
        # at least 1, so that one frame always goes in (a segment may exceed the limit by one)
        self._budget = self._budget_set = max(1, min(limit - self._seg_bytes, _WRITE_BYTES - self._pending_bytes))

    def _write_pending(self) -> None:
        """Write the pending frames to the segment file (no fsync)."""
        self._settle()
        parts = self._pending
        if not parts:
            return
        try:
            if self._seg_bytes > self._reserved and _preallocate is not None:
                # ahead by as much as the segment holds, 256 KiB to 8 MiB: a small journal
                # (the access log, a test archive) reserves little
                end = self._seg_bytes + min(_PREALLOCATE_BYTES, max(_WRITE_BYTES, self._seg_bytes))
                _preallocate(self._file.fileno(), self._reserved, end - self._reserved)
                self._reserved = end
            _write_all(self._file.fileno(), b"".join(parts))
        except BaseException as e:
            # Some of it may be on disk: the in-memory head is no longer what the file holds.
            # Reopening cuts a torn frame; whole frames written stay (they were never reported durable).
            self._failed = e
            raise
        parts.clear()
        self._pending_bytes = 0

    def append(
        self, kind: str, meta: dict[str, Any], data: bytes = b"", *, at: int | None = None
    ) -> int:
        """Append one entry (held in memory: call ``sync`` before relying on it). Returns its serial."""
        return self.append_many(kind, ((meta, data),), at=at)

    def append_many(self, kind: str, items: Iterable[tuple[dict[str, Any], bytes]], *,
                    at: int | None = None) -> int:
        """Append one entry per ``(meta, data)`` of ``items``, all of ``kind`` and all time-stamped
        ``at`` (default: now, read once), in order; held in memory like ``append``. Returns the
        serial of the first one (the others follow it without gaps); the next serial if
        ``items`` is empty. This is the ingest's path for a batch: the per-entry work is done
        in local variables, which costs a third less than one ``append`` call per entry."""
        first = self.head_serial + 1
        kb = _KIND_BYTES.get(kind) or _kind_bytes(kind)
        t8 = (_time_ns() // 1_000_000 if at is None else at).to_bytes(8, "big")
        dumps, sha256 = _dumps, _sha256
        serial, prev, budget = first - 1, self.head_hash, self._budget
        pending = self._pending
        encrypt, nonce_base = (self._aead.encrypt, self._nonce_base) if budget > 0 else (None, 0)
        try:
            for meta, data in items:
                if budget <= 0:
                    self.head_serial, self.head_hash, self._budget = serial, prev, budget
                    self._make_room()  # may start a segment: a new key and nonce base
                    budget, encrypt, nonce_base = self._budget, self._aead.encrypt, self._nonce_base
                s = serial + 1
                head = s.to_bytes(8, "big") + t8 + kb
                m = dumps(meta, _not_json, _META_OPTIONS)  # = _encode_meta(meta)
                # The GCM nonce: never used before under this segment's key: a random base drawn
                # whenever the segment is opened for appending, plus the serial (the base leaves
                # room for 2**64 serials below 2**96). The serial alone would repeat a nonce when a
                # torn tail is cut and its serial re-used.
                nonce = (nonce_base + s).to_bytes(12, "big")
                hn = head + nonce
                ct = encrypt(nonce, len(m).to_bytes(4, "big") + m + data, head)
                h = sha256(b"".join((prev, hn, ct))).digest()  # = chain_hash(...)
                n = len(hn) + len(ct) + 32  # the frame's body: head | nonce | ciphertext+tag | hash
                pending += (n.to_bytes(4, "big"), hn, ct, h)
                budget -= 4 + n
                serial, prev = s, h
        finally:
            # what was appended stays appended (an entry counts once its frame is pending); an item
            # that failed (metadata that is not JSON) and those after it were not appended
            self.head_serial, self.head_hash, self._budget = serial, prev, budget
        return first

    def head_segment(self) -> str:
        """File name of the segment holding the newest entry."""
        if self._segment is not None:
            return self._segment.name
        segs = self.segments()
        return segs[-1].name if segs else ""

    def sync(self) -> None:
        """Make every appended entry durable (write + fsync). After a failed write or fsync the
        journal refuses to go on (an fsync is not retried: the kernel may have dropped the data
        it could not write); reopening it starts again from what the files hold."""
        self._wait_inflight()
        self._check_usable()
        if self._file is not None and self._synced != self.head_serial:
            self._write_pending()
            try:
                os.fsync(self._file.fileno())
            except OSError as e:  # (an interrupt leaves the file as it was: the next sync tries again)
                self._failed = e
                raise
            self._synced = self.head_serial

    def sync_start(self) -> int:
        """Write every appended entry and start its fsync in the background (group commit): the
        caller goes on with work that does not need them durable — the ingest builds the
        catalog transaction for them — and calls ``sync_wait`` with the returned serial before
        anything may rely on them (that transaction's commit, a cursor). One fsync is in flight
        at a time: a second ``sync_start`` first waits for the first. A failed fsync is reported
        by ``sync_wait`` (or the next ``sync``), and the journal then refuses as after ``sync``."""
        self._wait_inflight()
        self._check_usable()
        if self._file is None or self._synced == self.head_serial:
            return self.head_serial
        self._write_pending()
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="wxarchive-journal-fsync")
        self._inflight = (self.head_serial, self._syncer.submit(os.fsync, self._file.fileno()))
        return self.head_serial

    def sync_wait(self, serial: int) -> None:
        """Return once every entry up to ``serial`` is durable: the fsync ``sync_start`` began
        for it has returned (or, if none covers it, after a ``sync``)."""
        self._wait_inflight()
        if self._synced < serial:
            self.sync()

    def _wait_inflight(self) -> None:
        if self._inflight is None:
            return
        serial, fut = self._inflight
        try:
            fut.result()
        except BaseException as e:
            if fut.done() and fut.exception() is not None:  # the fsync failed (not an interrupt of this wait)
                self._inflight = None
                self._failed = fut.exception()
            raise
        self._inflight = None
        self._synced = max(self._synced, serial)

    def _check_usable(self) -> None:
        if self._failed is not None:
            what = "a write was interrupted" if isinstance(self._failed, KeyboardInterrupt) else \
                f"an earlier write or fsync failed ({self._failed})"
            raise JournalError(f"{self.dir}: {what}; reopen the journal (the next run cuts what was half "
                               "written)") from None

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                if self._failed is None:  # else: nothing more is written; close() only lets go
                    self.sync()
            finally:
                if self._inflight is not None:  # never close the descriptor under a running fsync
                    _, fut = self._inflight
                    wait_futures([fut])
                    self._inflight = None
                self._settle()
                self._file.close()
                self._file = None
                self._pending.clear()
                self._pending_bytes = 0

    def close(self) -> None:
        try:
            self._close_file()
        finally:
            if self._syncer is not None:
                self._syncer.shutdown(wait=True)
                self._syncer = None

    # ---- reading -------------------------------------------------------------------

    def decrypt_frame(self, fr: Frame) -> Entry:
        try:
            pt = self._segment_aead(fr.segment).decrypt(fr.nonce, fr.ciphertext, fr.head)
        except InvalidTag:
            raise JournalError(
                f"{fr.segment.name}: entry {fr.serial} at offset {fr.offset} fails authentication"
            ) from None
        (n,) = _U32.unpack_from(pt)
        meta = decode_meta(pt[4 : 4 + n])
        return Entry(fr.serial, fr.time, fr.kind, meta, pt[4 + n :], fr.segment.name, fr.offset, fr.hash)

    # ---- crypto-shredding ---------------------------------------------------------

    def shredded_marker(self, segment: str) -> Path:
        return self.keys_dir / (Path(segment).stem + ".shredded")

    def is_shredded(self, segment: str) -> bool:
        return self.shredded_marker(segment).exists()

    def shred(self, segment: str, tombstone_serial: int) -> None:
        """Destroy a closed segment's data key: its entries stay in the chain (checkable), their
        content is gone. A marker naming the tombstone entry is left (plain: no secret)."""
        if self._segment is not None and self._segment.name == segment:
            raise JournalError(f"{segment}: the segment open for appending cannot be shredded")
        marker = self.shredded_marker(segment)
        if not marker.exists():
            write_atomic(marker, json.dumps({"segment": segment, "tombstone_serial": tombstone_serial}).encode(),
                         0o644)
        kp = self.keys_dir / (Path(segment).stem + ".key")
        if kp.exists():
            with open(kp, "r+b") as f:  # overwrite before unlinking (the wrapped key, not a secret alone)
                f.write(b"\0" * kp.stat().st_size)
                f.flush()
                os.fsync(f.fileno())
            kp.unlink()
            fsync_dir(self.keys_dir)
        self._aead_cache.pop(Path(segment).stem, None)

    def entries(self, after: int = 0, kinds: set[str] | None = None) -> Iterator[Entry]:
        """Decrypted entries with serial > ``after``, in order (buffered writes are flushed first).
        An entry of a shredded segment (content purged) comes as kind ``shredded`` with no
        metadata or data, so that serials stay contiguous for whoever follows the journal."""
        if self._file is not None and self._failed is None:
            self._write_pending()
        segs = self.segments()
        starts = [int(s.stem.split("-")[1]) for s in segs]
        for i, seg in enumerate(segs):
            nxt = starts[i + 1] if i + 1 < len(starts) else None
            if nxt is not None and nxt <= after + 1:
                continue
            if self.is_shredded(seg.name) and not self._key_path(seg).exists():
                if kinds is None or "shredded" in kinds:
                    for fr in iter_frames(seg):
                        if isinstance(fr, tuple):
                            return
                        if fr.serial > after:
                            yield Entry(fr.serial, fr.time, "shredded", {}, b"", seg.name, fr.offset, fr.hash)
                continue
            for fr in iter_frames(seg):
                if isinstance(fr, tuple):
                    return
                if fr.serial <= after:
                    continue
                if kinds is not None and fr.kind not in kinds:
                    continue
                yield self.decrypt_frame(fr)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
