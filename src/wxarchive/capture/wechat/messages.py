"""A journaled WeChat row (``wechat.row``) → the canonical :class:`~wxarchive.model.Message`.

Where each platform keeps what (fact sheet §0):

=========  ==========================  ==========================  ======  ====================
format     base / app subtype          body                        time    group sender
=========  ==========================  ==========================  ======  ====================
android    ``type & 0xFFFF`` / XML     ``content``                 ms      ``wxid:\\n`` prefix
win3       ``Type`` / ``SubType``      ``StrContent`` or lz4       s       ``BytesExtra`` attr 1
                                       ``CompressContent``
v4         ``local_type`` low / high   ``message_content`` (zstd)  s       ``Name2Id`` (context)
=========  ==========================  ==========================  ======  ====================

The message id is the server id (``msgSvrId``/``MsgSvrID``/``server_id``) when there is one —
the same message read from another shard, another copy or another WeChat generation of the
same account is the same message — else a hash of chat, local id, time and type.
"""

from __future__ import annotations

from typing import Any

import orjson

from wxarchive.capture.wechat import payloads
from wxarchive.capture.wechat.records import decode_value, local_key
from wxarchive.model import Attachment, AttachmentState, Message

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_MAX = 16 << 20  # no WeChat message body comes near; more is a decompression bomb


class ParseError(ValueError):
    """The row cannot become a message; the reason never quotes message text."""


def _text(v: Any, flags: list[str]) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            flags.append("invalid_text")
            return v.decode("utf-8", "replace")
    return str(v)


def lz4_block(data: bytes) -> bytes:
    """An LZ4 block without a size header (Windows 3.x ``CompressContent``): the output size is
    unknown, so the buffer grows until it fits (very repetitive XML compresses far beyond 4×)."""
    import lz4.block

    size = max(len(data) * 8, 4096)
    while True:
        try:
            return lz4.block.decompress(data, uncompressed_size=size).rstrip(b"\x00")
        except lz4.block.LZ4BlockError:
            if size >= LZ4_MAX:
                raise ParseError("CompressContent is not an LZ4 block (or decodes to more than 16 MiB)") from None
            size *= 4


def zstd(data: bytes) -> bytes:
    import zstandard

    import io

    try:  # streamed, so the cap holds whatever size the frame header claims
        out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read(LZ4_MAX + 1)
    except zstandard.ZstdError as e:
        raise ParseError(f"message_content is not a readable zstd frame ({e.__class__.__name__})") from None
    if len(out) > LZ4_MAX:
        raise ParseError("message_content decompresses to more than 16 MiB (a decompression bomb?)")
    return out


def bytes_extra_sender(blob: bytes) -> str | None:
    """Attribute type 1 (the group sender) of a Windows 3.x ``BytesExtra`` protobuf."""
    from wxarchive.capture.protobuf import ProtobufError, iter_fields as fields

    try:
        for num, val in fields(blob):
            if num == 3 and isinstance(val, bytes):
                attr = dict(fields(val))
                if attr.get(1) == 1 and isinstance(attr.get(2), bytes):
                    return attr[2].decode("utf-8", "replace") or None
    except (ProtobufError, ValueError):
        return None
    return None


def _split_prefix(body: str) -> tuple[str | None, str]:
    """``"wxid_a:\\nhello"`` → ("wxid_a", "hello"); bodies without a prefix are returned whole."""
    head, sep, rest = body.partition(":\n")
    if sep and head and len(head) <= 80 and not any(c in head for c in " <\n\t\"'") and not head.startswith("http"):
        return head, rest
    return None, body


def parse_row(data: bytes, source: str) -> Message:
    try:
        rec = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ParseError("not a wechat.row record (invalid JSON)") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("row"), dict):
        raise ParseError("not a wechat.row record")
    return parse_values(rec, {k: decode_value(v) for k, v in rec["row"].items()}, source)


def parse_values(rec: dict[str, Any], row: dict[str, Any], source: str) -> Message:
    """The same as :func:`parse_row`, from the record and the row's values as read.

    Whatever a hostile or damaged row holds, the outcome is a message or a ParseError (the
    row is then quarantined): never another exception, which would stop the catalog."""
    fmt = rec.get("format")
    if fmt not in _FORMATS:
        raise ParseError(f"unknown record format {fmt!r}")
    try:
        fields = _FORMATS[fmt](row, rec)
        return _message(source, rec, *fields)
    except ParseError:
        raise
    except KeyError as e:
        raise ParseError(f"{rec.get('file')}:{rec.get('table')}: column {e.args[0]} missing") from None
    except (TypeError, ValueError, AttributeError, OverflowError, RecursionError, UnicodeError) as e:
        raise ParseError(f"{rec.get('file')}:{rec.get('table')}: a value of an unexpected type or size "
                         f"({e.__class__.__name__})") from None


# times a row may carry and the rest of the archive can show (years 1971 to 9999, in ms)
MIN_MS, MAX_MS = 31_536_000_000, 253_402_300_799_999


