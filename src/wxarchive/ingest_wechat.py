"""Runs a WeChat device's databases into the archive (the WeChat half of ``ingest``).

Order of durability, per chunk of rows of one work conversation:

1. each row not yet archived (by message id: the server id, so the same message in two
   shards, two copies or two WeChat generations is one message) is journaled as it was
   stored (``wechat.row``); voice bytes found beside it become encrypted blobs and a
   ``media`` entry each (the SILK original and a WAV made from it);
2. the journal is fsynced, then the cursor (the last local id per shard, table and chat)
   is journaled and fsynced;
3. only then is the catalog updated, with the same ``apply`` that ``reindex`` uses.

Personal conversations (everything the policy does not call work) are never read past
their census: no row, no name, no text of theirs reaches the journal, the catalog or the
logs. What is journaled of them is a count per UTC day (``wechat.census``), so that
``captured + excluded = total`` can be checked for every copy of a database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wxarchive.archive.archive import Archive
from wxarchive.archive.journal import Entry
from wxarchive.capture.wechat import messages as wmessages
from wxarchive.capture.wechat import mediafiles, voice
from wxarchive.capture.wechat.policy import Decision, Policy
from wxarchive.capture.wechat.sqlcipher import WeChatDbError
from wxarchive.capture.wechat.records import Contact, ConversationCensus, Group, RawRow, encode_record
from wxarchive.ingest import apply
from wxarchive.model import Attachment, AttachmentState, Message

log = logging.getLogger("wxarchive.ingest.wechat")

ProgressFn = Callable[[str, dict[str, Any]], None]


def _noop(event: str, info: dict[str, Any]) -> None:
    pass


@dataclass
class ConversationPlan:
    talker: str
    name: str | None
    kind: str  # direct | group
    messages: int
    decision: Decision
    raw: Any = None  # the chat id as stored (see ConversationCensus.raw)


@dataclass
class WeChatResult:
    source: str
    run_id: int = 0
    status: str = "running"
    error: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {
        "pulled": 0, "archived": 0, "duplicates": 0, "quarantined": 0, "excluded": 0})
    media: dict[str, int] = field(default_factory=dict)
    media_found_later: int = 0  # media of messages archived by earlier runs, found in this copy
    need_image_key: int = 0  # 4.x V2 images kept as found for want of --image-key-file
    warnings: list[str] = field(default_factory=list)
    work_conversations: int = 0
    personal_conversations: int = 0
    total: int = 0


def source_of(reader) -> str:
    return f"wechat:{reader.owner}"


class PolicyCannotApply(ValueError):
    """The copy lacks what the policy needs to find work chats (they would be skipped as personal)."""


def policy_warnings(reader, policy: Policy | None, contacts: dict[str, Contact] | None = None) -> list[str]:
    """What the operator must hear before trusting the run: damaged WAL files, missing tables,
    and settings of the policy that cannot take effect on this copy (said, not ignored)."""
    out = list(getattr(reader, "warnings", []))
    if policy and policy.work_labels and not getattr(reader, "labels_supported", True):
        out.append(f"{policy.path}: work_labels has no effect on {reader.format} databases (their contact labels "
                   "are not decoded): list those contacts in work_contacts or the customer list")
    if policy and reader.owner in policy.work_contacts | policy.colleagues:
        out.append(f"{policy.path}: {reader.owner} is this device's own account; listing it has no effect")
    if policy and contacts is not None and not contacts and policy.needs_contacts():
        out.append(f"{reader.path}: no contacts in this copy, so the policy's labels, names, mobiles and WeChat IDs "
                   "match nothing: chats that only they make work would be skipped as personal")
    return out


def plan(reader, policy: Policy | None, census: list[ConversationCensus] | None = None
         ) -> tuple[list[ConversationPlan], dict[str, Contact], dict[str, Group]]:
    """Every conversation of the copy with its message count and what the policy does with it."""
    contacts, groups = reader.contacts(), reader.groups()
    out = []
    for c in sorted(reader.census() if census is None else census, key=lambda c: (-c.total, c.talker)):
        d = policy.decide(c.talker, contacts, groups, reader.owner) if policy else Decision(False, "no policy")
        who = contacts.get(c.talker)
        out.append(ConversationPlan(c.talker, who.name if who else None,
                                    "group" if c.talker.endswith("@chatroom") else "direct", c.total, d, c.raw))
    return out, contacts, groups


def _census(reader, plans: list[ConversationPlan], census: list[ConversationCensus]) -> dict[str, Any]:
    work = {p.talker for p in plans if p.decision.work}
    days: dict[str, list[int]] = {}
    for c in census:
        for day, n in c.per_day.items():
            d = days.setdefault(day or "unknown", [0, 0, 0])
            d[0] += n
            d[1 if c.talker in work else 2] += n
    total = sum(c.total for c in census)
    captured = sum(c.total for c in census if c.talker in work)
    return {"format": reader.format, "device": str(reader.path), "total": total, "captured": captured,
            "excluded": total - captured, "work_conversations": len(work),
            "personal_conversations": len(census) - len(work), "days": dict(sorted(days.items()))}


def _directory(reader, plans: list[ConversationPlan], contacts: dict[str, Contact], groups: dict[str, Group],
               employee: str | None = None) -> bytes:
    """Names of the people and groups of *work* conversations only."""
    work = [p.talker for p in plans if p.decision.work]
    wanted = set(work) | {reader.owner}
    for t in work:
        if t in groups:
            wanted.update(groups[t].members)
    people = [{"id": c.id, "nickname": c.nickname, "remark": c.remark, "alias": c.alias, "labels": c.labels,
               "kind": c.kind, "mobile": c.mobile, "description": c.description}
              for cid, c in sorted(contacts.items()) if cid in wanted and not cid.endswith("@chatroom")]
    if reader.owner not in contacts:
        people.append({"id": reader.owner, "nickname": reader.owner_name or employee, "kind": "owner"})
    rooms = [{"id": g.id, "name": (contacts[g.id].name if g.id in contacts else g.name), "members": g.members,
              "member_names": g.member_names} for t in work if (g := groups.get(t))]
    return json.dumps({"owner": reader.owner, "people": people, "groups": rooms}, ensure_ascii=False).encode()


def ingest_wechat(archive: Archive, reader, policy: Policy, progress: ProgressFn = _noop, batch: int = 2000,
                  should_stop: Callable[[], bool] = lambda: False) -> WeChatResult:
    """Archive the work conversations of ``reader``'s copy (see the module docstring).
    ``should_stop`` is asked between chunks: the run then ends ``stopped``, every chunk whole."""
    source = source_of(reader)
    result = WeChatResult(source)
    j = archive.journal
    archive.blobs.sweep()  # partial blob files a killed run left
    cursor_text = archive.catalog.cursor(source)
    stored: dict[str, Any] = json.loads(cursor_text) if cursor_text else {}
    cursor: dict[str, int] = {k: (v[0] if isinstance(v, list) else v) for k, v in stored.items()}
    marks: dict[str, str] = {k: v[1] for k, v in stored.items() if isinstance(v, list)}
    census = reader.census()
    plans, contacts, groups = plan(reader, policy, census)
    if not contacts and policy.needs_contacts():
        raise PolicyCannotApply(
            f"{reader.path}: this copy has no contacts (contact database missing or empty), so {policy.path}'s "
            "labels, names, mobiles and WeChat IDs can match nothing and the chats they make work would be "
            "skipped: add the contact database to the copy, or name those chats by id (work_contacts, work_groups)")
    warnings = policy_warnings(reader, policy, contacts)
    work = {p.talker for p in plans if p.decision.work}
    for key, mark in sorted(marks.items()):  # local ids start again after a reinstall or a restored backup
        if key.rsplit("|", 1)[-1] in work and reader.fingerprint(key, cursor[key]) != mark:
            warnings.append(f"{reader.path}: {key.split('|')[0]} table {key.split('|')[1]} no longer holds the row "
                            f"the last run stopped at (local id {cursor[key]}): rewritten or restored; read again "
                            "from its start (rows already archived are recognised by their ids)")
            del cursor[key]
            del marks[key]
    for w in warnings:
        progress("warning", {"text": w})
    now = int(time.time() * 1000)
    ended = []
    for dead in archive.catalog.unfinished_runs(source):  # killed runs: closed, their rows stay archived
        meta = {"source": source, "run": dead, "status": "interrupted",
                "error": "the process ended without closing this run", "counts": {}}
        ended.append(Entry(j.append("run.end", meta, at=now), now, "run.end", meta, b""))
    run_meta = {"source": source, "cursor": cursor_text, "pid": os.getpid(), "format": reader.format,
                "device": str(reader.path),
                "policy": {"file": str(policy.path), "sha256": policy.sha256, "employee": policy.employee,
                           "customer_list_sha256": policy.customers_sha256}}
    result.run_id = j.append("run.start", run_meta, at=now)  # each entry's time as journaled (reindex agrees)
    dmeta = {"source": source, "key": f"directory:{now}", "fetched_at": now, "device": str(reader.path)}
    ddata = _directory(reader, plans, contacts, groups, policy.employee)
    dserial = j.append("wechat.directory", dmeta, ddata, at=now)
    c = _census(reader, plans, census)
    result.total, result.counts["excluded"] = c["total"], c["excluded"]
    result.work_conversations, result.personal_conversations = c["work_conversations"], c["personal_conversations"]
    cmeta = {"source": source, **c, "warnings": warnings}
    result.warnings = warnings
    cserial = j.append("wechat.census", cmeta, at=now)
    j.sync()
    apply(archive, ended + [Entry(result.run_id, now, "run.start", run_meta, b""),
                    Entry(dserial, now, "wechat.directory", dmeta, ddata),
                    Entry(cserial, now, "wechat.census", cmeta, b"")])
    log.info("wechat run %s: %d conversations (%d work), %d messages in the copy, %d excluded",
             result.run_id, len(plans), result.work_conversations, result.total, result.counts["excluded"])
    room_names = {g.id: (contacts[g.id].name if g.id in contacts else g.name) for g in groups.values()}
    # attachments a killed run journaled the message of but not the outcome: resolved when the row comes again
    pending = {(a["msgid"], a["path"]) for a in archive.catalog.pending_attachments(source)}
    try:
        result.status = "ok"
        for p in plans:
            if not p.decision.work:
                continue
            chunk: list[RawRow] = []
            for row in reader.rows(p.talker, cursor, p.raw):
                if p.kind == "group":
                    row.record["room_name"] = room_names.get(p.talker)
                chunk.append(row)
                if len(chunk) >= batch:
                    _chunk(archive, reader, source, chunk, cursor, marks, result, progress, pending)
                    chunk = []
                    if should_stop():
                        break
            if chunk:
                _chunk(archive, reader, source, chunk, cursor, marks, result, progress, pending)
            if should_stop():
                result.status = "stopped"
                break
        if result.status == "ok":
            _look_again(archive, reader, source, {p.talker for p in plans if p.decision.work}, result)
    except WeChatDbError as e:
        result.status, result.error = "failed", str(e)
    except Exception as e:  # a read error in the middle of a database: the run ends, what was read stays
        from wxarchive.capture.wechat.sqlcipher import database_error_types

        if not isinstance(e, database_error_types()):
            raise
        result.status, result.error = "failed", f"{reader.path}: reading stopped: {e}"
    except BaseException:
        result.status = "interrupted"
        raise
    finally:
        end = {"source": source, "run": result.run_id, "status": result.status, "error": result.error,
               "counts": result.counts, "cursor": archive.catalog.cursor(source)}
        j.append("run.end", end)
        j.sync()
        from wxarchive.ingest import catch_up

        catch_up(archive)  # whatever a stopped chunk left unapplied, then this end
        log.info("wechat run %s ended %s: %s", result.run_id, result.status,
                 ", ".join(f"{k} {v}" for k, v in result.counts.items()))
    return result


def _chunk(archive: Archive, reader, source: str, chunk: list[RawRow], cursor: dict[str, int], marks: dict[str, str],
           result: WeChatResult, progress: ProgressFn, pending: set[tuple[str, str]]) -> None:
    j = archive.journal
    datas = [encode_record(r.record) for r in chunk]
    parsed: list[tuple[Message | None, str | None]] = []
    keys = []
    for row, d in zip(chunk, datas):
        try:
            m = wmessages.parse_values(row.record, row.values, source) if row.values is not None \
                else wmessages.parse_row(d, source)
            parsed.append((m, None))
            keys.append(m.msgid)
        except wmessages.ParseError as e:
            parsed.append((None, f"parse: {e}"))
            keys.append("unparsed:" + hashlib.sha256(d).hexdigest()[:32])
    known = archive.catalog.known_keys(source, keys)
    rows_entries: list[Entry] = []
    media: list[tuple[str, Attachment, RawRow]] = []
    by_serial: dict[int, tuple[Message | None, str | None]] = {}
    seen: set[str] = set()
    now = int(time.time() * 1000)
    for row, data, key, (msg, err) in zip(chunk, datas, keys, parsed):
        result.counts["pulled"] += 1
        if key in known or key in seen:
            result.counts["duplicates"] += 1
            if msg is not None and key in known:
                media.extend((key, a, row) for a in msg.attachments if (key, a.path) in pending)
            continue
        seen.add(key)
        meta = {"source": source, "key": key, "file": row.record.get("file"), "table": row.record.get("table"),
                "cursor": f"{row.cursor_key}:{row.local_id}", "received_at": now}
        serial = j.append("wechat.row", meta, data, at=now)
        rows_entries.append(Entry(serial, now, "wechat.row", meta, data))
        by_serial[serial] = (msg, err)
        if msg is None:
            result.counts["quarantined"] += 1
            continue
        result.counts["archived"] += 1
        media.extend((key, a, row) for a in msg.attachments if a.state is AttachmentState.PENDING)
        for a in msg.attachments:  # known missing from the start (stickers, a forwarded record's files)
            if a.state is AttachmentState.MISSING:
                result.media["missing"] = result.media.get("missing", 0) + 1
    after = [_media(archive, reader, source, key, a, row, result, now) for key, a, row in media]
    for row in chunk:
        if int(row.local_id) >= cursor.get(row.cursor_key, 0):
            cursor[row.cursor_key] = int(row.local_id)
            marks[row.cursor_key] = row.fingerprint
    j.sync()  # rows and media before the cursor that covers them
    cmeta = {"source": source, "cursor": json.dumps({k: [v, marks.get(k, "")] for k, v in cursor.items()},
                                                    sort_keys=True, separators=(",", ":"))}
    cserial = j.append("cursor", cmeta, at=now)
    j.sync()
    # one catalog transaction: messages are inserted before any media outcome updates them
    apply(archive, rows_entries + after + [Entry(cserial, now, "cursor", cmeta, b"")], by_serial)
    archive.maybe_checkpoint()  # signed as it goes: a verify beside a long first run finds checkpoints
    progress("batch", dict(result.counts))


def _media(archive: Archive, reader, source: str, key: str, att: Attachment, row: RawRow, result: WeChatResult,
           now: int) -> Entry:
    """Store one attachment found beside the row (voice in a database, other media as files of
    the account folder) and journal its outcome."""
    meta: dict[str, Any] = {"source": source, "key": key, "path": att.path}
    if att.kind in ("voice", "voice_wav"):
        _voice_outcome(archive, {m.path: m for m in row.media}.get(""), att.path, meta)
    else:
        try:
            _file_outcome(archive, reader, att, reader.media_file(row, att), meta)
        except WeChatDbError as e:
            meta.update(state="failed", reason=str(e))
        except Exception as e:  # whatever a damaged copy holds, the run goes on with the rest
            log.warning("wechat media of %s: %s", key, e.__class__.__name__)
            meta.update(state="failed", reason=f"looking for or reading its file failed: {e.__class__.__name__}: {e}")
        if "image key was not given" in (meta.get("reason") or ""):
            result.need_image_key += 1
    result.media[meta["state"]] = result.media.get(meta["state"], 0) + 1
    serial = archive.journal.append("media", meta, at=now)
    return Entry(serial, now, "media", meta, b"")


def _file_outcome(archive: Archive, reader, att: Attachment, found, meta: dict[str, Any]) -> None:
    if found.file is None:
        meta.update(state="missing", reason=found.looked or "not in the copy")
        return
    got = mediafiles.load(found.file, found.dat, att.declared_md5, aes_key=getattr(reader, "image_key", None),
                          note=found.note, exact=att.kind in ("file", "video"))
    meta.update(state=got.state, reason=got.reason)
    if got.data is not None:
        meta.update(sha256=archive.blobs.put(got.data), size=len(got.data), media_type=got.media_type)


def _look_again(archive: Archive, reader, source: str, work: set[str], result: WeChatResult) -> None:
    """Media that earlier runs found missing (or only as a thumbnail) are looked for again in
    this copy — a picture is often downloaded on the device after its message arrived. Only
    for conversations that are work now; a new outcome is journaled only when the file is
    there (and is more than the thumbnail already archived)."""
    entries: list[Entry] = []
    now = int(time.time() * 1000)
    for a in archive.catalog.media_to_look_again(source):
        cursor_key, _, local_id = (a["cursor"] or "").rpartition(":")
        if a["conversation_id"] not in work or not cursor_key or not local_id.isdigit():
            continue
        row = reader.row_at(cursor_key, int(local_id))
        if row is None or str(row.server_id) != a["msgid"]:  # not the same message any more (reinstall, restore)
            continue
        att = Attachment(path="", kind=a["kind"], file_name=a["file_name"], declared_md5=a["declared_md5"],
                         declared_size=a["declared_size"])
        meta: dict[str, Any] = {"source": source, "key": a["msgid"], "path": "", "found_later": True}
        try:
            found = reader.media_file(row, att)
            if found.file is None or (a["state"] == "present" and found.note):
                continue
            _file_outcome(archive, reader, att, found, meta)
        except Exception as e:  # noqa: BLE001 - a damaged copy: looked at again next time
            log.warning("wechat media of %s, looked for again: %s", a["msgid"], e.__class__.__name__)
            continue
        if meta["state"] != "present" or meta.get("sha256") == a["sha256"]:
            continue  # nothing better than what is archived
        result.media_found_later += 1
        entries.append(Entry(archive.journal.append("media", meta, at=now), now, "media", meta, b""))
    if entries:
        archive.journal.sync()
        apply(archive, entries)


def _voice_outcome(archive: Archive, original, path: str, meta: dict[str, Any]) -> None:
    if original is None:
        meta.update(state="missing", reason="no voice data for this message in the device's databases or files")
    elif path == "":
        meta.update(state="present", sha256=archive.blobs.put(original.data), size=len(original.data))
    elif not voice.is_silk(original.data):
        meta.update(state="missing", reason=f"the original is {original.media_type}, kept as it is (no conversion needed)")
    else:
        try:
            wav = voice.silk_to_wav(original.data)
        except voice.VoiceError as e:
            meta.update(state="failed", reason=f"conversion to WAV: {e}")
        else:
            meta.update(state="present", sha256=archive.blobs.put(wav), size=len(wav))
