"""A pure-Python DecryptData (fact sheet §2.2), for the simulator's own checks and tests.

The generator uses it to prove that its deliberately corrupted record really fails the
way the official library fails (10006) without loading the native library; tests use
it to cross-check the real ``.so``. Product code calls the official library instead.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wxarchive.capture import protobuf

_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TO_ZERO = bytes.maketrans(bytes(b for b in range(256) if b not in _B64), b"A" * (256 - len(_B64)))
ERR_FILEID = 10005  # key info unparseable / offsets out of range
ERR_DECRYPT = 10006  # the message body does not decrypt
ERR_KEY = 10008  # the RSA-recovered key does not open the key info


class DecryptDataError(Exception):
    """The error code the official DecryptData would return."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"DecryptData {code}: {detail}")
        self.code = code


def _b64decode_lenient(text: bytes) -> bytes:
    """The SDK's decoder: unknown characters count as 0, only trailing '=' are trimmed."""
    core = text.rstrip(b"=").translate(_TO_ZERO)
    if len(core) % 4 == 1:
        core = core[:-1]
    return base64.b64decode(core + b"=" * (-len(core) % 4))


def _aes256cbc_decrypt(key: bytes, data: bytes) -> bytes:
    if len(data) < 32 or len(data) % 16:
        raise ValueError("ciphertext length")
    key32 = (key + b"\0" * 32)[:32]
    dec = Cipher(algorithms.AES(key32), modes.CBC(data[:16])).decryptor()
    padded = dec.update(data[16:]) + dec.finalize()
    unpadder = sympadding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _int32(value: int | bytes) -> int:
    if not isinstance(value, int):
        raise protobuf.ProtobufError("expected a varint")
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _key_info(random_key: bytes, msg: str) -> tuple[bytes, int, int, int]:
    try:
        info = _aes256cbc_decrypt(msg[13:45].encode("latin-1"), _b64decode_lenient(random_key))
    except (ValueError, binascii.Error) as exc:
        raise DecryptDataError(ERR_KEY, "key info does not decrypt") from exc
    try:
        fields = protobuf.decode_fields(info)
        k1 = fields.get(1, b"")
        if not isinstance(k1, bytes):
            raise protobuf.ProtobufError("k1 is not bytes")
        return k1, _int32(fields.get(2, 0)), _int32(fields.get(3, 0)), _int32(fields.get(4, 0))
    except protobuf.ProtobufError as exc:
        raise DecryptDataError(ERR_FILEID, "key info unparseable") from exc


def decrypt_data(random_key: bytes, msg: str) -> bytes:
    """``DecryptData(random_key, encrypt_chat_msg)``: the message plaintext, or the SDK's error."""
    if len(msg) < 45:
        raise DecryptDataError(ERR_KEY, "encrypt_chat_msg shorter than 45 characters")
    k1, pre_len, end_len, s_len = _key_info(random_key, msg)
    if s_len <= 0 or 2 * s_len >= len(msg) or pre_len < 0 or end_len < 0:
        raise DecryptDataError(ERR_FILEID, "offsets out of range")
    body = msg[45 + pre_len :]
    if len(body) < 2 * s_len:
        raise DecryptDataError(ERR_FILEID, "message too short for its offsets")
    body = body[:s_len] + body[2 * s_len :]
    if end_len > len(body):
        raise DecryptDataError(ERR_FILEID, "end_len beyond the message")
    body = body[: len(body) - end_len]
    try:
        return _aes256cbc_decrypt(k1, _b64decode_lenient(body.encode("latin-1")))
    except (ValueError, binascii.Error) as exc:
        raise DecryptDataError(ERR_DECRYPT, "message body does not decrypt") from exc