def _number(row: dict[str, Any], col: str, required: bool = False) -> int | None:
    """An INTEGER column as an int; a value of another type is unusable (None, or a ParseError
    when the mapping cannot do without it)."""
    v = row[col] if required else row.get(col)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if v is None and not required:
        return None
    if required:
        raise ParseError(f"column {col} holds a {type(v).__name__}, not an integer")
    return None


def _time_ms(row: dict[str, Any], col: str, scale: int, flags: list[str]) -> int | None:
    """A creation time as epoch ms, or None (unknown) — flagged when the value was there but
    unusable (not an integer, or outside years 1971–9999)."""
    v = row.get(col)
    if v is None or v == 0:
        return None
    if isinstance(v, float) and v == v and abs(v) < 1e15:  # a REAL time (some tools write them): to the ms
        v_ms = int(round(v * scale))
    elif isinstance(v, int) and not isinstance(v, bool):
        v_ms = v * scale
    else:
        flags.append("time_unusable")
        return None
    if not MIN_MS <= v_ms <= MAX_MS:
        flags.append("time_unusable")
        return None
    return v_ms


def _android(row: dict[str, Any], rec: dict[str, Any]):
    flags: list[str] = []
    t = _number(row, "type", required=True)
    return (_number(row, "msgSvrId"), row["msgId"], t & 0xFFFF, None, t, _time_ms(row, "createTime", 1, flags),
            bool(row.get("isSend")), None, row.get("content"), flags)


def _win3(row: dict[str, Any], rec: dict[str, Any]):
    flags = []
    body = row.get("StrContent")
    cc = row.get("CompressContent")
    base, sub = _number(row, "Type", required=True), _number(row, "SubType")
    if isinstance(cc, bytes) and cc:
        body = lz4_block(cc)
        flags.append("from_compress_content")
    extra = row.get("BytesExtra")
    sender = bytes_extra_sender(extra) if isinstance(extra, bytes) and extra else None
    return (_number(row, "MsgSvrID"), row["localId"], base, sub if base == payloads.APP else None, f"{base}/{sub}",
            _time_ms(row, "CreateTime", 1000, flags), bool(row.get("IsSender")), sender, body, flags)


def _v4(row: dict[str, Any], rec: dict[str, Any]):
    lt = _number(row, "local_type", required=True)
    body = row.get("message_content")
    flags = []
    if isinstance(body, bytes) and body.startswith(ZSTD_MAGIC):
        body = zstd(body)
        flags.append("zstd")
    is_send = rec.get("sender") == rec.get("owner") if rec.get("sender") else None
    return (_number(row, "server_id"), row["local_id"], lt & 0xFFFFFFFF, (lt >> 32) or None, lt,
            _time_ms(row, "create_time", 1000, flags), is_send, rec.get("sender"), body, flags)


_FORMATS = {"android": _android, "win3": _win3, "v4": _v4}


def _message(source: str, rec: dict[str, Any], server_id, local_id, base, sub, raw_type, sent_at, is_send,
             sender, body, flags=None) -> Message:
    flags = list(flags or [])
    talker, owner = rec["talker"], rec["owner"]
    group = talker.endswith("@chatroom")
    text = _text(body, flags)
    prefixed, stripped = _split_prefix(text) if group and base != payloads.SYSTEM else (None, text)
    if prefixed:
        text = stripped
        sender = sender or prefixed
    system = base in (payloads.SYSTEM, payloads.SYSMSG)
    if is_send:
        sender = owner
    elif sender is None and not group and not system:  # a 1:1 message not sent by the owner is the contact's
        sender = talker
    if group and sender is None and not system:
        flags.append("sender_unknown")
    if sent_at is None:
        flags.append("unknown_time")
    p = payloads.parse_body(base, sub, text)
    flags.extend(p.flags)
    if base == payloads.VOICE:
        p.attachments = _voice_attachments(rec)
    msgid = str(server_id) if server_id and int(server_id) > 0 else \
        local_key(talker, sent_at // 1000 if sent_at else None, base, p.text, int(rec.get("occurrence") or 0))
    content = dict(p.content)
    content.update({"local_id": local_id, "file": rec.get("file"), "wechat_type": raw_type})
    if group:
        content["room_name"] = rec.get("room_name")
    return Message(
        source=source, msgid=msgid, conversation_id=talker, conversation_kind="group" if group else "direct",
        kind=p.kind, source_type=f"wechat.{rec['format']}:{p.source_type}", action=p.action, sender=sender,
        recipients=[] if group else [owner if sender != owner else talker], sent_at=sent_at,
        seq=int(local_id) if local_id is not None else None, text=p.text, content=content,
        attachments=p.attachments, reply_to=p.reply_to, recalls=p.recalls, flags=sorted(set(flags)),
    )


def _voice_attachments(rec: dict[str, Any]) -> list[Attachment]:
    """Voice bytes travel beside the row (MediaMSG / media_0.db / voice2 files): the ingest
    journals what it found for both paths, the SILK original and the WAV made from it."""
    return [
        Attachment(path="", kind="voice", media_type="audio/silk", state=AttachmentState.PENDING),
        Attachment(path="wav", kind="voice_wav", media_type="audio/wav", state=AttachmentState.PENDING),
    ]
