"""Durable file writes shared by the archive's stores."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file atomically and durably: temp file, fsync, rename, fsync the directory.
    After a crash ``path`` holds either its old content or ``data``, never a part."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def pid_alive(pid: int) -> bool:
    """Whether a process of that id exists on this host (files a killed one left are swept)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(folder: Path) -> int:
    """Remove the ``<name>.tmp<pid>`` files ``write_atomic`` left below ``folder`` when its
    process was killed (that process no longer runs); how many. The runs that store blobs call it
    (``BlobStore.sweep``) before they store any."""
    import re

    n = 0
    for p in folder.rglob("*.tmp*"):
        m = re.fullmatch(r".+\.tmp([0-9]+)", p.name)
        if m and p.is_file() and not p.is_symlink() and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            n += 1
    return n
