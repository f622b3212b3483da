"""Media files beside a WeChat account's databases: images, video and files a message points to.

The readers say *where* a message's file should be (each platform keeps them its own way, fact
sheet §1.5, §2.1, §3.1); this module reads it and undoes WeChat's image wrapping:

* Windows 3.x ``.dat``: the whole file XOR-ed with one byte, constant per account, found by
  XOR-ing the first bytes with the magic numbers of the image formats (fact sheet §2.6);
* 4.x ``.dat`` (``\\x07\\x08V1\\x08\\x07`` / ``…V2…``): a 15-byte header (magic, u32 LE AES
  length, u32 LE XOR length, one byte), then AES-128-ECB with PKCS#7 padding over the first
  bytes, the plain middle, and the last bytes XOR-ed with one byte (§3.5). V1's AES key is the
  constant ``cfcd208495d565ef``; V2's is the account's own (``--image-key-file``); the XOR
  byte is recovered from the image format's fixed trailer;
* ``wxgf`` payloads (WeChat's HEVC container) are kept as they are, typed ``image/x-wxgf``.

Nothing is lost when a file cannot be unwrapped: its bytes are archived as found, typed
``application/octet-stream``, with the reason. A file that is not in the copy is reported
missing with where it was looked for; a file whose MD5 differs from the one the message
declares is still archived, with that said.
"""

from __future__ import annotations

import hashlib
import mimetypes
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

V4_MAGICS = {b"\x07\x08V1\x08\x07": "V1", b"\x07\x08V2\x08\x07": "V2"}
V1_KEY = b"cfcd208495d565ef"
MAX_FILE = 1024**3  # a file larger than this is not read (it is held in memory ~2-3 times): said, not archived

# (magic, media type); the magics used to find a 3.x XOR byte need >= 2 bytes
_MAGICS = [
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"RIFF", "image/webp"),  # checked with WEBP at 8
    (b"wxgf", "image/x-wxgf"),
]
# the fixed last bytes of an image format, to recover the 4.x tail's XOR byte
_TRAILERS = {"image/jpeg": b"\xff\xd9", "image/png": b"\xaeB`\x82", "image/gif": b"\x3b"}


class DatError(ValueError):
    """A ``.dat`` file that cannot be unwrapped (its bytes are still archived as found)."""


def sniff(data: bytes) -> str | None:
    """The media type of ``data`` by its magic number, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        return "video/quicktime" if data[8:10] == b"qt" else "video/mp4"
    for magic, mt in _MAGICS:
        if magic != b"RIFF" and data.startswith(magic):
            return mt
    if data.startswith(b"%PDF"):
        return "application/pdf"
    if data.startswith(b"PK\x03\x04"):
        return "application/zip"
    return None


def _xor(data: bytes, key: int) -> bytes:
    return data.translate(bytes(b ^ key for b in range(256))) if key else data


def xor_key_3x(data: bytes) -> int | None:
    """The one byte a 3.x ``.dat`` is XOR-ed with, if its first bytes then read as a known image."""
    if len(data) < 2:
        return None
    for magic, _ in _MAGICS:
        if magic in (b"wxgf",):
            continue
        k = data[0] ^ magic[0]
        if len(data) >= len(magic) and all(data[i] ^ k == magic[i] for i in range(len(magic))):
            if magic == b"RIFF" and bytes(b ^ k for b in data[8:12]) != b"WEBP":
                continue
            if magic == b"BM" and len(data) >= 6:  # BMP's size field must match the file
                if struct.unpack("<I", bytes(b ^ k for b in data[2:6]))[0] != len(data):
                    continue
            return k
    return None


def _trailer_key(media_type: str | None, tail: bytes) -> int | None:
    """The XOR byte that makes ``tail`` end the way ``media_type`` files always end."""
    trailer = _TRAILERS.get(media_type or "")
    if not trailer or not tail:
        return None
    n = min(len(trailer), len(tail))
    k = tail[-1] ^ trailer[-1]
    return k if all(b ^ k == t for b, t in zip(tail[-n:], trailer[-n:])) else None


def _tail_key(start: bytes, tail: bytes, known: int | None) -> int | None:
    """The 4.x tail's XOR byte: from the image format's fixed trailer. When the unwrapped start
    is too short to tell the format (tiny images), the format's first bytes are in the tail."""
    if len(start) >= 12:
        k = _trailer_key(sniff(start), tail)
        return known if k is None else k
    fits = {k for k in range(256)
            if (mt := sniff(start + _xor(tail[:32], k))) and _trailer_key(mt, tail) == k}
    return fits.pop() if len(fits) == 1 else known


