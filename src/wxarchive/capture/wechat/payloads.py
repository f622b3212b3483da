"""WeChat message bodies (text or XML) → kind, searchable text and normalised content.

The same payloads appear on every platform (fact sheet §5); only where the base type, the
app-message subtype and the group sender are stored differs, and that is the readers'
business. Input is untrusted: XML is parsed with ``defusedxml`` (no DTDs, no entities), an
``<?xml?>`` prologue and trailing NULs are stripped, and a document that is not well formed
is recovered tag by tag with a small regex reader rather than dropped (flag
``xml_recovered``). Nothing here raises on a strange body: an unknown type becomes
``other`` with the body kept as text.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from wxarchive.model import Attachment, AttachmentState, MessageKind

TEXT, IMAGE, VOICE, CARD, VIDEO, EMOTION, LOCATION, APP, VOIP, SHORT_VIDEO = 1, 3, 34, 42, 43, 47, 48, 49, 50, 62
SYSTEM, SYSMSG = 10000, 10002

BASE_KINDS = {
    TEXT: MessageKind.TEXT, IMAGE: MessageKind.IMAGE, VOICE: MessageKind.VOICE, CARD: MessageKind.CARD,
    VIDEO: MessageKind.VIDEO, SHORT_VIDEO: MessageKind.VIDEO, EMOTION: MessageKind.EMOTION,
    LOCATION: MessageKind.LOCATION, VOIP: MessageKind.CALL, 52: MessageKind.CALL, 53: MessageKind.CALL,
    37: MessageKind.SYSTEM, 40: MessageKind.SYSTEM, 66: MessageKind.CARD, 9999: MessageKind.SYSTEM,
    SYSTEM: MessageKind.SYSTEM,
}
BASE_NAMES = {
    TEXT: "text", IMAGE: "image", VOICE: "voice", 37: "friend_request", 40: "possible_friend", CARD: "card",
    VIDEO: "video", EMOTION: "sticker", LOCATION: "location", APP: "app", VOIP: "voip", 51: "status_notify",
    52: "voip_notify", 53: "voip_invite", SHORT_VIDEO: "short_video", 66: "wecom_card", 9999: "sys_notice",
    SYSTEM: "system", SYSMSG: "sysmsg",
}
APP_KINDS = {
    1: MessageKind.TEXT, 3: MessageKind.LINK, 4: MessageKind.LINK, 5: MessageKind.LINK, 6: MessageKind.FILE,
    7: MessageKind.LINK, 8: MessageKind.EMOTION, 17: MessageKind.LOCATION, 19: MessageKind.CHAT_RECORD,
    24: MessageKind.NOTE, 33: MessageKind.MINI_PROGRAM, 36: MessageKind.MINI_PROGRAM, 40: MessageKind.CHAT_RECORD,
    50: MessageKind.CHANNELS, 51: MessageKind.CHANNELS, 53: MessageKind.FORM, 57: MessageKind.TEXT,
    62: MessageKind.SYSTEM, 63: MessageKind.CHANNELS, 68: MessageKind.LINK, 74: MessageKind.FILE,
    76: MessageKind.LINK, 87: MessageKind.TEXT, 88: MessageKind.CHANNELS, 92: MessageKind.LINK,
    2000: MessageKind.RED_PACKET, 2001: MessageKind.RED_PACKET, 2003: MessageKind.RED_PACKET,
}
APP_NAMES = {
    1: "app_text", 3: "music", 4: "link", 5: "link", 6: "file", 7: "app", 8: "gif", 17: "live_location",
    19: "chat_record", 24: "note", 33: "mini_program", 36: "mini_program", 40: "favorites", 50: "channels_card",
    51: "channels", 53: "solitaire", 57: "quote", 62: "pat", 63: "channels_live", 68: "link", 74: "file_uploading",
    76: "music", 87: "announcement", 88: "channels_live", 92: "music", 2000: "transfer", 2001: "red_packet",
    2003: "red_packet_cover",
}
# dataitem@datatype inside a chat record (fact sheet §5.4)
ITEM_KINDS = {1: "text", 2: "image", 3: "voice", 4: "video", 5: "link", 6: "location", 8: "file",
              17: "chat_record", 19: "mini_program", 22: "channels", 23: "channels_live", 32: "music", 37: "sticker"}
STICKER_NOT_KEPT = ("a sticker is fetched from WeChat's servers by its md5 (kept in content); the device's sticker "
                    "cache is not read")
RECORD_ITEM_NOT_KEPT = "the files of a forwarded chat record live in the device's record cache, which is not read"
MAX_RECORD_DEPTH = 8


@dataclass
class Parsed:
    kind: MessageKind
    source_type: str
    text: str = ""
    content: dict[str, Any] = field(default_factory=dict)
    attachments: list[Attachment] = field(default_factory=list)
    reply_to: str | None = None
    recalls: str | None = None
    action: str = "send"
    flags: list[str] = field(default_factory=list)


# ---- XML, defensively ------------------------------------------------------------------

_PROLOGUE = re.compile(r"^\s*<\?xml[^>]*\?>\s*", re.S)
_TAG = re.compile(r"<(?P<tag>[A-Za-z_][\w.-]*)(?P<attrs>[^<>]*?)(?:/>|>(?P<body>.*?)</(?P=tag)\s*>)", re.S)
_ATTR = re.compile(r'([A-Za-z_][\w.-]*)\s*=\s*(?:"([^"]*)"|\'([^\']*)\')')
_CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.S)


def parse_xml(body: str) -> tuple[Element | None, bool]:
    """(root, recovered): a well-formed document parsed safely, else a best-effort tree."""
    doc = _PROLOGUE.sub("", body.strip("\x00").strip())
    if not doc.startswith("<"):
        return None, False
    try:
        return fromstring(doc), False
    except (ParseError, DefusedXmlException, ValueError):
        pass
    root = Element("recovered")
    _recover(doc, root, 0)
    return (root if len(root) else None), True


def _recover(doc: str, parent: Element, depth: int) -> None:
    for m in _TAG.finditer(doc):
        el = Element(m.group("tag"), {a: (v1 if v1 is not None else v2) for a, v1, v2 in _ATTR.findall(m.group("attrs") or "")})
        inner = m.group("body") or ""
        if depth < 20 and "<" in _CDATA.sub("", inner):
            _recover(inner, el, depth + 1)
        el.text = html.unescape(_CDATA.sub(lambda c: c.group(1), inner)) if not len(el) else None
        parent.append(el)


def _t(el: Element | None, path: str) -> str | None:
    if el is None:
        return None
    found = el.find(path)
    if found is None or found.text is None:
        return None
    v = found.text.strip()
    return v or None


def _int(v: Any) -> int | None:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return None


def _find_any(root: Element, tag: str) -> Element | None:
    return root if root.tag == tag else root.find(f".//{tag}")


# ---- one body ----------------------------------------------------------------------------


def parse_body(base: int, sub: int | None, body: str) -> Parsed:
    """A message body of WeChat type ``base`` (app subtype ``sub`` when the platform stores it)."""
    if base == APP:
        return _app(sub, body)
    if base == SYSMSG or (base == SYSTEM and body.lstrip().startswith("<")):
        return _sysmsg(base, body)
    kind = BASE_KINDS.get(base, MessageKind.OTHER)
    name = BASE_NAMES.get(base, f"type_{base}")
    p = Parsed(kind, name)
    if base == TEXT or base == SYSTEM:
        p.text = body
        return p
    root, recovered = parse_xml(body)
    if recovered:
        p.flags.append("xml_recovered")
    if root is None:
        p.text = body if kind is MessageKind.OTHER else ""
        if kind is MessageKind.OTHER:
            p.content["body"] = body
        return p
    handler = _BASE_HANDLERS.get(base)
    if handler:
        handler(root, p)
    else:
        p.content["body"] = body
        p.text = " ".join(t.strip() for t in root.itertext() if t.strip())
    return p


def _image(root: Element, p: Parsed) -> None:
    img = _find_any(root, "img")
    a = img.attrib if img is not None else {}
    p.content.update({k: a[k] for k in ("md5", "length", "hdlength") if a.get(k)})
    p.attachments.append(_declared("image", md5=a.get("md5"), size=_int(a.get("length")), media_type="image/jpeg"))


def _voice(root: Element, p: Parsed) -> None:
    v = _find_any(root, "voicemsg")
    a = v.attrib if v is not None else {}
    if _int(a.get("voicelength")) is not None:
        p.content["duration_ms"] = _int(a.get("voicelength"))


def _video(root: Element, p: Parsed) -> None:
    v = _find_any(root, "videomsg")
    a = v.attrib if v is not None else {}
    p.content.update({k: a[k] for k in ("md5", "playlength", "length") if a.get(k)})
    p.attachments.append(_declared("video", md5=a.get("md5"), size=_int(a.get("length")), media_type="video/mp4"))


def _emoji(root: Element, p: Parsed) -> None:
    e = _find_any(root, "emoji")
    a = e.attrib if e is not None else {}
    p.content.update({k: a[k] for k in ("md5", "cdnurl", "len") if a.get(k)})
    p.attachments.append(_declared("emotion", md5=a.get("md5"), size=_int(a.get("len")), missing=STICKER_NOT_KEPT))


def _location(root: Element, p: Parsed) -> None:
    loc = _find_any(root, "location")
    a = loc.attrib if loc is not None else {}
    p.content.update({"latitude": a.get("x"), "longitude": a.get("y"), "label": a.get("label"),
                      "poiname": a.get("poiname")})
    p.text = " ".join(v for v in (a.get("poiname"), a.get("label")) if v)


def _card(root: Element, p: Parsed) -> None:
    a = root.attrib
    p.content.update({k: a[k] for k in ("username", "nickname", "alias", "province", "city") if a.get(k)})
    p.text = " ".join(v for v in (a.get("nickname"), a.get("alias")) if v)


def _voip(root: Element, p: Parsed) -> None:
    msg = _t(root, ".//VoIPBubbleMsg/msg") or " ".join(t.strip() for t in root.itertext() if t.strip())
    p.text = msg or ""
    p.content["summary"] = msg


_BASE_HANDLERS = {IMAGE: _image, VOICE: _voice, VIDEO: _video, SHORT_VIDEO: _video, EMOTION: _emoji,
                  LOCATION: _location, CARD: _card, 66: _card, VOIP: _voip}


def _declared(kind: str, md5: str | None = None, size: int | None = None, media_type: str | None = None,
              name: str | None = None, missing: str | None = None) -> Attachment:
    """An attachment the message declares: pending until the ingest looks for its file in the
    account folder, or missing from the start with the reason ``missing``."""
    return Attachment(path="", kind=kind, file_name=name, media_type=media_type, declared_size=size,
                      declared_md5=(md5.lower() if md5 else None),
                      state=AttachmentState.MISSING if missing else AttachmentState.PENDING, reason=missing)


# ---- app messages (base 49) ---------------------------------------------------------------


def _app(sub: int | None, body: str) -> Parsed:
    root, recovered = parse_xml(body)
    appmsg = _find_any(root, "appmsg") if root is not None else None
    declared = _int(_t(appmsg, "type"))
    if declared is None:
        declared = sub  # Windows 3.x / 4.x also store it outside the XML
    p = Parsed(APP_KINDS.get(declared, MessageKind.OTHER) if declared is not None else MessageKind.OTHER,
               f"app:{APP_NAMES.get(declared, declared)}")
    if recovered:
        p.flags.append("xml_recovered")
    if sub is not None and declared is not None and sub != declared:
        p.content["stored_subtype"] = sub
    if appmsg is None:
        p.flags.append("app_unparsed")
        p.text = body
        p.content["body"] = body
        return p
    title, des, url = _t(appmsg, "title"), _t(appmsg, "des"), _t(appmsg, "url")
    p.content["app_type"] = declared
    for k, v in (("title", title), ("description", des), ("url", url),
                 ("source_name", _t(appmsg, "sourcedisplayname")), ("app_id", appmsg.get("appid") or None)):
        if v:
            p.content[k] = v
    handler = _APP_HANDLERS.get(declared)
    if handler:
        handler(appmsg, p)
    else:
        p.text = " ".join(v for v in (title, des) if v)
        if declared not in APP_KINDS:
            p.content["body"] = body
    return p


def _app_file(appmsg: Element, p: Parsed) -> None:
    title = _t(appmsg, "title")
    size = _int(_t(appmsg, "appattach/totallen"))
    ext = _t(appmsg, "appattach/fileext")
    p.content.update({"file_name": title, "size": size, "ext": ext})
    p.text = title or ""
    p.attachments.append(_declared("file", md5=_t(appmsg, "md5"), size=size, name=title))


def _app_quote(appmsg: Element, p: Parsed) -> None:
    ref = appmsg.find("refermsg")
    reply = _t(appmsg, "title") or ""
    p.text = reply
    if ref is None:
        p.flags.append("quote_unparsed")
        return
    qtype = _int(_t(ref, "type"))
    raw = _t(ref, "content") or ""
    quoted_text = raw
    if qtype is not None and qtype != TEXT and raw.lstrip().startswith("<"):
        inner = parse_body(qtype, None, raw)  # quoted non-text messages carry an (escaped) XML document
        quoted_text = inner.text or f"[{inner.source_type}]"
    elif qtype is not None and qtype != TEXT and not raw:
        quoted_text = f"[{BASE_NAMES.get(qtype, qtype)}]"
    svrid = _t(ref, "svrid")
    p.content["quote"] = {
        "quoted_sender": _t(ref, "displayname"),
        "quoted_sender_id": _t(ref, "chatusr") or _t(ref, "fromusr"),
        "quoted_text": quoted_text,
        "quoted_type": qtype,
        "quoted_msgid": svrid,
        "reply": reply,
    }
    if svrid and svrid.isdigit() and int(svrid):
        p.reply_to = svrid


def _app_record(appmsg: Element, p: Parsed) -> None:
    raw = _t(appmsg, "recorditem") or ""
    title = _t(appmsg, "title")
    items = _record_items(raw, 0, p)
    p.content["items"] = items
    parts = [title or ""]
    _record_text(items, parts)
    p.text = "\n".join(x for x in parts if x)


def _record_items(doc: str, depth: int, p: Parsed) -> list[dict[str, Any]]:
    root, recovered = parse_xml(doc)
    if recovered and "xml_recovered" not in p.flags:
        p.flags.append("xml_recovered")
    if root is None:
        return []
    info = _find_any(root, "recordinfo") or root
    out = []
    dl = info.find("datalist")  # nested records' items are read through their own dataitem
    for n, item in enumerate(x for x in (list(dl) if dl is not None else info.iter("dataitem")) if x.tag == "dataitem"):
        dtype = _int(item.get("datatype"))
        d: dict[str, Any] = {
            "index": n, "kind": ITEM_KINDS.get(dtype, f"type_{dtype}"), "sender": _t(item, "sourcename"),
            "time": _t(item, "sourcetime"), "text": _t(item, "datadesc"), "title": _t(item, "datatitle"),
        }
        ts = _int(_t(item, "srcMsgCreateTime"))
        if ts:
            d["sent_at"] = ts * 1000
        if dtype == 8:
            d["file_name"] = _t(item, "datatitle")
            d["size"] = _int(_t(item, "datasize"))
            p.attachments.append(_declared("file", md5=_t(item, "fullmd5"), size=d["size"], name=d["file_name"],
                                          missing=RECORD_ITEM_NOT_KEPT))
            p.attachments[-1].path = f"item.{n}"
        elif dtype in (2, 4):
            p.attachments.append(_declared(ITEM_KINDS[dtype], md5=_t(item, "fullmd5"), missing=RECORD_ITEM_NOT_KEPT))
            p.attachments[-1].path = f"item.{n}"
        if dtype == 17:
            nested = _t(item, "recordxml")
            inner = item.find("recordxml")
            if nested is None and inner is not None and len(inner):
                from xml.etree.ElementTree import tostring

                nested = tostring(inner[0], encoding="unicode")
            if depth + 1 < MAX_RECORD_DEPTH and nested:
                d["items"] = _record_items(nested, depth + 1, p)
            elif nested:
                p.flags.append("record_too_deep")
        out.append({k: v for k, v in d.items() if v is not None})
    return out


def _record_text(items: list[dict[str, Any]], parts: list[str]) -> None:
    for it in items:
        line = " ".join(v for v in (it.get("title"), it.get("text")) if v)
        if line:
            parts.append(f"{it['sender']}: {line}" if it.get("sender") else line)
        _record_text(it.get("items", []), parts)


def _app_pay(appmsg: Element, p: Parsed) -> None:
    info = appmsg.find("wcpayinfo")
    fields = {}
    for k in ("paysubtype", "feedesc", "pay_memo", "transferid", "payer_username", "receiver_username",
              "sendertitle", "scenetext", "begintransfertime"):
        v = _t(info, k)
        if v:
            fields[k] = v
    p.content["payment"] = fields
    p.text = " ".join(v for v in (_t(appmsg, "title"), fields.get("feedesc"), fields.get("pay_memo"),
                                  fields.get("sendertitle")) if v)


def _app_pat(appmsg: Element, p: Parsed) -> None:
    p.action = "pat"
    p.text = _t(appmsg, "title") or ""


def _app_mini(appmsg: Element, p: Parsed) -> None:
    w = appmsg.find("weappinfo")
    p.content["mini_program"] = {k: v for k in ("username", "appid", "pagepath") if (v := _t(w, k))}
    p.text = " ".join(v for v in (_t(appmsg, "title"), _t(appmsg, "sourcedisplayname"), _t(appmsg, "des")) if v)


def _app_channels(appmsg: Element, p: Parsed) -> None:
    feed = appmsg.find("finderFeed")
    fields = {k: v for k in ("nickname", "desc", "objectId") if (v := _t(feed, k))}
    p.content["channels"] = fields
    p.text = " ".join(v for v in (_t(appmsg, "title"), fields.get("nickname"), fields.get("desc")) if v)


_APP_HANDLERS = {6: _app_file, 74: _app_file, 57: _app_quote, 19: _app_record, 40: _app_record,
                 2000: _app_pay, 2001: _app_pay, 2003: _app_pay, 62: _app_pat, 33: _app_mini, 36: _app_mini,
                 50: _app_channels, 51: _app_channels, 63: _app_channels, 88: _app_channels}


# ---- system messages ------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$(\w+)\$")


def _sysmsg(base: int, body: str) -> Parsed:
    root, recovered = parse_xml(body)
    p = Parsed(MessageKind.SYSTEM, BASE_NAMES.get(base, f"type_{base}"))
    if recovered:
        p.flags.append("xml_recovered")
    if root is None:
        p.text = body
        return p
    st = root.get("type") or (root.find("sysmsg").get("type") if root.find("sysmsg") is not None else None)
    p.source_type = f"sysmsg:{st}" if st else p.source_type
    if st == "revokemsg":
        r = _find_any(root, "revokemsg")
        target = _t(r, "newmsgid") or _t(r, "msgid")
        p.kind, p.action = MessageKind.RECALL, "recall"
        p.text = _t(r, "replacemsg") or _t(r, "content") or ""
        p.content["revoke"] = {"session": _t(r, "session"), "target": target, "oldmsgid": _t(r, "oldmsgid")}
        if target and target.isdigit() and int(target):
            p.recalls = target
        else:
            p.flags.append("recall_target_unknown")
    elif st == "pat":
        pat = _find_any(root, "pat")
        p.action = "pat"
        who = {k: _t(pat, k) for k in ("fromusername", "pattedusername", "chatusername")}
        template = _t(pat, "template") or ""
        p.text = re.sub(r"\$\{(\w+)\}", lambda m: m.group(1), template)
        p.content["pat"] = {k: v for k, v in who.items() if v}
    elif st == "sysmsgtemplate":
        t = _find_any(root, "content_template")
        template = _t(t, "template") or ""
        names: dict[str, str] = {}
        for link in (t.iter("link") if t is not None else []):
            members = [(_t(m, "nickname") or _t(m, "username") or "") for m in link.iter("member")]
            names[link.get("name", "")] = "、".join(x for x in members if x)
        p.text = _PLACEHOLDER.sub(lambda m: names.get(m.group(1), m.group(0)), template)
        p.content["template_names"] = names
    else:
        p.text = " ".join(t.strip() for t in root.itertext() if t.strip())
        p.content["body"] = body
    return p
