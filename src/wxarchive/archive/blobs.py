"""The blob store: media bytes, content-addressed by SHA-256, encrypted at rest.

``blobs/<aa>/<bb>/<sha256>`` holds ``b"WXB1" | u16 n | wrapped data key (n) | nonce | AES-256-GCM(bytes)``
with the blob's own random data key wrapped under the master key, and the SHA-256
as associated data (a blob moved under another name fails to open). Writing is
atomic (temp file, fsync, rename, fsync dir), so a crash never leaves a partial blob
under its final name; storing the same bytes twice is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wxarchive.archive.files import sweep_temporaries, write_atomic
from wxarchive.archive.keys import MasterKeyProvider, new_data_key

MAGIC = b"WXB1"


class BlobError(Exception):
    pass


class BlobStore:
    def __init__(self, directory: Path, master: MasterKeyProvider):
        self.dir = directory
        self.master = master
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.dir / sha256[:2] / sha256[2:4] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        final = self.path(digest)
        if final.exists():
            return digest
        final.parent.mkdir(parents=True, exist_ok=True)
        key = new_data_key()
        wrapped = self.master.wrap(key)
        nonce = os.urandom(12)
        ct = AESGCM(key).encrypt(nonce, data, digest.encode())
        write_atomic(final, MAGIC + struct.pack(">H", len(wrapped)) + wrapped + nonce + ct, 0o600)
        return digest

    def sweep(self) -> int:
        """Remove partial blob files a killed writer left (their process is gone); how many.
        Called by the runs that store blobs, before they store any."""
        return sweep_temporaries(self.dir) if self.dir.is_dir() else 0

    def get(self, sha256: str) -> bytes:
        p = self.path(sha256)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise BlobError(f"blob {sha256[:16]}… is missing") from None
        if raw[:4] != MAGIC:
            raise BlobError(f"{p}: not a blob (bad magic)")
        (n,) = struct.unpack_from(">H", raw, 4)
        wrapped = raw[6 : 6 + n]
        nonce = raw[6 + n : 18 + n]
        try:
            data = AESGCM(self.master.unwrap(wrapped)).decrypt(nonce, raw[18 + n :], sha256.encode())
        except InvalidTag:
            raise BlobError(f"{p}: fails authentication (altered or replaced)") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise BlobError(f"{p}: content does not match its name")
        return data
