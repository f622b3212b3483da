"""What the WeChat readers produce: the account, its contacts and groups, a census of every
conversation, and raw rows — one database row exactly as stored, plus the context from
other tables that parsing needs (the chat id of a 4.x table, a 4.x sender from ``Name2Id``).

A raw row is journaled as JSON (``wechat.row``) before it is parsed. Values keep their
SQLite storage class: integers and valid text as JSON, BLOBs as ``{"$b": base64}``, and TEXT
that is not valid UTF-8 as ``{"$x": base64 of the stored bytes}`` — nothing is re-encoded
or lost, so a parser fix can be replayed over the journal (``reindex``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from wxarchive.model import Attachment

RECORD_FORMAT = 1


@dataclass
class Contact:
    id: str  # wxid, "…@chatroom", "…@openim", "gh_…"
    nickname: str | None = None
    remark: str | None = None
    alias: str | None = None  # the user-chosen WeChat ID
    labels: list[str] = field(default_factory=list)  # label names
    mobile: str | None = None  # where the database keeps one (4.x contact description, Android remark)
    description: str | None = None
    kind: str = "contact"  # contact | group | official | openim | stranger

    @property
    def name(self) -> str | None:
        return self.remark or self.nickname or self.alias


@dataclass
class Group:
    id: str
    name: str | None = None
    owner: str | None = None
    members: list[str] = field(default_factory=list)
    member_names: dict[str, str] = field(default_factory=dict)  # group nicknames


@dataclass
class ConversationCensus:
    """How many messages one conversation has in this copy, per UTC day (``None``: no time)."""

    talker: str
    total: int = 0
    per_day: dict[str | None, int] = field(default_factory=dict)
    raw: Any = None  # the chat id exactly as stored, to query its rows by (when it is not valid text)


def ident(v: Any) -> str | None:
    """An id (wxid, chat id) as text: stored bytes that are not UTF-8 are written with
    backslash escapes, so two different ids never become one."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "backslashreplace")
    return str(v)


def label(v: Any) -> str | None:
    """A name or other display text: bytes that are not UTF-8 shown with U+FFFD."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def count_into(out: dict[str, ConversationCensus], talker: Any, day: Any, n: int) -> None:
    tid = ident(talker) or ""
    c = out.get(tid)
    if c is None:
        c = out[tid] = ConversationCensus(tid, raw=talker)
    day = label(day)
    c.total += n
    c.per_day[day] = c.per_day.get(day, 0) + n


@dataclass
class Media:
    """An attachment's bytes as the reader found them: in a database (``data``), in a file of
    the account folder (``file``, read only when archived), or nowhere (``looked`` says where
    the reader looked and why it is not there)."""

    path: str  # the attachment path it belongs to ("" = the message itself)
    kind: str
    data: bytes | None
    media_type: str | None
    file: Path | None = None
    dat: bool = False  # a WeChat image .dat to unwrap (mediafiles.decode_dat)
    note: str | None = None  # e.g. only the thumbnail was on the device
    looked: str | None = None


@dataclass
class RawRow:
    cursor_key: str  # "<file>|<table>|<talker>": the cursor holds the last local id per key
    local_id: int
    record: dict[str, Any]  # {"v", "format", "file", "table", "talker", "owner", "sender"?, "row"}
    media: list[Media] = field(default_factory=list)
    values: dict[str, Any] | None = None  # the row as read (what "row" encodes), to parse without decoding
    fingerprint: str = ""  # server id and time: the cursor checks the row it stopped at is still this one
    server_id: Any = None  # set by row_at: the caller checks the row is still the message it wants


def fingerprint(server_id: Any, time: Any) -> str:
    return f"{server_id}:{time}"


class Reader(Protocol):
    format: str
    path: Any
    owner: str
    owner_name: str | None

    def contacts(self) -> dict[str, Contact]: ...

    def groups(self) -> dict[str, Group]: ...

    def census(self) -> list[ConversationCensus]: ...

    def rows(self, talker: str, after: dict[str, int]) -> Iterator[RawRow]: ...

    def media_file(self, row: RawRow, att: Attachment) -> Media:
        """Where the account folder keeps the file of attachment ``att`` of ``row``."""
        ...


class InvalidText(bytes):
    """A TEXT value whose bytes are not valid UTF-8: kept as the stored bytes."""


def text_factory(b: bytes) -> str | InvalidText:
    """TEXT values as str, or as :class:`InvalidText` when they are not UTF-8 (case X2)."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return InvalidText(b)


_PLAIN = (int, str, type(None), float)


def encode_value(v: Any) -> Any:
    if isinstance(v, InvalidText):
        return {"$x": base64.b64encode(v).decode()}
    if isinstance(v, bytes):
        return {"$b": base64.b64encode(v).decode()}
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # a str with lone surrogates (not from our readers): its escaped bytes
            return {"$x": base64.b64encode(v.encode("utf-8", "surrogateescape")).decode()}
    return v


def decode_value(v: Any) -> Any:
    """Back to what SQLite held: int, float, None, str (valid text), or bytes (BLOB, or TEXT
    that was not valid UTF-8 — the caller decides how to show it)."""
    if isinstance(v, dict):
        if "$b" in v:
            return base64.b64decode(v["$b"])
        if "$x" in v:
            return InvalidText(base64.b64decode(v["$x"]))
    return v


def encode_record(rec: dict[str, Any]) -> bytes:
    return orjson.dumps(rec)


def make_record(fmt: str, file: str, table: str, talker: str, owner: str, row: dict[str, Any],
                **context: Any) -> dict[str, Any]:
    rec = {"v": RECORD_FORMAT, "format": fmt, "file": file, "table": table, "talker": talker, "owner": owner,
           "row": {k: v if type(v) in _PLAIN else encode_value(v) for k, v in row.items()}}
    rec.update({k: v for k, v in context.items() if v is not None})
    return rec


def local_key(talker: str, seconds: int | None, base: int, text: str, occurrence: int) -> str:
    """The message id of a row without a server id (system notices, local rows): chat, time to
    the second, base type, text, and which of the identical rows of that chat, second and type
    it is (``occurrence``, counted in the database by the reader) — so the Android, Windows and
    4.x copies of one account give the same notice the same id, and two identical notices in
    one second stay two messages."""
    h = hashlib.sha256(f"{talker}\x00{seconds}\x00{base}\x00{occurrence}\x00{text}".encode("utf-8", "surrogateescape"))
    return "local:" + h.hexdigest()[:24]


def day_of(seconds: int | None) -> str | None:
    if not seconds or seconds <= 0:
        return None
    import time

    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


SYSTEM_ACCOUNTS = {"filehelper", "weixin", "fmessage", "medianote", "floatbottle", "qqmail", "notifymessage",
                   "newsapp", "tmessage", "qmessage", "qqsync", "brandsessionholder"}


def contact_kind(u: str) -> str:
    if u.endswith("@chatroom"):
        return "group"
    if u.endswith("@openim"):
        return "openim"
    if u.startswith("gh_"):
        return "official"
    if u in SYSTEM_ACCOUNTS:
        return "system"
    return "contact"
