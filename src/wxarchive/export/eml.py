"""EML (RFC 5322) for enterprise archives: one message per conversation-day (default) or per
chat message, as Global Relay, Smarsh, Proofpoint and Purview journaling ingest them.

Each EML: ``From`` the participant who opened that day's conversation, ``To`` the others,
``Date`` its first message, a deterministic ``Message-ID`` (a hash of the chat messages it
carries: re-sending the same content gives the same id, which receiving archives dedupe
on), ``Subject`` naming the chat and the day, the headers archives key on
(``X-GlobalRelay-MsgType``, ``Auto-Submitted``, ``Precedence``, ``X-Wxarchive-*`` with the
source, conversation and message ids), a text/plain transcript with a text/html
alternative, and the stored media attached. Messages over 200 MB are cut into parts.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from datetime import datetime
from zoneinfo import ZoneInfo
from pathlib import Path
from typing import Any

from wxarchive.export.conversations import (
    Directory, Slice, link_quotes, media_extension, members, safe_name, select_for_export, slices,
)
from wxarchive.export.manifest import prepare_out, write_manifest
from wxarchive.search.query import Query

FORMAT = "wxarchive-export-eml/1"
MAX_BYTES = 200 * 1024 * 1024  # Global Relay takes up to 250 MB per message
PRODUCT = {"wecom": "WeCom", "wechat": "WeChat"}


@dataclass
class EmlResult:
    out: Path
    messages: int = 0
    emls: int = 0
    attachments: int = 0
    file_list: list[dict[str, Any]] = field(default_factory=list)


def _mailbox(directory: Directory, source: str, pid: str | None, platform: str) -> Address:
    p = directory.person(source, pid)
    return Address(display_name=p.display, username=safe_name(p.id, limit=64), domain=f"{safe_name(platform)}.invalid")


def message_id(sl: Slice) -> str:
    h = hashlib.sha256("\0".join([sl.conversation.source, sl.conversation.id,
                                  *sorted(m["msgid"] for m in sl.messages)]).encode()).hexdigest()
    return f"<{h[:40]}@eml.wxarchive.invalid>"


def build_eml(sl: Slice, directory: Directory, archive_id: str, read_blob: Callable[[str], bytes],
              tz: str = "UTC") -> EmailMessage:
    conv = sl.conversation
    link_quotes(sl, directory)
    ids = members(sl)
    title = directory.title(conv, ids)
    first = next((m for m in sl.messages if m["sender"]), sl.messages[0])
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _mailbox(directory, conv.source, first["sender"], conv.platform)
    others = [i for i in ids if i != first["sender"]] or ids
    msg["To"] = [_mailbox(directory, conv.source, i, conv.platform) for i in others]
    day = sl.day or (sl.messages[0]["sent_at"] or "")[:10]
    msg["Subject"] = f"[{PRODUCT.get(conv.platform, conv.platform)}] {title} {day}".strip() + (
        f" (part {sl.part})" if sl.part > 1 and sl.day is None else "")
    stamp = next((m["sent_at_ms"] for m in sl.messages if m["sent_at_ms"] is not None), None)
    zone = ZoneInfo(tz)  # the Date header in the zone the body's times are shown in
    msg["Date"] = format_datetime(datetime.fromtimestamp(stamp / 1000, zone)) if stamp is not None else \
        format_datetime(datetime.now(zone))
    msg["Message-ID"] = message_id(sl)
    msg["X-GlobalRelay-MsgType"] = PRODUCT.get(conv.platform, conv.platform)
    msg["Auto-Submitted"] = "auto-generated"
    msg["Precedence"] = "bulk"
    msg["X-Wxarchive-Archive-Id"] = archive_id
    msg["X-Wxarchive-Source"] = conv.source
    msg["X-Wxarchive-Conversation-Id"] = conv.id
    msg["X-Wxarchive-Conversation-Kind"] = conv.kind
    msg["X-Wxarchive-Message-Count"] = str(len(sl.messages))
    msg["X-Wxarchive-Msgids"] = " ".join(m["msgid"] for m in sl.messages)
    lines, rows = [], []
    recalled = {m["recalls"]: m for m in sl.messages if m["recalls"]}
    for m in sl.messages:
        who = directory.person(conv.source, m["sender"], m["sent_at_ms"])
        note = " [recalled]" if m["msgid"] in recalled else ""
        note += f" [recall of {m['recalls']}]" if m["recalls"] else ""
        note += f" [{m['kind']}]" if m["kind"] not in ("text", "recall") else ""
        note += f" [reply to {m['reply_to']}]" if m["reply_to"] else ""
        when = m["sent_at"] or "time unknown"
        lines.append(f"{when} {who.display} ({who.id}){note}:\n{m['text']}\n")
        rows.append(f"<tr><td>{html.escape(when)}</td><td>{html.escape(who.display)}</td>"
                    f"<td>{html.escape(note.strip())}</td><td style=\"white-space:pre-wrap\">"
                    f"{html.escape(m['text'])}</td></tr>")
        for a in m["attachments"]:
            why = f": {a['reason']}" if a["reason"] else ""
            if a["state"] != "present":
                lines.append(f"    attachment not stored: {a['file_name'] or a['kind']} ({a['state']}{why})\n")
            elif why:  # stored, with a note: only the thumbnail, kept as found, a checksum that differs
                lines.append(f"    attachment note: {a['file_name'] or a['kind']}{why}\n")
    head = (f"{title}\n{PRODUCT.get(conv.platform, conv.platform)} {conv.kind} conversation {conv.id}\n"
            f"participants: {', '.join(directory.person(conv.source, i).display for i in ids)}\n"
            f"messages: {len(sl.messages)}\n\n")
    msg.set_content(head + "\n".join(lines), charset="utf-8")
    msg.add_alternative(
        f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(head)}</p><table border=\"1\" cellspacing=\"0\">"
        f"<tr><th>time</th><th>sender</th><th></th><th>message</th></tr>{''.join(rows)}</table></body></html>",
        subtype="html", charset="utf-8")
    for m in sl.messages:
        for a in m["attachments"]:
            if a["state"] == "present" and a["sha256"]:
                maintype, _, subtype = (a["media_type"] or "application/octet-stream").partition("/")
                name = a["file_name"] or f"{a['kind']}-{a['sha256'][:12]}{media_extension(a['media_type'])}"
                msg.add_attachment(read_blob(a["sha256"]), maintype=maintype, subtype=subtype or "octet-stream",
                                   filename=name)
    return msg


def eml_slices(engine, q: Query, directory: Directory, tz: str, *, per: str = "day",
               on_message: Callable[[], None] = lambda: None,
               skip: Callable[[dict[str, Any]], bool] | None = None) -> Iterator[Slice]:
    if per not in ("day", "message"):
        raise ValueError(f"per must be 'day' or 'message', not {per!r}")
    return slices(engine, q, directory, tz, max_events=1 if per == "message" else 10_000, max_bytes=MAX_BYTES,
                  per_day=per == "day", on_message=on_message, skip=skip)


def export_eml(archive, q: Query, out: Path, *, query_text: dict[str, Any], tz: str = "UTC", per: str = "day",
               progress: Callable[[int, int], None] = lambda done, total: None) -> EmlResult:
    prepare_out(out, "eml")
    sel = select_for_export(archive, q, progress)
    engine, directory, total = sel.engine, sel.directory, sel.total
    res = EmlResult(out)
    for sl in eml_slices(engine, q, directory, tz, per=per):
        msg = build_eml(sl, directory, archive.archive_id, archive.blobs.get, tz)
        conv = sl.conversation
        day = sl.day or (sl.messages[0]["sent_at"] or "undated")[:10]
        name = f"{safe_name(directory.title(conv, members(sl)), limit=50)}_{conv.key}_{day}_{res.emls + 1:06d}.eml"
        (out / "eml" / name).write_bytes(msg.as_bytes(policy=SMTP))
        res.emls += 1
        res.messages += len(sl.messages)
        res.attachments += sum(1 for _ in msg.iter_attachments())
        progress(res.messages, total)
    manifest = write_manifest(archive, out, fmt=FORMAT, query=query_text, per=per, counts={
        "messages": res.messages, "search_count": total, "reconciled": res.messages == total,
        "eml_files": res.emls, "attachments": res.attachments})
    res.file_list = manifest["files"]
    return res