def decode_dat(data: bytes, aes_key: bytes | None = None, xor_key: int | None = None) -> tuple[bytes, str, str]:
    """Unwrap a WeChat image ``.dat``: (image bytes, media type, how it was wrapped).

    ``aes_key`` is the account's 4.x V2 image key, ``xor_key`` a 4.x tail XOR byte learned from
    another file of the account (used when this image's format has no fixed trailer)."""
    head = data[:6]
    if head in V4_MAGICS:
        version = V4_MAGICS[head]
        if len(data) < 15:
            raise DatError(f"4.x {version} .dat shorter than its 15-byte header")
        aes_len, xor_len = struct.unpack("<II", data[6:14])
        key = V1_KEY if version == "V1" else aes_key
        if key is None:
            raise DatError("4.x V2 image: the account's image key was not given (--image-key-file)")
        enc_len = aes_len // 16 * 16 + 16
        body = data[15:]
        if enc_len > len(body) or xor_len > len(body) - enc_len:
            raise DatError(f"4.x {version} .dat: its header declares {enc_len} + {xor_len} bytes, the file has {len(body)}")
        dec = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
        plain = dec.update(body[:enc_len]) + dec.finalize()
        pad = plain[-1] if plain else 0
        if not 1 <= pad <= 16 or plain[-pad:] != bytes([pad]) * pad:
            raise DatError(f"4.x {version} .dat: the AES part does not decrypt (wrong image key?)")
        plain = plain[:-pad]
        middle = body[enc_len: len(body) - xor_len]
        tail = body[len(body) - xor_len:] if xor_len else b""
        if tail:
            k = _tail_key(plain + middle[:16], tail, xor_key)
            if k is None:
                raise DatError(f"4.x {version} .dat: cannot tell the XOR byte of its last {xor_len} bytes")
            tail = _xor(tail, k)
        out = plain + middle + tail
        mt = sniff(out)
        if mt is None:
            raise DatError(f"4.x {version} .dat: unwrapped, but not an image format this importer knows")
        return out, mt, f"4.x {version}"
    k = xor_key_3x(data)
    if k is None:
        raise DatError("not a WeChat .dat image this importer knows (neither 4.x V1/V2 nor 3.x XOR of a known format)")
    out = _xor(data, k)
    return out, sniff(out) or "application/octet-stream", "3.x XOR"


@dataclass
class Loaded:
    data: bytes | None  # None: nothing to archive (state says why)
    media_type: str | None
    state: str  # present | missing | failed
    reason: str | None = None


def load(file: Path, dat: bool, declared_md5: str | None, aes_key: bytes | None = None,
         xor_key: int | None = None, note: str | None = None, exact: bool = False) -> Loaded:
    """Read one device file for archiving; never raises for what the file holds. ``exact``:
    the file must have the declared MD5 to be the message's (files, video); images are kept
    with the difference said (a client may store another rendition than the one it hashed)."""
    try:
        size = file.stat().st_size
        if size > MAX_FILE:
            return Loaded(None, None, "failed", f"{file.name}: {size} bytes, over the {MAX_FILE} bytes read at once")
        data = file.read_bytes()
    except OSError as e:
        return Loaded(None, None, "failed", f"{file.name}: cannot be read ({e.strerror or e})")
    if not data:
        return Loaded(None, None, "failed", f"{file.name}: the file is empty (cut off when the copy was taken?)")
    reasons = [note] if note else []
    mt = None
    if dat:
        try:
            data, mt, how = decode_dat(data, aes_key, xor_key)
        except DatError as e:
            reasons.append(f"{file.name} stored as found, not unwrapped: {e}")
            mt = "application/octet-stream"
        else:
            if mt == "image/x-wxgf":
                reasons.append("WeChat's wxgf (HEVC) image, kept as it is")
    else:
        mt = sniff(data)
        guessed = mimetypes.guess_type(file.name)[0]
        if guessed and (mt is None or mt == "application/zip"):  # an .xlsx is a zip: the name says which
            mt = guessed
        mt = mt or "application/octet-stream"
    if declared_md5 and mt != "application/octet-stream":
        got = hashlib.md5(data).hexdigest()
        if got != declared_md5.lower() and not note:
            if exact:  # a file or video is byte for byte what was sent: another one is not this message's
                return Loaded(None, None, "missing", f"{file.name} is in the copy, but its MD5 {got} is not the "
                                                     f"{declared_md5.lower()} the message declares: not archived as "
                                                     "its attachment (damaged, or another file)")
            reasons.append(f"its MD5 {got} differs from the {declared_md5.lower()} the message declares")
    return Loaded(data, mt, "present", "; ".join(reasons) or None)


def why_not(path: Path | None, within: Path) -> str:
    """Why a path the database names is not read, for the attachment's reason."""
    if path is None:
        return "the path the database gives leaves the account folder: not followed"
    try:
        if not path.exists() and not path.is_symlink():
            return f"not in the copy: {path.relative_to(within) if path.is_relative_to(within) else path.name}"
        if path.is_symlink() and not path.resolve().is_relative_to(within.resolve()):
            return f"{path.name} is a link out of the account folder: not followed"
        if not path.is_file():
            return f"{path.name} is not a regular file (a folder, a device or a pipe): not read"
    except (OSError, RuntimeError) as e:
        return f"{path.name}: cannot be looked at ({e})"
    return f"{path.name}: not read"


def first_file(candidates: list[Path], within: Path) -> Path | None:
    """The first candidate that is a regular file inside ``within`` once symbolic links are
    followed (a copy holding a link to /etc/shadow must not get it archived)."""
    try:
        root = within.resolve()
    except OSError:
        return None
    for c in candidates:
        try:
            if c.is_file() and c.resolve().is_relative_to(root):
                return c
        except (OSError, RuntimeError):
            continue
    return None


def inside(root: Path, rel: str) -> Path | None:
    """``rel`` (a path as the database stores it, ``\\`` or ``/``) under ``root``, or None when it
    would leave ``root`` (a hostile row must not make the importer read other files)."""
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or ":" in p for p in parts):
        return None
    return root.joinpath(*parts)


def md5_hex(s: str | bytes) -> str:
    return hashlib.md5(s if isinstance(s, bytes) else s.encode()).hexdigest()
