"""The canonical model: what every capture source produces and every reader consumes.

Plain dataclasses, no behaviour beyond (de)serialisation. Imports nothing of ours.

Times are UTC epoch milliseconds (``int``) or ``None`` for "unknown" (a source value
of 0/NULL is unknown, never 1970).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any


class MessageKind(str, enum.Enum):
    """What a message is, independent of the source's own type names."""

    TEXT = "text"
    IMAGE = "image"
    VOICE = "voice"
    VIDEO = "video"
    FILE = "file"
    EMOTION = "emotion"  # sticker
    LINK = "link"
    CARD = "card"  # contact card
    LOCATION = "location"
    MIXED = "mixed"  # several items in one message
    CHAT_RECORD = "chat_record"  # forwarded conversation with nested items
    CALL = "call"  # voice/video call records, meeting voice calls
    MEETING = "meeting"  # meeting invitations and notifications
    DOCUMENT = "document"  # online documents, cloud-disk files, doc share in calls
    CALENDAR = "calendar"
    TODO = "todo"
    VOTE = "vote"
    FORM = "form"  # WeCom "collect" (填表) and solitaire (接龙)
    RED_PACKET = "red_packet"  # red packets and transfers
    MINI_PROGRAM = "mini_program"
    CHANNELS = "channels"  # WeChat Channels (视频号) feed shares
    NOTE = "note"
    SYSTEM = "system"  # switch records, joins/leaves, notifications
    RECALL = "recall"
    CONSENT = "consent"  # agree / disagree to archiving
    OTHER = "other"  # unknown or future type, kept raw


class AttachmentState(str, enum.Enum):
    PENDING = "pending"  # declared, not fetched yet
    PRESENT = "present"  # bytes in the blob store, checksum verified
    EXPIRED = "expired"  # the source no longer has it (WeCom 10010 / 301048)
    FAILED = "failed"  # gave up after retries; ``reason`` says why
    MISSING = "missing"  # the source never offered the bytes


@dataclass
class RawRecord:
    """Exactly what a capture source received, before any parsing.

    ``key`` is the source's unique id for the record (a WeCom msgid) and is what
    re-capture is deduplicated on. ``cursor`` is the source position this record
    was read at (a WeCom seq), stored as text.
    """

    source: str  # e.g. "wecom:ww0123abcd"
    kind: str  # e.g. "wecom.chatdata"
    key: str
    data: bytes
    cursor: str | None = None
    received_at: int | None = None  # epoch ms


@dataclass
class Attachment:
    """A media item belonging to a message (or to an item nested in one)."""

    path: str  # position inside the message: "" for the message itself, "item.2" for a nested item
    kind: str  # image, voice, video, file, emotion, call_audio, ...
    file_name: str | None = None
    media_type: str | None = None  # MIME type
    declared_size: int | None = None
    declared_md5: str | None = None  # source's checksum of the plaintext, verified on fetch
    source_ref: str | None = None  # WeCom sdkfileid: a secret (holds the media key); never logged
    state: AttachmentState = AttachmentState.PENDING
    reason: str | None = None
    sha256: str | None = None
    size: int | None = None


@dataclass
class Message:
    """One archived message or event."""

    source: str
    msgid: str
    conversation_id: str
    conversation_kind: str  # "direct" | "group" | "system" (WeCom account switches: no chat)
    kind: MessageKind
    source_type: str  # the source's own type name (WeCom msgtype), kept for audit
    action: str = "send"  # send | recall | switch
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    sent_at: int | None = None  # epoch ms UTC; None = unknown
    seq: int | None = None  # source order (WeCom seq); ties on sent_at keep this order
    text: str = ""  # searchable text: body, titles, file names, nested items
    content: dict[str, Any] = field(default_factory=dict)  # type-specific fields, normalised
    attachments: list[Attachment] = field(default_factory=list)
    reply_to: str | None = None  # msgid of a quoted message, when known
    recalls: str | None = None  # for a recall: msgid of the original
    flags: list[str] = field(default_factory=list)  # e.g. "invalid_text"


@dataclass
class Participant:
    source: str
    id: str  # WeCom userid / external userid (wm…, wo…) / robot (wb…)
    kind: str  # employee | external | robot | unknown
    display_name: str | None = None
    mobile: str | None = None
    email: str | None = None
    department: str | None = None
    organisation: str | None = None
    valid_from: int | None = None
    valid_to: int | None = None


def participant_kind(user_id: str | None, source: str | None = None) -> str:
    """Classify an id: WeCom ids by their documented prefix; on a WeChat device
    (source ``wechat:<owner wxid>``) the owner is the employee and everyone else external."""
    if not user_id:
        return "unknown"
    if source and source.startswith("wechat:"):
        return "employee" if user_id == source[7:] else "external"
    if user_id.startswith(("wm", "wo")):
        return "external"
    if user_id.startswith("wb"):
        return "robot"
    return "employee"


def mobile_digits(value: Any) -> str | None:
    """A phone number as the digits of its national number: '+86 138-1234-5678', '0086
    13812345678' and '13812345678' are all '13812345678'."""
    if not value:
        return None
    digits = "".join(c for c in str(value) if c.isdigit())
    for cc in ("0086", "86"):
        if digits.startswith(cc) and len(digits) - len(cc) == 11:
            digits = digits[len(cc):]
    return digits or None


def to_jsonable(obj: Any) -> Any:
    """Dataclasses and enums to plain JSON values (recursively)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def message_from_jsonable(d: dict[str, Any]) -> Message:
    d = dict(d)
    d["kind"] = MessageKind(d["kind"])
    d["attachments"] = [
        Attachment(**{**a, "state": AttachmentState(a["state"])}) for a in d.get("attachments", [])
    ]
    return Message(**d)


def iso_time(ms: int | None, tz: str = "UTC") -> str | None:
    """Epoch ms → ISO 8601 with the zone's offset at that instant (DST-aware); None stays None."""
    if ms is None:
        return None
    from datetime import datetime
    from zoneinfo import ZoneInfo

    try:
        dt = datetime.fromtimestamp(ms / 1000, ZoneInfo(tz))
    except (ValueError, OverflowError, OSError):  # beyond what datetime holds: said as it is stored
        return f"{ms} ms since 1970 (UTC)"
    return dt.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
