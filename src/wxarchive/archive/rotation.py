"""Master key rotation: every data key re-wrapped under a new master key, content untouched.

What is wrapped under the master key: each journal segment's data key
(``journal/keys/*.key``), each access-log segment's (``audit/keys/*.key``), the archive's
signing key (``keys/signing.key``), the SQLCipher catalog key if any (``keys/catalog.key``)
and each blob's own data key (in the blob's header).
Rotation never decrypts or re-encrypts a message or a media file: it opens each wrapped
key with the old master key and wraps it again with the new one.

Crash-safe at every step, and resumable by running it again:

1. the new key is written beside the old one (``<key file>.new``, atomically, 0600) and
   ``keys/rotation.json`` says a rotation is under way: from then on, opening the archive
   loads both keys (``RotatingMasterKey``: new for wrapping, either for unwrapping);
2. each wrapped key is replaced atomically (temp file, fsync, rename) by its re-wrapped
   form; one already re-wrapped is skipped;
3. the new key file replaces the old (rename), ``rotation.json`` is removed, and the
   rotation is journaled as an admin event (who, old and new key ids, counts).

The master key must come from a file for this (WXARCHIVE_MASTER_KEY from the environment
cannot be replaced by us). Before anything changes, every wrapped key must open (a damaged
one is named and the rotation refused). At the end the old key is kept beside the new one as
``<key file>.retired-<old key id>``: backups of the home taken before the rotation need it.
After a suspected compromise, re-take the backups and then destroy the retired file.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wxarchive.archive.blobs import MAGIC as BLOB_MAGIC
from wxarchive.archive.files import fsync_dir, write_atomic
from wxarchive.archive.keys import (
    ROTATION_FILE,
    KeyError_,
    LocalMasterKey,
    RotatingMasterKey,
    create_key_file_atomically,
    master_key_path,
    pending_key_path,
    read_key_file,
)

ProgressFn = Callable[[int, int], None]


@dataclass
class RotationResult:
    old_key_id: str
    new_key_id: str
    key_file: str
    counts: dict[str, int] = field(default_factory=lambda: {"rewrapped": 0, "already": 0})
    retired_key_file: str | None = None


def _precheck(home: Path, old: LocalMasterKey) -> None:
    """Every wrapped key must open before a rotation starts; names the first that does not."""
    for p in _wrapped_key_files(home):
        try:
            old.unwrap(p.read_bytes())
        except (KeyError_, OSError):
            raise KeyError_(f"{p}: does not open with the current master key; nothing was changed "
                            "(run 'wxarchive verify', restore the file, then rotate)") from None
    for p in _blob_files(home):
        try:
            raw = p.read_bytes()
            if raw[:4] != BLOB_MAGIC:
                raise KeyError_("bad magic")
            (n,) = struct.unpack_from(">H", raw, 4)
            old.unwrap(raw[6 : 6 + n])
        except (KeyError_, OSError, struct.error):
            raise KeyError_(f"{p}: damaged blob (its key does not open); nothing was changed "
                            "(run 'wxarchive verify', restore the blob, then rotate)") from None


def _wrapped_key_files(home: Path) -> list[Path]:
    files = sorted((home / "journal" / "keys").glob("*.key")) + sorted((home / "audit" / "keys").glob("*.key"))
    extra = [p for p in (home / "keys" / "signing.key", home / "keys" / "catalog.key") if p.exists()]
    return files + extra


def _blob_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "blobs").rglob("*") if p.is_file() and ".tmp" not in p.name)


def _rewrap(wrapped: bytes, new: LocalMasterKey, old: LocalMasterKey, origin: Path) -> bytes | None:
    """The re-wrapped form, or None if ``wrapped`` already opens with the new key."""
    try:
        new.unwrap(wrapped)
        return None
    except KeyError_:
        pass
    try:
        return new.wrap(old.unwrap(wrapped))
    except KeyError_:
        raise KeyError_(f"{origin}: opens with neither the old nor the new master key") from None


def _rewrap_key_file(path: Path, new: LocalMasterKey, old: LocalMasterKey) -> bool:
    out = _rewrap(path.read_bytes(), new, old, path)
    if out is None:
        return False
    write_atomic(path, out, 0o600)
    return True


def _rewrap_blob(path: Path, new: LocalMasterKey, old: LocalMasterKey) -> bool:
    raw = path.read_bytes()
    if raw[:4] != BLOB_MAGIC:
        raise KeyError_(f"{path}: not a blob (bad magic)")
    (n,) = struct.unpack_from(">H", raw, 4)
    out = _rewrap(raw[6 : 6 + n], new, old, path)
    if out is None:
        return False
    write_atomic(path, BLOB_MAGIC + struct.pack(">H", len(out)) + out + raw[6 + n :], 0o600)
    return True


def rotate_master_key(home: Path, archive_id: str, master, key_file: str | None = None,
                      progress: ProgressFn = lambda done, total: None) -> tuple[RotationResult, LocalMasterKey]:
    """Rotate (or finish an interrupted rotation of) the archive's master key; returns
    what was done and the new key.

    ``master`` is what the archive opened with: a ``LocalMasterKey``, or a
    ``RotatingMasterKey`` when a rotation was interrupted. The caller holds the writer lock.
    """
    path = master_key_path(archive_id, key_file)
    if path is None:
        raise KeyError_("keys rotate needs the master key in a file (WXARCHIVE_MASTER_KEY_FILE or the default "
                        "file); a key given in WXARCHIVE_MASTER_KEY cannot be replaced by wxarchive")
    marker = home / "keys" / ROTATION_FILE
    new_path = pending_key_path(path)
    if isinstance(master, RotatingMasterKey):  # resuming step 2
        new, old = master.new, master.old
    elif marker.exists() and not new_path.exists():  # interrupted in step 3: only the marker is left
        marker.unlink()
        return RotationResult(master.key_id, master.key_id, str(path)), master
    else:
        old = master
        _precheck(home, old)  # a damaged key or blob would be stranded under the old key: stop first
        new = read_key_file(new_path) if new_path.exists() else create_key_file_atomically(new_path)
        write_atomic(marker, json.dumps({"from": old.key_id, "to": new.key_id, "key_file": str(path),
                                         "started_at": int(time.time() * 1000)}).encode(), 0o600)
    result = RotationResult(old.key_id, new.key_id, str(path))
    todo = [(p, _rewrap_key_file) for p in _wrapped_key_files(home)] + [(p, _rewrap_blob) for p in _blob_files(home)]
    for i, (p, fn) in enumerate(todo, 1):
        try:
            result.counts["rewrapped" if fn(p, new, old) else "already"] += 1
        except OSError as e:
            raise KeyError_(f"{p}: cannot be re-wrapped ({e.strerror or e.__class__.__name__}); fix it and run "
                            "'wxarchive keys rotate' again to finish") from None
        progress(i, len(todo))
    # step 3: the new key becomes the key; the old one is kept beside it as retired, because
    # backups taken before the rotation still need it (destroy it once they are re-taken)
    retired = path.with_name(f"{path.name}.retired-{old.key_id}")
    if path.exists() and not retired.exists():
        os.link(path, retired)
    os.replace(new_path, path)
    fsync_dir(path.parent)
    result.retired_key_file = str(retired)
    marker.unlink(missing_ok=True)
    return result, new
