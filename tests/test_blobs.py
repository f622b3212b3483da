from __future__ import annotations

import hashlib

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
