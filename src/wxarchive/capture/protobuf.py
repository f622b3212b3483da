"""The few protobuf messages capture needs: WeCom's archive crypto (SdkKeyInfo,
MsgSdkFileId) and WeChat's Windows ``BytesExtra`` / ``RoomData`` blobs.

Varint and length-delimited fields only (fixed32/64 are skipped); a full protobuf runtime
would be a large dependency for a handful of small messages.
"""

from __future__ import annotations

from collections.abc import Iterator


class ProtobufError(ValueError):
    pass


def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1  # int32 negatives are encoded as 10-byte varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_fields(fields: list[tuple[int, int | bytes]]) -> bytes:
    out = bytearray()
    for number, value in fields:
        if isinstance(value, int):
            out += _varint(number << 3 | 0) + _varint(value)
        else:
            out += _varint(number << 3 | 2) + _varint(len(value)) + value
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def decode_fields(buf: bytes) -> dict[int, int | bytes]:
    """Decode a flat message; the last occurrence of a field wins (protobuf semantics)."""
    return dict(iter_fields(buf))


def iter_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Every (field number, value) in order, repeated fields included."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            if value >= 1 << 63:
                value -= 1 << 64
            yield number, value
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ProtobufError("truncated field")
            yield number, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ProtobufError("truncated field")
