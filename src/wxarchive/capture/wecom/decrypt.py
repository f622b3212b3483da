"""Per-record decryption: RSA key ring by ``publickey_ver`` and ``DecryptData``.

Two DecryptData implementations share one contract (same output, same error codes):

* the official library through :func:`wxarchive.capture.wecom.sdk.decrypt_data`
  (production default: the format is Tencent's and may change with the SDK);
* :func:`decrypt_data_py`, a pure-Python model of the v3.0 library (§2.2 of the fact
  sheet, checked against the disassembly), used to compare, to run where the .so
  cannot load, and to predict the inputs on which the native code would abort.

Nothing here logs or puts message text, plaintext or key material in exceptions.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import resource
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding as asympadding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wxarchive.capture.wecom.sdk import (
    ERROR_MEANINGS,
    MIN_ENCRYPT_MSG_LEN,
    DecryptError,
    SdkError,
    SdkLibrary,
    decrypt_data,
    guard_encrypt_msg,
    load_library,
)

log = logging.getLogger(__name__)

DecryptImpl = Callable[[bytes, str], bytes]

# --------------------------------------------------------------------------------------
# DecryptData model (§2.2). Error codes: 10008 stage 1/2, 10005 key info, 10006 body.
# --------------------------------------------------------------------------------------

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: The SDK's decoder maps every byte outside the alphabet (including '=') to 0.
_LENIENT = bytes(c if c in _ALPHABET else ord("A") for c in range(256))
_E_KEY_OFFSET = 13


class _WouldAbort(Exception):
    """The native code would throw an uncaught C++ exception (SIGABRT) here."""


def lenient_b64decode(data: bytes) -> bytes:
    """The SDK's base64 decoder, bit for bit.

    Only whole 4-character groups are decoded (a tail of 1–3 characters is ignored),
    unknown characters count as 0, and the output is shortened by the number of
    trailing '=' characters. When that count exceeds the decoded length the SDK asks
    ``std::string::assign`` for a negative length and aborts; that raises here.
    """
    out_len = _b64_out_len(data)
    groups = len(data) // 4
    decoded = binascii.a2b_base64(data[: 4 * groups].translate(_LENIENT))
    return decoded[:out_len]


def _b64_out_len(data: bytes) -> int:
    """Length the SDK's decoder reports; raises where the SDK would abort instead."""
    trailing = len(data) - len(data.rstrip(b"="))
    out_len = 3 * (len(data) // 4) - trailing
    if out_len < 0:
        raise _WouldAbort(f"base64 text is almost all '=' ({trailing} of {len(data)} chars)")
    return out_len


def _aes_cbc_decrypt(data: bytes, key: bytes) -> bytes | None:
    """The SDK's AES step: base64 text -> AES-256-CBC(IV || ct), PKCS#7. None on failure.

    The key is copied into a zeroed 32-byte buffer (shorter keys zero-padded, longer
    ones truncated); the decoded input must be >= 32 bytes and a multiple of 16.
    """
    raw = lenient_b64decode(data) if data else b""
    if len(raw) < 32 or len(raw) % 16:
        return None
    key32 = (key + b"\0" * 32)[:32]
    decryptor = Cipher(algorithms.AES(key32), modes.CBC(raw[:16])).decryptor()
    padded = decryptor.update(raw[16:]) + decryptor.finalize()
    unpadder = sympadding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        return None


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """protobuf 2.x varint: at most 10 bytes; the caller truncates as the field needs."""
    result = 0
    for i in range(10):
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return result, pos
    raise ValueError("varint longer than 10 bytes")


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _skip_field(buf: bytes, pos: int, tag: int, depth: int) -> int:
    """protobuf 2.x ``WireFormat::SkipField`` for an unknown or mistyped field."""
    wire = tag & 7
    if wire == 0:
        return _read_varint(buf, pos)[1]
    if wire in (1, 5):
        end = pos + (8 if wire == 1 else 4)
        if end > len(buf):
            raise ValueError("truncated fixed field")
        return end
    if wire == 2:
        length, pos = _read_varint(buf, pos)
        length = _int32(length)
        if length < 0 or pos + length > len(buf):
            raise ValueError("bad length")
        return pos + length
    if wire == 3:
        if depth >= 100:
            raise ValueError("groups nested too deep")
        pos, end_tag = _skip_group(buf, pos, depth + 1)
        if end_tag != ((tag >> 3) << 3 | 4):
            raise ValueError("unterminated group")
        return pos
    raise ValueError(f"invalid wire type {wire}")


def _skip_group(buf: bytes, pos: int, depth: int) -> tuple[int, int]:
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        tag &= 0xFFFFFFFF
        if tag == 0 or tag & 7 == 4:
            return pos, tag
        pos = _skip_field(buf, pos, tag, depth)
    return pos, 0


@dataclass(frozen=True)
class SdkKeyInfo:
    """``wwmsgauditsdk.SdkKeyInfo`` (proto2): content key and obfuscation lengths."""

    k1: bytes = b""
    pre_len: int = 0
    end_len: int = 0
    s_len: int = 0


def parse_sdk_key_info(buf: bytes) -> SdkKeyInfo:
    """Parse as the SDK's protobuf 2.x generated code does; ValueError when it fails.

    Known fields with the wrong wire type are skipped as unknown; the last
    occurrence wins; a zero tag or a stray end-group tag fails the parse.
    """
    fields: dict[int, bytes | int] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        tag &= 0xFFFFFFFF
        number, wire = tag >> 3, tag & 7
        if tag == 0 or wire == 4:
            raise ValueError("zero or end-group tag")
        if number == 1 and wire == 2:
            length, pos = _read_varint(buf, pos)
            length = _int32(length)
            if length < 0 or pos + length > len(buf):
                raise ValueError("bad length")
            fields[1], pos = buf[pos : pos + length], pos + length
        elif number in (2, 3, 4) and wire == 0:
            value, pos = _read_varint(buf, pos)
            fields[number] = _int32(value)
        else:
            pos = _skip_field(buf, pos, tag, 0)
    return SdkKeyInfo(
        k1=bytes(fields.get(1, b"")),  # type: ignore[arg-type]
        pre_len=int(fields.get(2, 0)),
        end_len=int(fields.get(3, 0)),
        s_len=int(fields.get(4, 0)),
    )


def _key_stage(encrypt_key: bytes, msg: bytes) -> SdkKeyInfo:
    """Steps 1–3: AES key from the message, key info from the RSA output."""
    key = encrypt_key.split(b"\0", 1)[0]  # the SDK receives a C string
    info_raw = _aes_cbc_decrypt(key, msg[_E_KEY_OFFSET : _E_KEY_OFFSET + 32])
    if info_raw is None:
        raise SdkError(10008, "DecryptData")
    try:
        info = parse_sdk_key_info(info_raw)
    except ValueError:
        raise SdkError(10005, "DecryptData", "key info does not parse") from None
    if info.s_len <= 0 or 2 * info.s_len >= len(msg):
        raise SdkError(10005, "DecryptData", "key info lengths do not fit the message")
    return info


def _body_stage(info: SdkKeyInfo, msg: bytes) -> bytes:
    """Step 4: strip the prefix, the inserted junk and the suffix from the message."""
    start = 45 + info.pre_len
    if start < 0 or start > len(msg):
        raise SdkError(10005, "DecryptData", "key info prefix longer than the message")
    body = msg[start:]
    if info.s_len > len(body):
        raise _WouldAbort("key info junk offset beyond the message body")
    body = body[: info.s_len] + body[2 * info.s_len :]
    if info.end_len < 0 or info.end_len > len(body):
        raise SdkError(10005, "DecryptData", "key info suffix longer than the message")
    return body[: len(body) - info.end_len]


def _split(encrypt_key: bytes, encrypt_msg: str) -> tuple[SdkKeyInfo, bytes]:
    msg = guard_encrypt_msg(encrypt_msg)
    if not isinstance(encrypt_key, bytes):
        raise DecryptError(f"encrypt_key must be bytes, not {type(encrypt_key).__name__}")
    try:
        info = _key_stage(encrypt_key, msg)
        body = _body_stage(info, msg)
        if body:
            _b64_out_len(body)  # would the final decode abort?
    except _WouldAbort as exc:
        raise DecryptError(f"input would crash the native DecryptData: {exc}") from None
    return info, body


def decrypt_data_py(encrypt_key: bytes, encrypt_msg: str) -> bytes:
    """Pure-Python ``DecryptData``: same plaintext and same error codes as SDK v3.0.

    Raises :class:`SdkError` (10008 / 10005 / 10006) where the SDK returns those, and
    :class:`DecryptError` (code 10000) where the SDK would abort the process.
    """
    info, body = _split(encrypt_key, encrypt_msg)
    plaintext = _aes_cbc_decrypt(body, info.k1)
    if plaintext is None:
        raise SdkError(10006, "DecryptData")
    return plaintext


def native_abort_reason(encrypt_key: bytes, encrypt_msg: str) -> str | None:
    """Why the native DecryptData would abort on these inputs, or None if it is safe.

    Runs the cheap key-info stages of the model; a modelled error code (10008…) means
    "safe": the native code returns that code itself.
    """
    try:
        _split(encrypt_key, encrypt_msg)
    except DecryptError as exc:
        return exc.detail
    except SdkError:
        return None
    return None
