"""RSMF 2.0 (Relativity Short Message Format): one ``.rsmf`` per conversation slice.

Each file is an RFC 5322 message (CRLF, 7-bit: non-ASCII headers RFC 2047-encoded, the text
body and the zip base64) holding exactly one attachment, ``rsmf.zip``, whose root holds
``rsmf_manifest.json`` and every attachment file the manifest names (and nothing else).
Slices are cut at 10,000 events or 200 MB and share the conversation's ``eventcollectionid``.

Mapping (docs/exports.md has the table):
- participants: the archive's ids (``account_id`` too), names from the directory;
- conversation: ``direct`` for 1:1 chats, ``channel`` for groups; ``platform`` the source
  (``wecom``); its custodian is the first employee taking part;
- events: every message, in time order, ``id`` = the source message id; a recall marks the
  original ``deleted`` (its body is kept) with ``recalled_at`` / ``recall_msgid`` custom
  fields; consent changes are ``disclaimer`` events; a quote's ``parent`` is the quoted
  message when it is in the same file (else a ``reply_to`` custom field);
- attachments: the stored bytes, named ``<sha256 prefix>_<file name>`` in the zip; media that
  could not be fetched are listed as custom fields with their state and reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from datetime import datetime
from pathlib import Path
from typing import Any

from wxarchive import __version__
from wxarchive.export.conversations import (
    SYSTEM, Directory, Slice, link_quotes, media_extension, members, safe_name, select_for_export, slices,
)
from wxarchive.export.manifest import prepare_out, write_manifest
from wxarchive.search.query import Query

FORMAT = "wxarchive-export-rsmf/1"
RSMF_VERSION = "2.0.0"
MAX_EVENTS = 10_000
MAX_BYTES = 190 * 1024 * 1024  # under Relativity's older 200 MB limit, with room for base64 and the manifest


@dataclass
class RsmfResult:
    out: Path
    messages: int = 0
    events: int = 0
    files: int = 0
    conversations: int = 0
    attachments: int = 0
    attachments_not_stored: int = 0
    file_list: list[dict[str, Any]] = field(default_factory=list)


def _custom(**kv: Any) -> list[dict[str, str]]:
    return [{"name": k, "value": str(v)} for k, v in kv.items() if v not in (None, "", [])]


def _zip_name(a: dict[str, Any]) -> str:
    """``<sha256 prefix>_<file name>``: unique, portable, and with an extension (from the media
    type when the source gave no file name) so that the viewer shows images inline."""
    stem, ext = (a["file_name"].rsplit(".", 1) + [""])[:2] if a["file_name"] else (a["kind"], "")
    if not ext and a["media_type"]:
        ext = media_extension(a["media_type"]).lstrip(".")
    ext = safe_name(ext, limit=10) if ext else ""
    return f"{a['sha256'][:16]}_{safe_name(stem, limit=40)}" + (f".{ext}" if ext else "")


def build_manifest(sl: Slice, directory: Directory) -> tuple[dict[str, Any], dict[str, str], str]:
    """The slice's manifest, the zip members it names (zip name -> sha256) and its text body."""
    conv = sl.conversation
    source = conv.source
    link_quotes(sl, directory)
    ids = members(sl)
    people = [directory.person(source, i) for i in ids]
    if any(m["sender"] is None for m in sl.messages):
        people.append(SYSTEM)
    custodian = next((p for p in people if p.kind == "employee"), people[0] if people else SYSTEM)
    if custodian not in people:
        people.append(custodian)
    by_id = {m["msgid"]: m for m in sl.messages}
    recalled: dict[str, dict[str, Any]] = {}  # original msgid -> the recall
    for m in sl.messages:
        if m["recalls"] and m["recalls"] in by_id:
            recalled[m["recalls"]] = m
    files: dict[str, str] = {}
    events: list[dict[str, Any]] = []
    body_lines: list[str] = []
    for m in sl.messages:
        if m["recalls"] and m["recalls"] in by_id:
            continue  # folded into the original (deleted: true)
        sender = directory.person(source, m["sender"], m["sent_at_ms"])
        ev: dict[str, Any] = {"id": m["msgid"], "type": "message", "participant": sender.id,
                              "conversation": conv.id, "body": m["text"]}
        if m["kind"] == "consent":
            ev["type"] = "disclaimer"
        elif m["kind"] == "other":
            ev["type"] = "unknown"
        if m["sent_at"]:
            ev["timestamp"] = m["sent_at"]
        if m["reply_to"] and m["reply_to"] in by_id and m["reply_to"] != m["msgid"]:
            ev["parent"] = m["reply_to"]
        ev["direction"] = "outgoing" if sender.id == custodian.id else "incoming"
        rec = recalled.get(m["msgid"])
        if rec is not None:
            ev["deleted"] = True
        elif m["recalls"]:
            ev["body"] = f"[recalled message {m['recalls']}]" + (f" {m['text']}" if m["text"] else "")
        atts, not_stored = [], {}
        for i, a in enumerate(m["attachments"], 1):
            if a["state"] == "present" and a["sha256"]:
                name = _zip_name(a)
                files[name] = a["sha256"]
                atts.append({"id": name, "display": a["file_name"] or name.split("_", 1)[1], "size": int(a["size"] or 0)})
                if a["reason"]:  # stored, with a note (only the thumbnail, a checksum that differs)
                    not_stored[f"attachment {i} note"] = f"{a['file_name'] or a['kind']}: {a['reason']}"
            else:
                not_stored[f"attachment {i}"] = (f"{a['file_name'] or a['kind']}: {a['state']}"
                                                 + (f" ({a['reason']})" if a["reason"] else ""))
        if atts:
            ev["attachments"] = atts
        ev["custom"] = _custom(
            msgid=m["msgid"], source=source, kind=m["kind"], msgtype=m["source_type"], seq=m["seq"],
            flags=",".join(m["flags"]), recalled_at=rec["sent_at"] if rec else None,
            recall_msgid=rec["msgid"] if rec else None, recalls=m["recalls"],
            reply_to=m["reply_to"] if m["reply_to"] and "parent" not in ev else None,
            reply_inferred="true" if m.get("reply_inferred") else None,
            quoted_text=(m["content"].get("quote") or {}).get("quoted_text") if "parent" not in ev else None,
            time_unknown="true" if not m["sent_at"] else None, **not_stored)
        events.append(ev)
        stamp = m["sent_at"] or "time unknown"
        mark = " [recalled]" if rec else ""
        body_lines.append(f"{sender.display} ({stamp}){mark}:\n{ev['body']}\n")
    title = directory.title(conv, ids)
    manifest = {
        "version": RSMF_VERSION,
        "eventcollectionid": f"{conv.platform}-{conv.key}",
        "participants": [
            {"id": p.id, "display": p.display, "account_id": p.id, "custom": _custom(kind=p.kind)} for p in people
        ],
        "conversations": [{
            "id": conv.id, "display": title, "platform": conv.platform,
            "type": "direct" if conv.kind == "direct" else "channel",
            "participants": [p.id for p in people], "custodian": custodian.id,
            "custom": _custom(source=source, conversation_kind=conv.kind, part=sl.part),
        }],
        "events": events,
    }
    return manifest, files, "\n".join(body_lines)


