"""The archive facade: one home directory holding journal, blobs and catalog.

Layout of ``<home>``::

    archive.json      archive id, format version (no secrets)
    config.toml       optional settings (see wxarchive.config)
    journal/          segments (seg-*.wxj), wrapped data keys (keys/), signed checkpoints (checkpoints/)
    keys/             the archive's Ed25519 signing key (wrapped) and signing.pub for auditors
    blobs/            encrypted media, content-addressed
    catalog.db        the derived SQLite catalog (plaintext text and metadata: see docs/security.md)
    audit/            the access audit log (who read what), hash-chained and signed like the journal
    logs/             operational logs: no message text, keys, secrets or sdkfileids
    writer.lock       held (flock) by the one process that may write: ingest, reindex, ...

One writer at a time: opening for writing takes an exclusive lock on ``writer.lock`` and
refuses if another process holds it. Readers (status, search, show, verify) open
read-only: they never repair, append or sign, so they are safe beside a running ingest.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from wxarchive.archive.audit import AccessLog
from wxarchive.archive.blobs import BlobStore
from wxarchive.archive.files import write_atomic
from wxarchive.archive.catalog.sqlite import Catalog
from wxarchive.archive.checkpoints import (
    CHECKPOINT_EVERY,
    Checkpoint,
    Signer,
    list_checkpoints,
    newest_checkpoint,
    write_checkpoint,
)
from wxarchive.archive.journal import Journal
from wxarchive.archive.keys import (
    LocalMasterKey,
    RotatingMasterKey,
    load_archive_master_key,
    master_key_for_new_archive,
)

FORMAT = 1
_ARCHIVE_ID = re.compile(r"wxa-[0-9a-f]{16}")


class ArchiveError(Exception):
    """The archive cannot be opened or used; the message says why and where."""


@dataclass
class Archive:
    home: Path
    archive_id: str
    master: LocalMasterKey | RotatingMasterKey
    journal: Journal
    blobs: BlobStore
    catalog: Catalog
    signer: Signer | None  # None when opened read-only
    last_checkpoint: int = 0  # serial of the newest checkpoint written
    lock_fd: int | None = None  # the writer lock, held while open for writing
    anchored_audit: int | None = None  # the access-log serial the newest anchor in the journal vouches for

    @property
    def readonly(self) -> bool:
        return self.lock_fd is None

    @classmethod
    def open(cls, home: Path, *, create: bool = False, master_key_file: str | None = None,
             readonly: bool = False, encrypt_catalog: bool = False, rebuilding: bool = False) -> Archive:
        """Open (or with ``create`` make) the archive at ``home``.

        A writer takes the archive's writer lock first (:class:`ArchiveError` if another
        process holds it) and then repairs a torn journal tail; ``readonly`` opens take
        no lock and change nothing. ``encrypt_catalog`` (when creating): the catalog is an
        SQLCipher database under a random key kept wrapped in ``keys/catalog.key``.
        """
        if create and readonly:
            raise ValueError("an archive cannot be created read-only")
        info_path = home / "archive.json"
        if not info_path.exists():
            if not create:
                raise ArchiveError(
                    f"no archive at {home} (run an ingest to create one, or pass --home / set WXARCHIVE_HOME)"
                )
            home.mkdir(parents=True, exist_ok=True)
            os.chmod(home, 0o700)
            info = {"archive_id": "wxa-" + secrets.token_hex(8), "format": FORMAT,
                    "created_at": int(time.time() * 1000)}
            tmp = info_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            os.replace(tmp, info_path)
            master = master_key_for_new_archive(info["archive_id"], master_key_file)
        else:
            try:
                info = json.loads(info_path.read_text())
            except (OSError, ValueError) as e:
                raise ArchiveError(f"{info_path}: unreadable ({e.__class__.__name__})") from None
            if not isinstance(info, dict) or not _ARCHIVE_ID.fullmatch(str(info.get("archive_id", ""))):
                raise ArchiveError(f"{info_path}: not an archive description (no valid archive_id)")
            if info.get("format") != FORMAT:
                raise ArchiveError(f"{info_path}: archive format {info.get('format')} is not supported")
            master = load_archive_master_key(home, info["archive_id"], master_key_file)
        _check_master_key(home, master)  # before anything is written with it (an access log, say)
        lock_fd = None if readonly else _take_writer_lock(home)
        try:
            catalog = Catalog.open(home / "catalog.db", _catalog_key(home, master, create and encrypt_catalog),
                                   mmap=readonly,  # readers search (random reads); writers need no map
                                   readonly=readonly)
            cps = list_checkpoints(home / "journal")
            last = int(cps[-1].stem.split("-")[1]) if cps else 0
            # what a torn-tail repair may never cut: signed, or already in the catalog
            floor = max(last, catalog.applied_serial() if not readonly and not rebuilding else 0)
            journal = Journal.open(home / "journal", master, readonly=readonly, durable_floor=floor)
            if not readonly:
                _check_journal_end(home, journal.head_serial, last, catalog.applied_serial(), rebuilding)
            blobs = BlobStore(home / "blobs", master)
            signer = None if readonly else Signer.load_or_create(home / "keys", master)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        archive = cls(home, info["archive_id"], master, journal, blobs, catalog, signer, last, lock_fd)
        newest = newest_checkpoint(home / "journal") if not readonly else None
        if newest is not None:  # (unreadable: verify reports it; the next checkpoint anchors again)
            archive.anchored_audit = newest[1].audit_serial
        if not readonly:
            if journal.repair is not None:  # a crash's torn tail was cut: say so in the audit trail
                archive.record_admin_event("admin.journal.repair", journal.repair)
            archive._note_config_change()
        return archive

    def _note_config_change(self) -> None:
        """Journal a change of ``config.toml`` (its full text: it holds no secrets) the first time
        a writer sees it; ``who`` is the account that opened the archive after the edit."""
        import hashlib

        path = self.home / "config.toml"
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            text = b""
        sha = hashlib.sha256(text).hexdigest() if text else ""
        seen = self.journal.dir / "config.sha256"  # a hint only: if lost, the change is journaled again
        previous = seen.read_text().strip() if seen.exists() else ""
        if sha == previous:
            return
        self.record_admin_event("admin.config.change", {"sha256": sha or None, "previous_sha256": previous or None,
                                                         "config": text.decode("utf-8", "replace")})
        write_atomic(seen, (sha + "\n").encode(), 0o644)

    def checkpoint(self, force: bool = False) -> Checkpoint | None:
        """Sign the journal head (after making it durable), unless a checkpoint covers it already."""
        j = self.journal
        if self.signer is None:
            raise ArchiveError(f"{self.home}: opened read-only, cannot sign a checkpoint")
        if j.head_serial == 0 or (j.head_serial <= self.last_checkpoint and not force):
            return None
        audit = self.access_log().signed_head(self.signer)
        if audit is not None and audit.serial != self.anchored_audit:
            self._anchor_audit(audit)
        j.sync()
        cp = self.signer.sign(self.archive_id, j.head_serial, j.head_hash, j.head_segment(), audit=audit)
        write_checkpoint(j.dir, cp)
        self.last_checkpoint = j.head_serial
        return cp

    def _anchor_audit(self, audit: Checkpoint) -> None:
        """Journal the access log's signed head (``audit.anchor``): in the journal's own hash
        chain it outlives the checkpoint files, so an access log deleted or cut back together
        with every checkpoint is still reported by verify. It changes nothing in the catalog,
        whose applied serial moves past it when it was up to date (else catch-up does that)."""
        self._journal_beside_catalog("audit.anchor", {"audit_serial": audit.serial, "audit_hash": audit.head_hash},
                                     int(time.time() * 1000), lambda b, serial, at: None)
        self.anchored_audit = audit.serial

    def _journal_beside_catalog(self, kind: str, meta: dict, at: int, effect) -> int:
        """Journal an entry durably; when the catalog was up to date, apply its ``effect(batch,
        serial, at)`` and move the catalog's applied serial past it (else catch-up does that)."""
        applied = self.catalog.applied_serial()
        serial = self.journal.append(kind, meta, at=at)
        self.journal.sync()
        if applied == serial - 1:
            with self.catalog.batch(serial) as b:
                effect(b, serial, at)
        return serial

    def record_admin_event(self, kind: str, meta: dict) -> int:
        """Journal an administrative action (who did what) durably, and list it in the access
        audit log too; its journal serial.

        Admin events change nothing in the catalog, whose applied serial simply moves past
        them when it was up to date (otherwise the next catch-up does that)."""
        from wxarchive.archive.audit import current_user

        meta = {"who": current_user(), **meta}
        serial = self._journal_beside_catalog(kind, meta, int(time.time() * 1000),
                                              lambda b, serial, at: b.admin_event(kind, meta, serial, at))
        # listed with the reads, so one `wxarchive audit` shows auditors every action
        listed = {k: v for k, v in meta.items() if k not in ("removed", "retained", "blobs", "signature", "who")}
        if kind == "admin.purge":
            listed.update(removed=len(meta["removed"]), retained=len(meta["retained"]), blobs=len(meta["blobs"]))
        self.access_log().record(kind, query={**listed, "journal_serial": serial})
        return serial

    def rotate_master_key(self, master_key_file: str | None = None, progress=None):
        """Re-wrap every data key under a new master key (see wxarchive.archive.rotation)."""
        from wxarchive.archive.rotation import rotate_master_key

        self.journal.close()  # its open segment's key is re-wrapped too
        result, new = rotate_master_key(self.home, self.archive_id, self.master, master_key_file,
                                        progress or (lambda done, total: None))
        self.master = self.journal.master = self.blobs.master = new
        self.journal._aead_cache.clear()
        self.record_admin_event("admin.keys.rotate", {"from": result.old_key_id, "to": result.new_key_id,
                                                       "key_file": result.key_file, **result.counts})
        return result

    def access_log(self) -> AccessLog:
        """The access audit log (readers append to it too: it has its own lock)."""
        return AccessLog(self.home, self.master, self.archive_id)

    def maybe_checkpoint(self) -> None:
        """During long captures: a checkpoint every ``CHECKPOINT_EVERY`` entries."""
        if self.journal.head_serial - self.last_checkpoint >= CHECKPOINT_EVERY:
            self.checkpoint()

    def close(self) -> None:
        try:
            if not self.readonly:
                self.checkpoint()
                self.catalog.analyze_if_grown()
            self.journal.close()
            self.catalog.close()
        finally:
            if self.lock_fd is not None:
                os.close(self.lock_fd)  # releases the flock
                self.lock_fd = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_journal_end(home: Path, head: int, signed: int, applied: int, rebuilding: bool) -> None:
    """A writer never appends to a journal that ends below what was relied on: its next entries
    would take the serials of entries a checkpoint signed or the catalog holds, and the next
    checkpoint would sign over the removal. ``rebuilding`` (reindex drops the catalog): only
    the signed checkpoints count."""
    if head < signed:
        raise ArchiveError(f"{home / 'journal'}: ends at entry {head}, but a signed checkpoint "
                           f"(journal/checkpoints/cp-{signed:012d}.json) covers entries up to {signed}: entries "
                           "were removed from its end (or an older copy was put in its place); nothing is "
                           "written to it: run 'wxarchive verify', and restore the journal from backup")
    if head < applied and not rebuilding:
        raise ArchiveError(f"{home / 'journal'}: ends at entry {head}, but the catalog reflects entries up to "
                           f"{applied}: the journal lost entries, or the catalog is from another copy; run "
                           "'wxarchive verify', then restore the journal from backup or rebuild the catalog "
                           "from the journal with 'wxarchive reindex'")


