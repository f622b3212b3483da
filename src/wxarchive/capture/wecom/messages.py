"""Decrypted WeCom archive JSON -> canonical :class:`~wxarchive.model.Message`.

The mapping of ``msgtype`` to kind and the media path convention are fixed in
``docs/msgtype-kinds.md``; the fields and their units come from the WeCom fact sheet
(section 3). The parser is deliberately forgiving: a record is refused (``ParseError``)
only when it is not a JSON object or has no msgid. Everything else -- unknown types,
missing fields, wrong types, broken text -- still yields a ``Message`` whose ``flags``
say what was odd, because the journal keeps the raw record and a message that is
archived with a flag is worth more to a compliance officer than one in quarantine.

Two invariants matter beyond the shape:

* ``sdkfileid`` is a secret (it carries the media key). It goes to
  ``Attachment.source_ref`` only; in ``content`` it is replaced by a marker and it is
  never part of ``text``.
* Times are UTC epoch milliseconds or ``None`` (0/missing/invalid is unknown, never 1970).
"""

from __future__ import annotations

import json
import math
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from wxarchive.model import Attachment, AttachmentState, Message, MessageKind

__all__ = ["ParseError", "parse_message"]


class ParseError(ValueError):
    """The record cannot become a message at all.

    ``reason`` is a single line that never quotes message text, so it can go to logs
    and to the quarantine list as it is.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- constants

_ENVELOPE = frozenset({"msgid", "action", "from", "tolist", "roomid", "msgtime", "msgtype"})
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: anything later is not a time
_SECONDS_GUARD = 10**11  # a "seconds" value above this is already milliseconds
_CHINA = ZoneInfo("Asia/Shanghai")
_SURROGATE = re.compile("[\ud800-\udfff]")
_DECODER = json.JSONDecoder(parse_constant=str)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
_REDACTED = "<redacted>"
_REF_IN_TEXT = re.compile(
    r"(sdkfileid\\*\"?\s*[:=]\s*\\*\"?)((?:\\/|[A-Za-z0-9+/=_\-])+)", re.IGNORECASE
)
_QUOTE_PREFIX = r"^(?:这是一条引用/回复消息：|这是一条引用/回复消息:|This is a quote/reply:)\s*"
_QUOTE_WITH_RULE = re.compile(
    _QUOTE_PREFIX + r"[“\"]?(?P<quoted>.*?)[”\"]?[ \t]*\n-{6,}[ \t]*(?:\n|\Z)(?P<reply>.*)\Z", re.S
)
_QUOTE_NO_RULE = re.compile(_QUOTE_PREFIX + r"“(?P<quoted>.*?)”\s*\n(?P<reply>.*)\Z", re.S)
_QUOTE_SENDER = re.compile(r"(?P<sender>[^\n：:]{1,64})[：:][ \t]*\n(?P<text>.*)\Z", re.S)

# A private table: the process-wide one reads /etc/mime.types, which would make the
# parsed catalog differ between hosts. Office formats are missing from Python 3.11's
# built-in table and are the most common files in business chats.
_MIME = mimetypes.MimeTypes()
for _ext, _type in (
    (".docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    (".xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    (".pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
    (".amr", "audio/amr"),
):
    _MIME.add_type(_type, _ext)

_ITEM_MEDIA_KINDS = {"image", "file", "video", "voice", "emotion"}
_NESTED_ALIASES = {"doc": "docmsg", "miniprogram": "weapp"}


# ------------------------------------------------------------------- small conversions


def _number(value: Any) -> int | float | None:
    """A finite JSON number, or a numeric string; booleans are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= 40 and _NUMBER.fullmatch(value):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        parsed = float(text)
        return parsed if math.isfinite(parsed) else None
    return None


def _int(value: Any) -> int | None:
    """Integers only: sizes, counts and codes must not silently become fractions."""
    number = _number(value)
    if isinstance(number, float):
        return int(number) if number.is_integer() else None
    return number


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _ms(value: Any, unit: str = "ms") -> int | None:
    """Epoch milliseconds from a source time in ``unit`` ("ms" or "s").

    0, negatives, garbage and far-future values are unknown (None), never 1970. A
    "seconds" value above 10^11 is taken as milliseconds already: one wrapper documents
    chatrecord item times in ms, and the two cannot be confused for real dates.
    """
    number = _number(value)
    if number is None or number <= 0:
        return None
    if unit == "s" and number < _SECONDS_GUARD:
        number = number * 1000
    millis = round(number)
    return millis if 0 < millis <= _MAX_MS else None


