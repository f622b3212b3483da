"""Key management: the master key, and data keys wrapped by it.

The master key never lives under the archive home: a stolen copy of the home
directory must reveal nothing. It comes from (first match wins)

1. ``WXARCHIVE_MASTER_KEY``: 64 hex characters (for containers / secret managers);
2. ``WXARCHIVE_MASTER_KEY_FILE`` or the ``master_key_file`` setting: a file holding
   64 hex characters, mode 0600;
3. the default file ``~/.config/wxarchive/keys/<archive id>.key``, created with
   mode 0600 when a new archive is initialised.

Data keys (one per journal segment, one per blob) are random AES-256 keys stored
only wrapped (AES-256-GCM) under the master key. Destroying a wrapped data key
crypto-shreds what it protected; re-wrapping under a new master key rotates the
master key without rewriting content. ``MasterKeyProvider`` is the seam for a KMS.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wxarchive.archive.files import write_atomic

WRAP_AAD = b"wxarchive data key v1"


class KeyError_(Exception):
    """A key could not be loaded or used; the message names the file, never the key."""


class MasterKeyProvider(Protocol):
    key_id: str

    def wrap(self, data_key: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes) -> bytes: ...


@dataclass
class LocalMasterKey:
    """A master key held in this process (from a file or the environment)."""

    key: bytes
    key_id: str

    def wrap(self, data_key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self.key).encrypt(nonce, data_key, WRAP_AAD)

    def unwrap(self, wrapped: bytes) -> bytes:
        try:
            return AESGCM(self.key).decrypt(wrapped[:12], wrapped[12:], WRAP_AAD)
        except InvalidTag:
            raise KeyError_(
                "a data key does not open with this master key (wrong master key, or the key file was altered)"
            ) from None


def default_key_path(archive_id: str) -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "wxarchive" / "keys" / f"{archive_id}.key"


def _parse_hex_key(text: str, origin: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyError_(f"{origin}: not a hex-encoded key") from None
    if len(key) != 32:
        raise KeyError_(f"{origin}: expected 32 bytes (64 hex characters), got {len(key)} bytes")
    return key


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"wxarchive key id" + key).hexdigest()[:16]


def create_master_key_file(path: Path) -> LocalMasterKey:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return LocalMasterKey(key, _key_id(key))


def master_key_path(archive_id: str, key_file: str | os.PathLike | None = None) -> Path | None:
    """Where the master key file is (None when it comes from WXARCHIVE_MASTER_KEY)."""
    if os.environ.get("WXARCHIVE_MASTER_KEY"):
        return None
    return Path(key_file or os.environ.get("WXARCHIVE_MASTER_KEY_FILE") or default_key_path(archive_id))


def read_key_file(path: Path) -> LocalMasterKey:
    if path.is_dir():
        raise KeyError_(f"master key file {path} is a folder: name the key file itself")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyError_(f"master key file {path} is readable by others (mode {mode:o}); chmod 600 it")
    try:
        text = path.read_text(encoding="ascii")
    except (UnicodeDecodeError, OSError) as e:
        raise KeyError_(f"master key file {path}: not 64 hex characters "
                        f"({'binary content' if isinstance(e, UnicodeDecodeError) else e.__class__.__name__})") from None
    key = _parse_hex_key(text, str(path))
    return LocalMasterKey(key, _key_id(key))


def load_master_key(archive_id: str, key_file: str | os.PathLike | None = None) -> LocalMasterKey:
    env = os.environ.get("WXARCHIVE_MASTER_KEY")
    if env:
        key = _parse_hex_key(env, "WXARCHIVE_MASTER_KEY")
        return LocalMasterKey(key, _key_id(key))
    path = Path(key_file or os.environ.get("WXARCHIVE_MASTER_KEY_FILE") or default_key_path(archive_id))
    if not path.exists():
        raise KeyError_(f"master key file {path} not found (set WXARCHIVE_MASTER_KEY_FILE)")
    return read_key_file(path)


@dataclass
class RotatingMasterKey:
    """During a master key rotation: wraps with the new key, unwraps with either."""

    new: LocalMasterKey
    old: LocalMasterKey

    @property
    def key_id(self) -> str:
        return self.new.key_id

    def wrap(self, data_key: bytes) -> bytes:
        return self.new.wrap(data_key)

    def unwrap(self, wrapped: bytes) -> bytes:
        try:
            return self.new.unwrap(wrapped)
        except KeyError_:
            return self.old.unwrap(wrapped)


ROTATION_FILE = "rotation.json"  # under <home>/keys while a rotation is unfinished


def pending_key_path(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def load_archive_master_key(home: Path, archive_id: str, key_file: str | os.PathLike | None = None
                            ) -> LocalMasterKey | RotatingMasterKey:
    """The archive's master key, taking an interrupted rotation into account: while
    ``keys/rotation.json`` exists and the new key file is beside the old one, both open."""
    current = load_master_key(archive_id, key_file)
    path = master_key_path(archive_id, key_file)
    if path is None or not (home / "keys" / ROTATION_FILE).exists():
        return current
    new_path = pending_key_path(path)
    if new_path.exists():
        return RotatingMasterKey(read_key_file(new_path), current)
    return current  # the rotation got as far as installing the new key: nothing old is left


def master_key_for_new_archive(archive_id: str, key_file: str | os.PathLike | None = None) -> LocalMasterKey:
    """Load the configured master key, or create the default key file for a new archive."""
    if os.environ.get("WXARCHIVE_MASTER_KEY"):
        return load_master_key(archive_id)
    path = Path(key_file or os.environ.get("WXARCHIVE_MASTER_KEY_FILE") or default_key_path(archive_id))
    if path.exists():
        return load_master_key(archive_id, path)
    return create_master_key_file(path)


def create_key_file_atomically(path: Path) -> LocalMasterKey:
    """A new random master key in ``path`` (0600), complete or absent after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    write_atomic(path, (key.hex() + "\n").encode(), 0o600)
    return LocalMasterKey(key, _key_id(key))


def new_data_key() -> bytes:
    return secrets.token_bytes(32)