def _take_writer_lock(home: Path) -> int:
    """An exclusive, non-blocking flock on ``<home>/writer.lock``; its fd, held until close."""
    path = home / "writer.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        raise ArchiveError(
            f"{home}: another wxarchive process{f' (pid {holder})' if holder else ''} is writing to this "
            "archive; wait for it to finish or stop it"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _catalog_key(home: Path, master, create: bool) -> bytes | None:
    """The SQLCipher key of an encrypted catalog (made when ``create``), or None for plain."""
    from wxarchive.archive.files import write_atomic
    from wxarchive.archive.keys import new_data_key

    path = home / "keys" / "catalog.key"
    if path.exists():
        return master.unwrap(path.read_bytes())
    if not create:
        return None
    if (home / "catalog.db").exists():
        raise ArchiveError(f"{home}: the catalog exists unencrypted; encrypt it only when creating an archive")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = new_data_key()
    write_atomic(path, master.wrap(key), 0o600)
    return key


def _check_master_key(home: Path, master) -> None:
    """Refuse a master key that opens none of this archive's wrapped keys."""
    from wxarchive.archive.keys import KeyError_

    probes = [home / "keys" / "signing.key", *sorted((home / "journal" / "keys").glob("*.key"))[:1]]
    probes = [p for p in probes if p.exists()]
    if not probes:
        return  # a new archive: nothing is wrapped yet
    for p in probes:
        try:
            master.unwrap(p.read_bytes())
            return
        except (KeyError_, OSError):
            continue
    raise KeyError_(f"{home}: the master key opens none of this archive's keys: wrong master key "
                    "(set WXARCHIVE_MASTER_KEY_FILE or WXARCHIVE_MASTER_KEY)")