def _china_local_ms(value: Any) -> int | None:
    """``collect.create_time`` ("2019-12-11 11:21:22", China local) to epoch ms."""
    if not isinstance(value, str):
        return None
    try:
        naive = datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return _ms(round(naive.replace(tzinfo=_CHINA).timestamp() * 1000))


def _ident(value: Any) -> str | None:
    """A WeCom id: a non-empty string; digit-only userids may arrive as numbers."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _guess_type(*names: Any) -> str | None:
    """MIME type from the first name (file name or bare extension) that gives one."""
    for name in names:
        if isinstance(name, str) and name.strip():
            candidate = name if "." in name else f"x.{name}"
            guessed, _ = _MIME.guess_type(candidate, strict=False)
            if guessed:
                return guessed
    return None


# ----------------------------------------------------------------------- text hygiene


def _copy_tree(value: Any) -> Any:
    """Deep copy of a JSON tree (dicts, lists, scalars): ``copy.deepcopy`` at a fraction of the cost."""
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


def _clean_loaded(text: str, value: Any) -> tuple[Any, bool]:
    """``_clean_surrogates`` of ``value``, parsed from the JSON ``text``, skipping the walk
    when the text holds no surrogate escape and no surrogate (the only ways to get one)."""
    if _SURROGATE_ESCAPE.search(text) is None and _SURROGATE.search(text) is None:
        return value, False
    return _clean_surrogates(value)


def _clean_surrogates(value: Any) -> tuple[Any, bool]:
    """Replace lone surrogates (from escapes like ``\\ud83d``) with U+FFFD everywhere.

    A lone surrogate cannot be encoded as UTF-8, so it would crash any later write of
    the catalog or an export; the replaced copy is what the rest of the parser sees.
    """
    if isinstance(value, str):
        if _SURROGATE.search(value) is None:
            return value, False
        return _SURROGATE.sub("\ufffd", value), True
    if isinstance(value, list):
        items = [_clean_surrogates(v) for v in value]
        return [v for v, _ in items], any(hit for _, hit in items)
    if isinstance(value, dict):
        found = False
        out: dict[str, Any] = {}
        for key, item in value.items():
            clean_key, hit_key = _clean_surrogates(key)
            clean_item, hit_item = _clean_surrogates(item)
            out[clean_key] = clean_item
            found = found or hit_key or hit_item
        return out, found
    return value, False


def _escape_surrogates(text: str) -> str:
    """JSON text with lone surrogates written as ``\\uXXXX`` escapes (valid UTF-8)."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _dumps(value: Any) -> str:
    """Compact JSON as WeCom writes it (nested ``content`` strings use this style)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(text: str) -> Any:
    """``json.loads`` that keeps NaN/Infinity as strings, so content stays strict JSON."""
    return _DECODER.decode(text)


def _is_secret(value: Any) -> bool:
    if value is None or value == "":
        return False
    return not (isinstance(value, str) and (value == _REDACTED or value.startswith("<attachment")))


def _redact(value: Any, *, loose: bool = False) -> Any:
    """Copy of ``value`` with every sdkfileid replaced by a marker.

    Keys named sdkfileid are always redacted, and so are sdkfileids inside strings that
    look like JSON (nested chat-record contents, parseable or not). ``loose`` extends
    this to any string; it is used where text is machine-made (unknown types, extra
    top-level keys), never on the fields people type, which are kept exactly.
    """
    if isinstance(value, dict):
        return {
            k: _REDACTED
            if isinstance(k, str) and k.lower() == "sdkfileid" and _is_secret(v)
            else _redact(v, loose=loose)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v, loose=loose) for v in value]
    if isinstance(value, str) and "sdkfileid" in value.lower():
        return _redact_string(value, loose=loose)
    return value


def _redact_string(text: str, *, loose: bool) -> str:
    """JSON-looking strings are machine-made (nested contents), so they are always
    masked, parsed or not; other strings only in ``loose`` mode."""
    looks_like_json = text.lstrip()[:1] in ("{", "[")
    if looks_like_json:
        try:
            parsed = _loads(text)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, (dict, list)):
            redacted = _redact(parsed, loose=loose)
            return text if redacted == parsed else _dumps(redacted)
    if loose or looks_like_json:
        return _REF_IN_TEXT.sub(lambda m: m.group(1) + _REDACTED, text)
    return text


def _strings(value: Any, *, skip_codes: bool = False) -> list[str]:
    """Every string value in a JSON tree (not keys, not sdkfileids), in document order.

    This is how types we do not model stay searchable. ``skip_codes`` also leaves out
    values of keys ending in "type" (``msg_type: "text"``), enum codes rather than content.
    """
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            name = key.lower() if isinstance(key, str) else ""
            if name == "sdkfileid" or (skip_codes and name.endswith("type")):
                continue
            found.extend(_strings(item, skip_codes=skip_codes))
    elif isinstance(value, list):
        for item in value:
            found.extend(_strings(item, skip_codes=skip_codes))
    elif isinstance(value, str) and value.strip():
        found.append(_redact(value, loose=True))
    return found


def _msgid_scope(msgid: str) -> str:
    if msgid.endswith("_external"):
        return "external"
    if msgid.endswith("_updown_stream"):
        return "updown_stream"
    return "internal"


# ---------------------------------------------------------------- handler machinery


@dataclass
class _Ctx:
    """Where a handler puts what it finds; shared by a message and its nested items.

    ``path`` is the attachment path of the object being handled ("" for the message,
    "item.N" for a nested item); ``record`` holds the message's non-envelope top-level
    keys (``voiceid``, a flattened ``vote``...), empty for nested items.
    """

    path: str = ""
    texts: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)

    def text(self, *values: Any) -> None:
        """Add searchable strings; non-strings and blanks are ignored."""
        self.texts.extend(v for v in values if isinstance(v, str) and v.strip())

    def flag(self, name: str) -> None:
        if name not in self.flags:
            self.flags.append(name)

    def child(self, path: str) -> _Ctx:
        return _Ctx(path, self.texts, self.attachments, self.flags, {})


Handler = Callable[[dict[str, Any], _Ctx], dict[str, Any]]


@dataclass(frozen=True)
class _Spec:
    key: str  # where the content object lives (usually the msgtype, sometimes "info")
    kind: MessageKind
    handler: Handler


def _attach(
    body: dict[str, Any],
    ctx: _Ctx,
    kind: str,
    *,
    size: Any = None,
    file_name: Any = None,
    media_type: str | None = None,
) -> None:
    """Declare the media of ``body`` and put a marker where its sdkfileid was.

    A top-level media message without an sdkfileid still gets its attachment, marked
    ``missing``: the archive must show that the message had media it could not fetch.
    Nested items get one only when they carry an sdkfileid (docs/msgtype-kinds.md).
    """
    ref = body.get("sdkfileid")
    ref = ref if isinstance(ref, str) and ref else None
    if ref is None and ctx.path:
        return
    if _is_secret(body.get("sdkfileid")):
        body["sdkfileid"] = f"<attachment {ctx.path}>" if ctx.path else "<attachment>"
    md5 = body.get("md5sum")
    ctx.attachments.append(
        Attachment(
            path=ctx.path,
            kind=kind,
            file_name=file_name if isinstance(file_name, str) and file_name else None,
            media_type=media_type,
            declared_size=_int(size),
            declared_md5=md5 if isinstance(md5, str) and md5 else None,
            source_ref=ref,
            state=AttachmentState.PENDING if ref else AttachmentState.MISSING,
            reason=None if ref else "record declares no sdkfileid",
        )
    )


def _attach_unmodelled(body: dict[str, Any], ctx: _Ctx, kind: str) -> None:
    """Media in an object we do not model: declared with the usual field names."""
    name = body.get("filename")
    _attach(
        body,
        ctx,
        kind,
        size=body.get("filesize"),
        file_name=name,
        media_type=_guess_type(name, body.get("fileext")),
    )


# ------------------------------------------------------------------------- handlers


def _text(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """Plain text; a quoted reply is only recognisable by its fixed prefix."""
    content = body.get("content")
    ctx.text(content)
    if not isinstance(content, str) or ctx.path:
        return {}
    if not re.match(_QUOTE_PREFIX, content):
        return {}
    quote = _parse_quote(content)
    if quote is None:
        ctx.flag("quote_unparsed")
        return {}
    return {"quote": quote}


def _parse_quote(content: str) -> dict[str, Any] | None:
    """Split "prefix “sender：\\nquoted”\\n------\\nreply" into its parts.

    WeCom gives no msgid of the quoted message, so only its text (and the sender's
    display name when present) can be kept; linking is left to later matching.
    """
    match = _QUOTE_WITH_RULE.match(content) or _QUOTE_NO_RULE.match(content)
    if match is None:
        return None
    quoted = match.group("quoted")
    sender_match = _QUOTE_SENDER.match(quoted)
    return {
        "quoted_sender": sender_match.group("sender") if sender_match else None,
        "quoted_text": sender_match.group("text") if sender_match else quoted,
        "reply": match.group("reply"),
    }


def _markdown(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("content"))
    return {}


def _image(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    _attach(body, ctx, "image", size=body.get("filesize"), media_type="image/jpeg")
    return {}


def _voice(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    _attach(body, ctx, "voice", size=body.get("voice_size"), media_type="audio/amr")
    return {"duration_s": _number(body.get("play_length"))}


def _video(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    _attach(body, ctx, "video", size=body.get("filesize"), media_type="video/mp4")
    return {"duration_s": _number(body.get("play_length"))}


def _file(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    name = body.get("filename")
    ctx.text(name)
    _attach(
        body,
        ctx,
        "file",
        size=body.get("filesize"),
        file_name=name,
        media_type=_guess_type(name, body.get("fileext")),
    )
    return {}


def _emotion(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    emotion_type = _int(body.get("type"))
    media_type = {1: "image/gif", 2: "image/png"}.get(emotion_type or 0)
    _attach(body, ctx, "emotion", size=body.get("imagesize"), media_type=media_type)
    return {
        "emotion_type": emotion_type,
        "width": _int(body.get("width")),
        "height": _int(body.get("height")),
    }


def _link(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("title"), body.get("description"), body.get("link_url"))
    return {}


def _news(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    for item in _dicts(body.get("item")):
        ctx.text(item.get("title"), item.get("description"), item.get("url"))
    return {}


def _card(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("corpname"), body.get("userid"))
    return {}


def _location(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("title"), body.get("address"))
    return {
        "longitude": _number(body.get("longitude")),
        "latitude": _number(body.get("latitude")),
        "zoom": _number(body.get("zoom")),
    }


def _mixed(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    return {"items": _items(body, ctx)}


def _chatrecord(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("title"))
    return {"items": _items(body, ctx)}


def _meeting_voice_call(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    _attach(body, ctx, "call_audio")
    demo_files = []
    for demo in _dicts(body.get("demofiledata")):
        ctx.text(demo.get("filename"))
        demo_files.append(
            {
                "file_name": _str(demo.get("filename")),
                "operator": _ident(demo.get("demooperator")),
                "start_time": _ms(demo.get("starttime"), "s"),
                "end_time": _ms(demo.get("endtime"), "s"),
            }
        )
    shares = [
        {
            "sharer": _ident(share.get("share")),
            "start_time": _ms(share.get("starttime"), "s"),
            "end_time": _ms(share.get("endtime"), "s"),
        }
        for share in _dicts(body.get("sharescreendata"))
    ]
    return {
        "end_time": _ms(body.get("endtime"), "s"),
        "demo_files": demo_files,
        "screen_shares": shares,
    }


def _voiptext(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    return {
        "call_duration_s": _number(body.get("callduration")),
        "invite_type": _int(body.get("invitetype")),
    }


def _voip_doc_share(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    return _file(body, ctx)


def _docmsg(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("title"), body.get("link_url"))
    return {}


def _qydiskfile(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("filename"))
    return {}


def _meeting(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("topic"), body.get("address"), body.get("remarks"))
    return {
        "start_time": _ms(body.get("starttime"), "s"),
        "end_time": _ms(body.get("endtime"), "s"),
        "meeting_type": _int(body.get("meetingtype")),
        "meeting_id": _ident(body.get("meetingid")),
        "status": _int(body.get("status")),
    }


def _meeting_notification(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """The doc table says ``meetingid``, its example ``meeting_id``: accept both."""
    ctx.text(body.get("content"))
    meeting_id = body.get("meeting_id", body.get("meetingid"))
    return {
        "meeting_id": _ident(meeting_id),
        "notification_type": _int(body.get("notification_type")),
    }


def _calendar(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("title"), body.get("place"), body.get("remarks"))
    return {
        "start_time": _ms(body.get("starttime"), "s"),
        "end_time": _ms(body.get("endtime"), "s"),
    }


def _todo(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("title"), body.get("content"))
    return {}


def _vote(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """Some producers flatten the vote fields to the top level; read either place."""
    source = body if "votetitle" in body or "voteitem" in body else ctx.record
    items = source.get("voteitem")
    items = [i for i in items if isinstance(i, str)] if isinstance(items, list) else []
    ctx.text(source.get("votetitle"), *items)
    return {
        "title": _str(source.get("votetitle")),
        "items": items,
        "vote_type": _int(source.get("votetype")),
        "vote_id": _ident(source.get("voteid")),
    }


def _collect(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("title"))
    for detail in _dicts(body.get("details")):
        ctx.text(detail.get("ques"))
    return {
        "create_time": _china_local_ms(body.get("create_time")),
        "create_time_text": _str(body.get("create_time")),
    }


def _redpacket(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("wish"))
    return {
        "packet_type": _int(body.get("type")),
        "total_count": _int(body.get("totalcnt")),
        "total_amount_fen": _int(body.get("totalamount")),
    }


def _weapp(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("title"), body.get("description"), body.get("displayname"))
    return {}


def _sphfeed(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    ctx.text(body.get("sph_name"), body.get("feed_desc"))
    return {"feed_type": _int(body.get("feed_type"))}


def _searchable(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """Types whose fields are only known from third-party models (note, solitaire):
    no normalised fields, but every string stays searchable."""
    ctx.text(*_strings(body, skip_codes=True))
    return {}


def _revoke(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    return {}


def _consent(agree: bool) -> Handler:
    time_key = "agree_time" if agree else "disagree_time"

    def handle(body: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        userid = _ident(body.get("userid"))
        return {"agree": agree, "userid": userid, "time": _ms(body.get(time_key))}

    handle.__doc__ = f"{'agree' if agree else 'disagree'}: consent to archiving, time in ms."
    return handle


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


_K = MessageKind
_SPECS: dict[str, _Spec] = {
    "text": _Spec("text", _K.TEXT, _text),
    "markdown": _Spec("info", _K.TEXT, _markdown),
    "image": _Spec("image", _K.IMAGE, _image),
    "voice": _Spec("voice", _K.VOICE, _voice),
    "video": _Spec("video", _K.VIDEO, _video),
    "file": _Spec("file", _K.FILE, _file),
    "emotion": _Spec("emotion", _K.EMOTION, _emotion),
    "link": _Spec("link", _K.LINK, _link),
    "news": _Spec("info", _K.LINK, _news),
    "card": _Spec("card", _K.CARD, _card),
    "location": _Spec("location", _K.LOCATION, _location),
    "mixed": _Spec("mixed", _K.MIXED, _mixed),
    "chatrecord": _Spec("chatrecord", _K.CHAT_RECORD, _chatrecord),
    "meeting_voice_call": _Spec("meeting_voice_call", _K.CALL, _meeting_voice_call),
    "voiptext": _Spec("info", _K.CALL, _voiptext),
    "voip_doc_share": _Spec("voip_doc_share", _K.DOCUMENT, _voip_doc_share),
    "docmsg": _Spec("doc", _K.DOCUMENT, _docmsg),
    "qydiskfile": _Spec("info", _K.DOCUMENT, _qydiskfile),
    "meeting": _Spec("meeting", _K.MEETING, _meeting),
    "meeting_notification": _Spec("info", _K.MEETING, _meeting_notification),
    "calendar": _Spec("calendar", _K.CALENDAR, _calendar),
    "todo": _Spec("todo", _K.TODO, _todo),
    "vote": _Spec("vote", _K.VOTE, _vote),
    "collect": _Spec("collect", _K.FORM, _collect),
    "solitaire": _Spec("info", _K.FORM, _searchable),
    "redpacket": _Spec("redpacket", _K.RED_PACKET, _redpacket),
    "external_redpacket": _Spec("redpacket", _K.RED_PACKET, _redpacket),
    "weapp": _Spec("weapp", _K.MINI_PROGRAM, _weapp),
    "sphfeed": _Spec("sphfeed", _K.CHANNELS, _sphfeed),
    "note": _Spec("info", _K.NOTE, _searchable),
    "revoke": _Spec("revoke", _K.RECALL, _revoke),
    "agree": _Spec("agree", _K.CONSENT, _consent(True)),
    "disagree": _Spec("disagree", _K.CONSENT, _consent(False)),
}


# ------------------------------------------------------------------- nested items


def _items(body: dict[str, Any], ctx: _Ctx) -> list[dict[str, Any]]:
    """Nested items of chatrecord/mixed: each parsed, its media declared at item.N.

    ``body`` is the copy that ends up in ``content`` as the original object; an item's
    ``content`` string that held an sdkfileid is rewritten there with the marker.
    """
    raw_items = body.get("item")
    if raw_items is None:
        return []
    if not isinstance(raw_items, list):
        ctx.flag("malformed_content")
        return []
    parsed_items = []
    for index, raw in enumerate(raw_items):
        path = f"{ctx.path}.item.{index}" if ctx.path else f"item.{index}"
        if not isinstance(raw, dict):
            ctx.flag("malformed_content")
            raw_items[index] = _redact(raw, loose=True)
            parsed_items.append({"type": None, "time": None, "content": raw_items[index]})
            continue
        parsed_items.append(_item(raw, ctx.child(path)))
    return parsed_items


def _item(raw: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    item_type = _str(raw.get("type"))
    original = raw.get("content")
    content, broken = _nested_content(raw, ctx)
    fields: dict[str, Any] = {}
    if isinstance(content, dict):
        fields = _handle_nested(item_type, content, ctx)
        if isinstance(original, str) and "sdkfileid" in original.lower():
            raw["content"] = _dumps(content)
    else:
        ctx.text(*_strings(content))
        if broken and isinstance(original, str):
            _attach_from_broken(original, item_type, ctx)
    item: dict[str, Any] = {"type": item_type, "time": _ms(raw.get("msgtime"), "s")}
    if "from_chatroom" in raw:
        item["from_chatroom"] = _bool(raw.get("from_chatroom"))
    item["content"] = content
    if any(v is not None and v != [] for v in fields.values()):
        item["fields"] = fields
    return item


def _nested_content(raw: dict[str, Any], ctx: _Ctx) -> tuple[Any, bool]:
    """Parse an item's ``content`` (a JSON *string*); on failure keep it raw and flag.

    Returns the content and whether it was unparseable. A broken string is kept (with
    any sdkfileid value masked, here and in the original) so nothing is lost.
    """
    value = raw.get("content")
    if not isinstance(value, str):
        return _copy_tree(value), False
    try:
        parsed = _loads(value)
    except (ValueError, RecursionError):
        ctx.flag("invalid_nested_content")
        masked = _redact(value, loose=True)
        raw["content"] = masked
        return masked, True
    parsed, has_surrogates = _clean_loaded(value, parsed)
    if has_surrogates:
        ctx.flag("invalid_text")
    return parsed, False


def _attach_from_broken(text: str, item_type: str | None, ctx: _Ctx) -> None:
    """Best effort for an unparseable item that names an sdkfileid: media expire within
    days, so the reference is declared now rather than after a parser fix."""
    match = _REF_IN_TEXT.search(text)
    if match is None:
        return
    base = _base_type(item_type)
    kind = base if base in _ITEM_MEDIA_KINDS else "file"
    _attach({"sdkfileid": match.group(2).replace("\\/", "/")}, ctx, kind)


def _base_type(item_type: str | None) -> str:
    """"ChatRecordFile" -> "file", "image" -> "image", "ChatRecordDoc" -> "docmsg"."""
    base = (item_type or "").strip().lower()
    if base.startswith("chatrecord") and base != "chatrecord":
        base = base[len("chatrecord") :]
    return _NESTED_ALIASES.get(base, base)


def _handle_nested(item_type: str | None, content: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """Dispatch a nested item by its type ("ChatRecordFile", "image"...) to the same
    handlers as top-level messages; media of unmodelled item types still get fetched."""
    base = _base_type(item_type)
    spec = _SPECS.get(base)
    if spec is None:
        ctx.text(*_strings(content))
        fields: dict[str, Any] = {}
    else:
        fields = spec.handler(content, ctx)
    if _is_secret(content.get("sdkfileid")):
        kind = base if base in _ITEM_MEDIA_KINDS else "file"
        _attach_unmodelled(content, ctx, kind)
    return fields


# ------------------------------------------------------------------------ top level


def parse_message(plaintext: bytes, *, source: str, seq: int | None = None) -> Message:
    """Turn one decrypted WeCom record into a :class:`Message`.

    Raises :class:`ParseError` only when the record is unusable (not a JSON object, no
    msgid) -- and never anything else, whatever the input: an unexpected failure is
    reported as a ParseError so the caller quarantines the record instead of stopping.
    """
    try:
        return _parse(plaintext, source, seq)
    except ParseError:
        raise
    except RecursionError:
        raise ParseError("record is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - the contract is "ParseError or a Message"
        raise ParseError(f"parser failure ({type(exc).__name__})") from None


def _parse(plaintext: bytes, source: str, seq: int | None) -> Message:
    flags: list[str] = []
    text = _decode(plaintext, flags)
    original = _load_object(text)
    record, broken = _clean_loaded(text, original)
    extra: dict[str, Any] = {}
    if broken:
        flags.append("invalid_text")
        extra["raw_json"] = _escape_surrogates(_dumps(_redact(original, loose=True)))
    msgid = _ident(record.get("msgid"))
    if msgid is None:
        raise ParseError("record has no msgid")
    if record.get("action") == "switch":
        message = _parse_switch(record, msgid, source, seq)
    else:
        message = _parse_send(record, msgid, source, seq)
    message.content.update(extra)
    message.flags = flags + [f for f in message.flags if f not in flags]
    return message


def _decode(plaintext: bytes, flags: list[str]) -> str:
    """UTF-8 text of the record; invalid bytes become U+FFFD and are flagged."""
    if not isinstance(plaintext, (bytes, bytearray, memoryview)):
        raise ParseError(f"plaintext is {type(plaintext).__name__}, not bytes")
    data = bytes(plaintext)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        flags.extend(["invalid_utf8", "invalid_text"])
    return text.removeprefix("\ufeff")


def _load_object(text: str) -> dict[str, Any]:
    try:
        value = _loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except ValueError:
        raise ParseError("not valid JSON (number out of range)") from None
    except RecursionError:
        raise ParseError("JSON is nested too deeply") from None
    if not isinstance(value, dict):
        raise ParseError(f"JSON is a {type(value).__name__}, not an object")
    return value


def _parse_switch(record: dict[str, Any], msgid: str, source: str, seq: int | None) -> Message:
    """A switch record (the user switched corp accounts) has its own shape: user, time."""
    user = _ident(record.get("user"))
    rest = _redact({k: v for k, v in record.items() if k not in ("msgid", "action")}, loose=True)
    time = _ms(record.get("time"))
    return Message(
        source=source,
        msgid=msgid,
        conversation_id=f"switch:{user or 'unknown'}",
        conversation_kind="system",  # an account event, not a chat: listed apart from them
        kind=MessageKind.SYSTEM,
        source_type="switch",
        action="switch",
        sender=user,
        sent_at=time,
        seq=seq,
        content={"switch": rest, "time": time, "msgid_scope": _msgid_scope(msgid)},
    )


def _parse_send(record: dict[str, Any], msgid: str, source: str, seq: int | None) -> Message:
    msgtype = _str(record.get("msgtype")) or ""
    action = record.get("action")
    is_recall = action == "recall" or msgtype == "revoke"
    spec = _SPECS["revoke"] if is_recall else _SPECS.get(msgtype)
    sender = _ident(record.get("from"))
    recipients = _recipients(record.get("tolist"))
    conversation_id, conversation_kind = _conversation(record.get("roomid"), sender, recipients)
    rest = {k: v for k, v in record.items() if k not in _ENVELOPE}
    ctx = _Ctx(record=rest)
    if spec is None:
        kind, content = MessageKind.OTHER, _other(rest, msgtype, ctx)
    else:
        kind, content = spec.kind, _known(spec, rest, msgtype, ctx)
    content["msgid_scope"] = _msgid_scope(msgid)
    if action not in (None, "send", "recall"):
        content["source_action"] = _redact(action, loose=True)
    revoke = content.get("revoke")
    return Message(
        source=source,
        msgid=msgid,
        conversation_id=conversation_id,
        conversation_kind=conversation_kind,
        kind=kind,
        source_type=msgtype,
        action="recall" if is_recall else "send",
        sender=sender,
        recipients=recipients,
        sent_at=_ms(record.get("msgtime")),
        seq=seq,
        text="\n".join(ctx.texts),
        content=_redact(content),
        attachments=ctx.attachments,
        recalls=_ident(revoke.get("pre_msgid")) if is_recall and isinstance(revoke, dict) else None,
        flags=ctx.flags,
    )


def _recipients(tolist: Any) -> list[str]:
    if not isinstance(tolist, list):
        return []
    return [r for r in (_ident(v) for v in tolist) if r is not None]


def _conversation(roomid: Any, sender: str | None, recipients: list[str]) -> tuple[str, str]:
    """Group chats are keyed by roomid; 1:1 (and roomless call records) by the sorted
    participants, so both directions of a chat land in one conversation."""
    room = _ident(roomid)
    if room is not None:
        return room, "group"
    members = sorted({m for m in [sender, *recipients] if m})
    return "|".join(members) or "unknown", "direct"


def _known(spec: _Spec, rest: dict[str, Any], msgtype: str, ctx: _Ctx) -> dict[str, Any]:
    """Content of a modelled type: the normalised fields, the original object under its
    key (under "original" where a normalised field has that name: ``agree``), and any
    other top-level keys (``voiceid``...) kept as they are."""
    key = next((k for k in (spec.key, msgtype, "info") if k and k in rest), spec.key)
    raw_body = rest.get(key)
    if isinstance(raw_body, dict):
        body: Any = _copy_tree(raw_body)
        fields = spec.handler(body, ctx)
    else:
        ctx.flag("malformed_content")
        ctx.text(*_strings(raw_body))
        fields = spec.handler({}, ctx)
        body = _redact(raw_body, loose=True) if key in rest else None
    content: dict[str, Any] = dict(fields)
    if body is not None:
        # consent's normalised "agree" flag takes the key of its own original object
        content["original" if key in fields else key] = body
    for name, value in rest.items():
        if name != key:
            slot = name if name not in content else f"record.{name}"
            content.setdefault(slot, _redact(value, loose=True))
    return content


def _other(rest: dict[str, Any], msgtype: str, ctx: _Ctx) -> dict[str, Any]:
    """Unknown or future types: kept raw (secrets masked) and searchable by any string.

    Media cannot wait for a parser update (WeCom expires it within days), so an
    sdkfileid in the type's own object is still declared as a file attachment.
    """
    body = rest.get(msgtype) if msgtype else None
    if isinstance(body, dict) and _is_secret(body.get("sdkfileid")):
        body = _copy_tree(body)
        _attach_unmodelled(body, ctx, "file")
        rest = {**rest, msgtype: body}
    ctx.text(*_strings(rest))
    return _redact(rest, loose=True)
