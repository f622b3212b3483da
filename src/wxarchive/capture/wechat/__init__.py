"""WeChat capture from managed devices' message databases.

``open_reader(format, path, key…)`` checks the key and the schema of every database it
needs *before* returning, so a wrong key, a truncated file or an unknown WeChat version is
one clear :class:`WeChatDbError` and nothing has been archived. The readers
(:mod:`.android`, :mod:`.windows`, :mod:`.v4`) yield raw rows; :mod:`.messages` maps a raw
row to the canonical model; :mod:`.policy` decides what is work.
"""

from __future__ import annotations

import re
from pathlib import Path

from wxarchive.capture.wechat.sqlcipher import WeChatDbError

FORMATS = ("android", "win3", "v4")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def parse_key(fmt: str, text: str, what: str = "--key") -> bytes:
    """The key material as the database expects it: Android's 7-character passphrase, or the
    32-byte account key (64 hex characters) of Windows 3.x and 4.x. Never echoed in errors."""
    t = text.strip().lstrip("\ufeff").strip()
    if t.lower().startswith("0x"):
        t = t[2:]
    if fmt == "android":
        if len(t) != 7 or not _HEX.match(t):
            got = f"{len(t)} characters" if len(t) != 7 else "7 characters, not all of them hex digits"
            raise WeChatDbError(f"{what}: an Android key is the 7 hex characters of md5(IMEI + uin); "
                                f"got {got} (or give --uin, with --imei if known, instead)")
        return t.lower().encode()
    if len(t) != 64 or not _HEX.match(t):
        got = f"{len(t)} characters" if len(t) != 64 else "64 characters, not all of them hex digits"
        raise WeChatDbError(f"{what}: a {fmt} key is 32 bytes written as 64 hex characters; got {got}")
    return bytes.fromhex(t)


def parse_image_key(text: str, what: str = "--image-key-file") -> bytes:
    """A 4.x account's image key (V2 ``.dat`` files): 16 bytes, as 32 hex characters or as the
    16 ASCII characters some extraction tools print. Never echoed in errors."""
    t = text.strip().lstrip("\ufeff").strip()
    if len(t) == 32 and _HEX.match(t):
        return bytes.fromhex(t)
    if len(t) == 16 and t.isascii() and t.isprintable():
        return t.encode()
    raise WeChatDbError(f"{what}: an image key is 16 bytes, as 32 hex characters or 16 ASCII characters; "
                        f"got {len(t)} characters")


def open_reader(fmt: str, path: Path, key: bytes | None = None, imei: str | None = None, uin: str | None = None,
                account: str | None = None, image_key: bytes | None = None):
    reader = _open(fmt, path, key, imei, uin, account)
    reader.image_key = image_key
    return reader


def _open(fmt: str, path: Path, key: bytes | None, imei: str | None, uin: str | None, account: str | None):
    if fmt not in FORMATS:
        raise WeChatDbError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise WeChatDbError(f"{path}: no such file or folder")
    if fmt == "android":
        from wxarchive.capture.wechat import android

        if key is None:
            if not uin:
                raise WeChatDbError("an Android database needs --key, --key-file, or --uin (with --imei if known)")
            db = android.find_db(path)
            key = android.pick_passphrase(db, imei, uin).encode()
        return android.AndroidReader(path, key.decode(), account)
    if key is None:
        raise WeChatDbError(f"a {fmt} database needs the account key: --key-file FILE or env WXARCHIVE_WECHAT_KEY")
    if fmt == "win3":
        from wxarchive.capture.wechat.windows import WindowsReader

        return WindowsReader(path, key, account)
    from wxarchive.capture.wechat.v4 import V4Reader

    return V4Reader(path, key, account)


__all__ = ["FORMATS", "WeChatDbError", "open_reader", "parse_image_key", "parse_key"]