def headers(manifest: dict[str, Any], title: str) -> EmailMessage:
    """The EML layer's headers, consistent with the manifest (X-RSMF-Version first)."""
    conv = manifest["conversations"][0]
    people = {p["id"]: p for p in manifest["participants"]}
    stamps = [e["timestamp"] for e in manifest["events"] if "timestamp" in e]  # events are in time order
    msg = EmailMessage(policy=SMTP)
    msg["X-RSMF-Version"] = manifest["version"]
    msg["X-RSMF-Generator"] = f"wxarchive {__version__}"
    if stamps:
        msg["X-RSMF-BeginDate"] = stamps[0]
        msg["X-RSMF-EndDate"] = stamps[-1]
    msg["X-RSMF-EventCount"] = str(len(manifest["events"]))
    msg["X-RSMF-Application"] = conv["platform"]
    cust = people[conv["custodian"]]
    msg["X-RSMF-Custodian"] = cust["display"]
    msg["X-RSMF-Participants"] = ", ".join(people[i]["display"] for i in conv["participants"])
    msg["X-RSMF-AttachmentCount"] = str(sum(len(e.get("attachments", [])) for e in manifest["events"]))
    msg["X-RSMF-EventCollectionID"] = manifest["eventcollectionid"]
    msg["From"] = _mailbox(cust, conv["platform"])
    msg["To"] = ", ".join(_mailbox(people[i], conv["platform"]) for i in conv["participants"])
    msg["Subject"] = title
    if stamps:
        msg["Date"] = format_datetime(datetime.fromisoformat(stamps[0]))
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]
    msg["Message-ID"] = f"<{digest}@rsmf.wxarchive.invalid>"
    return msg


