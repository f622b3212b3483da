"""The inverse of WeCom's archive crypto: builds ciphertexts the official SDK accepts.

Recipe from ../shared/docs/wecom-archive-api.md §2.2 (DecryptData) and §2.3 (media),
verified there against the official library. Used by the simulator and by tests;
product code never imports this module.
"""

from __future__ import annotations

import base64
import os
import random

from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives.asymmetric import padding as asympadding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wxarchive.capture import protobuf

_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _aes256cbc_encrypt(key: bytes, plaintext: bytes, iv: bytes) -> bytes:
    key32 = (key + b"\0" * 32)[:32]
    padder = sympadding.PKCS7(128).padder()
    data = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(key32), modes.CBC(iv)).encryptor()
    return iv + enc.update(data) + enc.finalize()


def _junk(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_B64_ALPHABET) for _ in range(n))


def encrypt_message(
    plaintext: bytes, public_key: RSAPublicKey, rng: random.Random | None = None
) -> tuple[str, str]:
    """Encrypt one decrypted-message JSON into (encrypt_random_key, encrypt_chat_msg)."""
    rng = rng or random.Random(os.urandom(8))
    k1 = _junk(rng, 32).encode("ascii")  # content key: 32 base64 characters
    body = base64.b64encode(_aes256cbc_encrypt(k1, plaintext, rng.randbytes(16))).decode("ascii")
    s_len = rng.randint(1, max(1, min(24, len(body))))
    pre_len = rng.randint(0, 16)
    end_len = rng.randint(0, 16)
    x = body[:s_len] + _junk(rng, s_len) + body[s_len:] + _junk(rng, end_len)
    e_key = _junk(rng, 32)
    msg = _junk(rng, 13) + e_key + _junk(rng, pre_len) + x
    info = protobuf.encode_fields([(1, k1), (2, pre_len), (3, end_len), (4, s_len)])
    k = base64.b64encode(_aes256cbc_encrypt(e_key.encode("ascii"), info, rng.randbytes(16)))
    wrapped = public_key.encrypt(k, asympadding.PKCS1v15())
    return base64.b64encode(wrapped).decode("ascii"), msg


def make_sdkfileid(fileid: str, authkey: str, aeskey_hex: str) -> str:
    """base64(protobuf MsgSdkFileId{1: fileid, 2: authkey, 3: aeskey})."""
    raw = protobuf.encode_fields(
        [(1, fileid.encode()), (2, authkey.encode()), (3, aeskey_hex.encode())]
    )
    return base64.b64encode(raw).decode("ascii")


def parse_sdkfileid(sdkfileid: str) -> tuple[str, str, str]:
    fields = protobuf.decode_fields(base64.b64decode(sdkfileid))
    return (
        fields.get(1, b"").decode(),
        fields.get(2, b"").decode(),
        fields.get(3, b"").decode(),
    )


def encrypt_media(plaintext: bytes, aeskey_hex: str) -> bytes:
    """AES-128-ECB(key = hex-decoded aeskey, PKCS#7(file)): what the media endpoint serves."""
    padder = sympadding.PKCS7(128).padder()
    data = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(bytes.fromhex(aeskey_hex)), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()
