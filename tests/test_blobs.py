from __future__ import annotations

import hashlib
import os

import pytest

from wxarchive.archive.blobs import BlobError, BlobStore


@pytest.mark.parametrize("size", [0, 16, 524288, 524289, 1_300_000])
def test_blob_round_trip_is_byte_exact_and_encrypted(tmp_path, master, size):
    data = bytes(range(256)) * (size // 256) + b"\0" * (size % 256)
    store = BlobStore(tmp_path, master)
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.get(sha) == data
    assert store.put(data) == sha  # idempotent
    raw = store.path(sha).read_bytes()
    if size >= 64:
        assert data[:64] not in raw


def test_replaced_blob_is_detected(tmp_path, master):
    store = BlobStore(tmp_path, master)
    a = store.put(b"first file contents")
    b = store.put(b"second file contents")
    store.path(a).write_bytes(store.path(b).read_bytes())
    with pytest.raises(BlobError, match="authentication"):
        store.get(a)


def test_partial_blob_files_of_a_killed_writer_are_swept(tmp_path, master):
    import subprocess
    import sys

    from wxarchive.archive.blobs import BlobStore

    store = BlobStore(tmp_path / "blobs", master)
    sha = store.put(b"kept")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    left = store.path(sha).with_name("ab" * 32 + f".tmp{dead}")
    left.write_bytes(b"half a blob")
    mine = store.path(sha).with_name("cd" * 32 + f".tmp{os.getpid()}")  # a live writer's: kept
    mine.write_bytes(b"being written")
    assert store.sweep() == 1
    assert not left.exists() and mine.exists() and store.get(sha) == b"kept"