def _mailbox(p: dict[str, Any], platform: str) -> str:
    """A participant as an RFC 5322 mailbox: the name, and an address under the reserved
    ``.invalid`` domain built from the id (the archive does not know their e-mail)."""
    return str(Address(display_name=p["display"], username=safe_name(p["id"], limit=64),
                       domain=f"{safe_name(platform, limit=20)}.invalid"))


def header_block(msg: EmailMessage) -> bytes:
    """The message's headers, folded and RFC 2047-encoded for a 7-bit transport, and the blank
    line after them (the body is written by hand: it streams)."""
    return b"".join(SMTP.fold_binary(k, v) for k, v in msg.items()) + b"\r\n"


def _b64_lines(data: bytes) -> bytes:
    enc = base64.b64encode(data)
    return b"".join(enc[i : i + 76] + b"\r\n" for i in range(0, len(enc), 76))


def write_rsmf(path: Path, manifest: dict[str, Any], files: dict[str, str], body: str, title: str,
               read_blob: Callable[[str], bytes], workdir: Path) -> None:
    """Write one .rsmf: headers, the text body, and rsmf.zip (built in ``workdir`` and streamed
    into the file as base64, so a 190 MB slice never sits in memory twice)."""
    boundary = "wxarchive-" + hashlib.sha256(path.name.encode() + os.urandom(8)).hexdigest()[:24]
    msg = headers(manifest, title)
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = f'multipart/mixed; boundary="{boundary}"'
    fd, zpath = tempfile.mkstemp(suffix=".zip", dir=workdir)
    os.close(fd)
    try:
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("rsmf_manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1))
            for name, sha in sorted(files.items()):
                z.writestr(name, read_blob(sha))
        tmp = path.with_suffix(".rsmf.part")
        with open(tmp, "wb") as f:
            f.write(header_block(msg))
            f.write(f"--{boundary}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n"
                    "Content-Transfer-Encoding: base64\r\n\r\n".encode())
            f.write(_b64_lines(body.encode()))
            f.write(f"--{boundary}\r\nContent-Type: application/octet-stream; name=\"rsmf.zip\"\r\n"
                    "Content-Disposition: attachment; filename=\"rsmf.zip\"\r\n"
                    "Content-Transfer-Encoding: base64\r\n\r\n".encode())
            with open(zpath, "rb") as z:
                while chunk := z.read(57 * 1024 * 16):  # a multiple of 57 bytes: whole 76-char lines
                    f.write(_b64_lines(chunk))
            f.write(f"--{boundary}--\r\n".encode())
        os.replace(tmp, path)
    finally:
        os.unlink(zpath)


def export_rsmf(archive, q: Query, out: Path, *, query_text: dict[str, Any], tz: str = "UTC",
                progress: Callable[[int, int], None] = lambda done, total: None) -> RsmfResult:
    prepare_out(out, "rsmf")
    sel = select_for_export(archive, q, progress)
    engine, directory, total = sel.engine, sel.directory, sel.total
    res = RsmfResult(out)
    seen_convs: set[tuple[str, str]] = set()
    for sl in slices(engine, q, directory, tz, max_events=MAX_EVENTS, max_bytes=MAX_BYTES, on_message=sel.tick):
        manifest, files, body = build_manifest(sl, directory)
        conv = sl.conversation
        name = f"{safe_name(conv.platform, directory.title(conv, members(sl)), limit=50)}_{conv.key}_{sl.part:03d}.rsmf"
        title = f"{directory.title(conv, members(sl))} ({conv.platform}, part {sl.part})"
        write_rsmf(out / "rsmf" / name, manifest, files, body, title, archive.blobs.get, out)
        seen_convs.add((conv.source, conv.id))
        res.messages += len(sl.messages)
        res.events += len(manifest["events"])
        res.files += 1
        res.attachments += len(files)
        res.attachments_not_stored += sum(1 for m in sl.messages for a in m["attachments"]
                                          if not (a["state"] == "present" and a["sha256"]))
    progress(total, total)
    res.conversations = len(seen_convs)
    manifest = write_manifest(archive, out, fmt=FORMAT, query=query_text, rsmf_version=RSMF_VERSION, counts={
        "messages": res.messages, "search_count": total, "reconciled": res.messages == total,
        "events": res.events, "recalls_folded": res.messages - res.events, "rsmf_files": res.files,
        "conversations": res.conversations, "attachments": res.attachments,
        "attachments_not_stored": res.attachments_not_stored})
    res.file_list = manifest["files"]
    return res
