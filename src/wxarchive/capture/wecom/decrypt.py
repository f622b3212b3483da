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
    pad = padded[-1]
    # OpenSSL's EVP_DecryptFinal check: pad in 1..16 and every pad byte equal to it.
    if not 1 <= pad <= 16 or padded[-pad:] != bytes((pad,)) * pad:
        return None
    return padded[:-pad]


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


# --------------------------------------------------------------------------------------
# RSA key ring (§2.1)
# --------------------------------------------------------------------------------------


class KeyLoadError(ValueError):
    """A private key file cannot be used; the message names the file, never the key."""


class MissingKeyVersion(KeyError):
    """No private key is configured for a record's ``publickey_ver`` (K1, P4)."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(version)

    def __str__(self) -> str:
        return f"no private key for publickey_ver {self.version}"


def _load_private_key(data: bytes, name: str, password: bytes | None) -> RSAPrivateKey:
    """PKCS#1 (BEGIN RSA PRIVATE KEY) or PKCS#8 (BEGIN [ENCRYPTED] PRIVATE KEY) PEM (P13)."""
    if b"-----BEGIN" not in data:
        raise KeyLoadError(f"{name}: not a PEM file (no -----BEGIN line)")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        if password is None:
            raise KeyLoadError(f"{name}: the key is encrypted and no password was given") from None
        raise KeyLoadError(f"{name}: a password was given but the key is not encrypted") from None
    except UnsupportedAlgorithm:
        raise KeyLoadError(f"{name}: unsupported key type or encryption") from None
    except ValueError:
        raise KeyLoadError(
            f"{name}: not a readable PEM private key (damaged data or wrong password)"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise KeyLoadError(f"{name}: not an RSA key ({type(key).__name__.lstrip('_')})")
    return key


class KeyRing:
    """The enterprise's RSA private keys by ``publickey_ver``.

    Records keep the key version they were encrypted with after a new key is
    uploaded, so every version stays here. The key is chosen strictly by version:
    with OpenSSL >= 3.2 a wrong key does not fail RSA decryption (implicit rejection
    returns junk), it only shows up later as DecryptData 10008.
    """

    def __init__(self, keys: Mapping[int, RSAPrivateKey]) -> None:
        self._keys = {int(ver): key for ver, key in keys.items()}

    @classmethod
    def from_pems(
        cls,
        pems: Mapping[int, bytes],
        password: bytes | None = None,
        names: Mapping[int, str] | None = None,
    ) -> KeyRing:
        """Keys from PEM bytes; ``names`` (e.g. file paths) label them in errors."""
        names = names or {}
        return cls(
            {
                int(ver): _load_private_key(
                    pem, str(names.get(ver, f"private key for publickey_ver {ver}")), password
                )
                for ver, pem in pems.items()
            }
        )

    @classmethod
    def from_pem_files(
        cls, paths: Mapping[int, str | os.PathLike[str]], password: bytes | None = None
    ) -> KeyRing:
        keys = {}
        for ver, path in paths.items():
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise KeyLoadError(f"{path}: cannot read ({exc.strerror})") from None
            keys[int(ver)] = _load_private_key(data, str(path), password)
        return cls(keys)

    @property
    def versions(self) -> list[int]:
        return sorted(self._keys)

    def __contains__(self, version: object) -> bool:
        return version in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"<KeyRing versions={self.versions}>"

    def key(self, version: int) -> RSAPrivateKey:
        try:
            return self._keys[version]
        except KeyError:
            raise MissingKeyVersion(version) from None

    def unwrap(self, version: int, encrypt_random_key_b64: str) -> bytes:
        """RSA-2048 PKCS#1 v1.5 decrypt of ``encrypt_random_key``: DecryptData's key.

        Raises :class:`MissingKeyVersion`, or ValueError for undecodable input. With a
        wrong key RSA usually returns junk (implicit rejection) and only sometimes
        fails (e.g. ciphertext above that key's modulus): a successful return does
        NOT prove the key was right.
        """
        key = self.key(version)
        try:
            wrapped = base64.b64decode(encrypt_random_key_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("encrypt_random_key is not valid base64") from None
        size = (key.key_size + 7) // 8
        if len(wrapped) != size:
            raise ValueError(
                f"encrypt_random_key has {len(wrapped)} bytes, "
                f"the publickey_ver {version} key needs {size}"
            )
        try:
            return key.decrypt(wrapped, asympadding.PKCS1v15())
        except ValueError:
            raise ValueError(f"RSA decryption failed with the publickey_ver {version} key") from None

    def to_pems(self) -> dict[int, bytes]:
        """Unencrypted PKCS#8 PEMs, to hand the ring to decrypt worker processes."""
        return {
            ver: key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            for ver, key in self._keys.items()
        }


# --------------------------------------------------------------------------------------
# One chatdata record
# --------------------------------------------------------------------------------------


class RecordError(Exception):
    """A chatdata record that cannot be decrypted; ``reason`` is safe to store and show."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason, code)

    def __str__(self) -> str:
        return self.reason

    def __reduce__(self) -> tuple:
        return (type(self), (self.reason, self.code))


_FIELDS: tuple[tuple[str, type], ...] = (
    ("msgid", str),
    ("publickey_ver", int),
    ("encrypt_random_key", str),
    ("encrypt_chat_msg", str),
)


def _validate_item(item: object) -> tuple[int, str, str]:
    """Field presence and types, and the P14 length guard, before any crypto."""
    if not isinstance(item, dict):
        raise RecordError(f"chatdata item is a {type(item).__name__}, not a JSON object")
    for name, kind in _FIELDS:
        if name not in item:
            raise RecordError(f"missing field {name}")
        value = item[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise RecordError(f"field {name} is {type(value).__name__}, expected {kind.__name__}")
    msg = item["encrypt_chat_msg"]
    if len(msg) < MIN_ENCRYPT_MSG_LEN:
        raise RecordError(f"encrypt_chat_msg too short ({len(msg)} chars)")
    if not msg.isascii():
        raise RecordError("encrypt_chat_msg is not ASCII")
    return item["publickey_ver"], item["encrypt_random_key"], msg


def _sdk_reason(exc: SdkError) -> str:
    reason = f"DecryptData {exc.code}: {ERROR_MEANINGS.get(exc.code, 'unknown error code')}"
    return f"{reason} ({exc.detail})" if exc.detail else reason


def decrypt_record(item: dict, keyring: KeyRing, decrypt_impl: DecryptImpl) -> bytes:
    """Decrypt one ``chatdata`` item to its message JSON bytes.

    ``decrypt_impl`` is :func:`decrypt_data_py` or :func:`native_decrypt_impl`'s
    result. Every failure is a :class:`RecordError` whose reason names the field,
    the key version or the SDK code: never message text or key material.
    """
    version, wrapped_key, msg = _validate_item(item)
    try:
        key = keyring.unwrap(version, wrapped_key)
    except MissingKeyVersion as exc:
        raise RecordError(str(exc)) from None
    except ValueError as exc:
        raise RecordError(str(exc)) from None
    if not key.isascii():
        # The genuine RSA output is a base64 string. Bytes >= 0x80 come only from a wrong key
        # (implicit rejection returns random bytes), and the native decoder indexes its table
        # with them as signed chars: results not worth modelling, input not worth passing.
        exc = SdkError(10008, "DecryptData", f"the publickey_ver {version} key gave no base64 key string")
        raise RecordError(_sdk_reason(exc), 10008)
    try:
        return decrypt_impl(key, msg)
    except SdkError as exc:
        raise RecordError(_sdk_reason(exc), exc.code) from None


def native_decrypt_impl(lib_path: str | os.PathLike[str] | None = None) -> DecryptImpl:
    """DecryptData from the official library (loaded and pinned-checked now)."""
    lib: SdkLibrary = load_library(lib_path)

    def impl(encrypt_key: bytes, encrypt_msg: str) -> bytes:
        return decrypt_data(lib, encrypt_key, encrypt_msg)

    return impl


# --------------------------------------------------------------------------------------
# Process-pool entry points (picklable module-level functions)
# --------------------------------------------------------------------------------------


@dataclass
class _PoolState:
    keyring: KeyRing
    impl: DecryptImpl


_POOL_STATE: _PoolState | None = None


def init_decrypt_worker(pem_map: dict[int, bytes], lib_path: str | None, use_native: bool) -> None:
    """``ProcessPoolExecutor(initializer=...)``: keys and DecryptData for this process.

    Core dumps are disabled (they would contain private keys). The native library is
    loaded here so a load error surfaces at pool start, not per record.
    """
    global _POOL_STATE
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    impl = native_decrypt_impl(lib_path) if use_native else decrypt_data_py
    _POOL_STATE = _PoolState(keyring=KeyRing.from_pems(pem_map), impl=impl)


def _decrypt_one(raw: bytes | str, state: _PoolState) -> tuple[str, bytes | None, str | None]:
    try:
        item = json.loads(raw)
    except (ValueError, TypeError):
        return "", None, "chatdata item is not valid JSON"
    msgid = item.get("msgid") if isinstance(item, dict) else None
    msgid = msgid if isinstance(msgid, str) else ""
    try:
        return msgid, decrypt_record(item, state.keyring, state.impl), None
    except RecordError as exc:
        return msgid, None, exc.reason
    except Exception as exc:  # noqa: BLE001 - one bad record must not stop the batch (K6)
        log.warning("unexpected %s while decrypting a record", type(exc).__name__)
        return msgid, None, f"unexpected {type(exc).__name__} while decrypting"


def decrypt_items(raw_items: list[bytes]) -> list[tuple[str, bytes | None, str | None]]:
    """Decrypt raw chatdata items: ``(msgid or "", plaintext or None, reason or None)``.

    Never raises for bad records (each gets a reason); requires
    :func:`init_decrypt_worker` to have run in this process.
    """
    state = _POOL_STATE
    if state is None:
        raise RuntimeError("init_decrypt_worker() has not run in this process")
    return [_decrypt_one(raw, state) for raw in raw_items]
