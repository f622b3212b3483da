"""The access audit log: who read what, when, with which query, how many results, which files.

Every read of archived content by a person (search, view of a conversation, export,
status, verify, and listing this log itself) is appended here *before* the results are
shown: if the event cannot be recorded, the read is refused (fail closed).

Stored beside the journal, in the same tamper-evident form (``<home>/audit/``): segment
files of AES-256-GCM-encrypted, serially numbered, SHA-256 hash-chained entries, data keys
wrapped under the master key. After every append the head (serial + chain hash) is signed
with the archive's Ed25519 key into ``audit/head.json``, so an entry cut off the end is
caught by ``wxarchive verify`` too. Readers may run beside an ingest: appends are
serialised by a short ``flock`` on ``audit/append.lock``, not by the archive's writer lock.

Who: the operating-system account running the command (the identity the host
authenticated), plus ``WXARCHIVE_ON_BEHALF_OF`` when a service (the web UI) acts for one of
its signed-in users.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wxarchive.archive.checkpoints import Checkpoint, CheckpointError, Signer, read_checkpoint, signature_ok
from wxarchive.archive.files import write_atomic
from wxarchive.archive.journal import Journal, JournalError
from wxarchive.archive.keys import MasterKeyProvider

AUDIT_DIR = "audit"
SEGMENT_BYTES = 4 * 1024 * 1024
EVENT_KIND = "access"


LOCK_WAIT = 10.0  # seconds a reader waits for another reader's append


def _lock(fd: int, where: Path) -> None:
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise AuditError(f"{where}: the access log is locked by another process for over {LOCK_WAIT:.0f} s; "
                                 "refusing to show results") from None
            time.sleep(0.05)


class AuditError(Exception):
    """The access could not be recorded; the read it was for must not go ahead."""


@dataclass
class AccessEvent:
    serial: int
    at: int  # ms since the epoch (UTC)
    who: str
    action: str  # search | show | export | status | verify | audit | ...
    query: dict[str, Any] = field(default_factory=dict)
    results: int | None = None
    files: list[dict[str, Any]] = field(default_factory=list)  # exported files: name, sha256, size
    on_behalf_of: str | None = None
    host: str = ""
    pid: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "at": self.at, "who": self.who, "on_behalf_of": self.on_behalf_of,
                "action": self.action, "query": self.query, "results": self.results, "files": self.files,
                "host": self.host, "pid": self.pid}


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid:{os.getuid()}"


class AccessLog:
    def __init__(self, home: Path, master: MasterKeyProvider, archive_id: str):
        self.home = home
        self.dir = home / AUDIT_DIR
        self.master = master
        self.archive_id = archive_id

    def record(self, action: str, *, query: dict[str, Any] | None = None, results: int | None = None,
               files: list[dict[str, Any]] | None = None) -> int:
        """Append one event durably and sign the new head; its serial. Raises AuditError."""
        meta = {**self._who(), "action": action, "query": query or {}, "results": results, "files": files or []}

        def append(journal: Journal, signer: Signer | None) -> int:
            serial = journal.append(EVENT_KIND, meta)
            journal.sync()
            self._sign_head(journal, signer)
            return serial

        return self._locked(append, meta)

    def check(self) -> None:
        """AuditError now if an access could not be recorded (a log that does not match its
        signed head, or cannot be opened): for work whose record can only be made after it
        (an export writes its files first), so that it is refused before it starts."""
        self._locked(lambda journal, signer: None, None)

    def _locked(self, fn, meta: dict[str, Any] | None):
        """``fn(journal, signer)`` under the append lock, on the log opened for appending and
        checked against its signed head (a torn tail above it cut, and said in the log)."""
        vouched = self._vouched()
        if vouched is not None and not self.dir.is_dir():  # never start a new log in its place
            raise AuditError(f"{self.dir}: missing, but {vouched[0]} vouches for its entry {vouched[1]} (the access "
                             "log was deleted): restore it from backup; run 'wxarchive verify'; refusing to show "
                             "results")
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(self.dir / "append.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise AuditError(f"{self.dir}: cannot record this access in the audit log "
                             f"({e.strerror or e.__class__.__name__}); refusing to show results") from None
        try:
            _lock(fd, self.dir)
            # a torn tail may be cut only above what the signed head vouches for
            journal = Journal.open(self.dir, self.master, durable_floor=self._head_hint())
            journal.segment_bytes = SEGMENT_BYTES
            try:
                signer = Signer.load(self.home / "keys", self.master)
                self._check_head(journal, signer)
                if vouched is not None and journal.head_serial < vouched[1]:
                    raise AuditError(f"{self.dir}: ends at entry {journal.head_serial}, but {vouched[0]} vouches "
                                     f"for its entry {vouched[1]} (cut back or an older copy put in its place): "
                                     "restore it from backup; run 'wxarchive verify'; refusing to show results")
                if journal.repair is not None:  # said in the log itself, before this access
                    journal.append(EVENT_KIND, {**(meta or self._who()), "action": "audit.repair",
                                                "query": journal.repair, "results": None, "files": []})
                    journal.sync()
                    self._sign_head(journal, signer)
                return fn(journal, signer)
            finally:
                journal.close()
        except (OSError, JournalError, CheckpointError) as e:
            raise AuditError(f"{self.dir}: cannot record this access in the audit log ({e}); "
                             "refusing to show results") from None
        finally:
            os.close(fd)

    def _who(self) -> dict[str, Any]:
        return {"who": current_user(), "on_behalf_of": os.environ.get("WXARCHIVE_ON_BEHALF_OF") or None,
                "host": socket.gethostname(), "pid": os.getpid()}

    def _vouched(self) -> tuple[str, int] | None:
        """(checkpoint file, access-log serial) the newest journal checkpoint anchored, if any: the
        log must hold at least that much (a hint checked on every access; verify checks the
        signatures and hashes)."""
        from wxarchive.archive.checkpoints import newest_checkpoint

        newest = newest_checkpoint(self.home / "journal")
        if newest is None or newest[1].audit_serial is None or newest[1].archive_id != self.archive_id:
            return None
        return f"journal/checkpoints/{newest[0].name}", newest[1].audit_serial

    def _head_hint(self) -> int:
        """The serial the signed head names (0 if none can be read): a floor, not a proof."""
        try:
            return read_checkpoint(self.dir / "head.json").serial
        except CheckpointError:
            return 0

    def _check_head(self, journal: Journal, signer: Signer | None) -> None:
        """Never append after a cut or an edit: the next signed head would hide it."""
        head_path = self.dir / "head.json"
        if not head_path.exists():
            if journal.head_serial and signer is not None:
                raise AuditError(f"{head_path}: the access log's signed head is missing; run 'wxarchive verify'; "
                                 "refusing to show results")
            return
        cp = read_checkpoint(head_path)
        ok = signer is None or signature_ok(cp, signer.public)
        if cp.serial == journal.head_serial:
            ok = ok and cp.head_hash == journal.head_hash.hex()
        elif cp.serial != journal.head_serial - 1:  # one behind: an append that died before signing
            ok = False
        if not ok:
            raise AuditError(f"{self.dir}: the access log does not match its signed head (entries cut or altered); "
                             "run 'wxarchive verify'; refusing to show results")

    def signed_head(self, signer: Signer) -> Checkpoint | None:
        """The log's signed head as it is now, if its signature holds (what a journal
        checkpoint anchors); None when there is none or it does not verify (verify says why)."""
        try:
            cp = read_checkpoint(self.dir / "head.json")
        except CheckpointError:
            return None
        return cp if cp.archive_id == self.archive_id and signature_ok(cp, signer.public) else None

    def _sign_head(self, journal: Journal, signer: Signer | None) -> None:
        if signer is None:  # an archive never opened for writing has no signing key yet
            return
        cp = signer.sign(self.archive_id, journal.head_serial, journal.head_hash, journal.head_segment())
        write_atomic(self.dir / "head.json", cp.to_json().encode(), 0o644)

    def events(self, *, since: int | None = None, until: int | None = None,
               who: str | None = None, action: str | None = None) -> Iterator[AccessEvent]:
        """Events in order, optionally filtered (times in ms since the epoch, until exclusive)."""
        if not self.dir.is_dir():
            return
        journal = Journal.open(self.dir, self.master, readonly=True)
        for e in journal.entries(kinds={EVENT_KIND}):
            m = e.meta
            if since is not None and e.time < since:
                continue
            if until is not None and e.time >= until:
                continue
            if who is not None and who not in (m.get("who"), m.get("on_behalf_of")):
                continue
            if action is not None and m.get("action") != action:
                continue
            yield AccessEvent(e.serial, e.time, m.get("who", ""), m.get("action", ""), m.get("query") or {},
                              m.get("results"), m.get("files") or [], m.get("on_behalf_of"), m.get("host", ""),
                              m.get("pid", 0))
