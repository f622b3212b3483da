"""The export of record: a lossless, readable copy of any selection, with its audit trail.

``wxarchive export --format jsonl --out DIR [query filters]`` writes::

    DIR/records.jsonl    every journal entry of the selected records, in journal order:
                         the raw WeCom chatdata item as received, the decrypted message,
                         media outcomes, quarantine decisions — {"serial", "time" (ms),
                         "kind", "meta", "data" (base64)}; readable with any JSON tool
    DIR/media/<sha256>   the media bytes those entries refer to (plaintext: the export is
                         for a reviewer; protect the folder)
    DIR/audit.jsonl      the archive's audit trail: every admin event of the journal and
                         every access-log event (who read, exported, held, purged what)
    DIR/state.jsonl      (an export of everything only) the journal entries the catalog's
                         other tables come from, in journal order: directory answers and
                         imports, device contact lists, purge snapshots of them, WeChat
                         censuses, legal holds placed and released — so that an import into
                         an empty archive has the same names, consent and holds (a selection
                         leaves them out: the firm's directory is not the reviewer's business)
    DIR/checkpoint.json  the archive's newest signed checkpoint, with the public key
    DIR/manifest.json    the query, who ran it, when, every file with its SHA-256 and size,
                         and counts reconciled with the search count; signed (Ed25519) with
                         the archive's key, whose public half and fingerprint it carries

``wxarchive import DIR`` (capture/jsonl.py) re-journals records.jsonl into an archive and
gives the same catalog rows: the regulator's "readable, usable form" and a migration path.
With no filter, the export holds every record, quarantined ones included.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wxarchive.export.manifest import ExportError, latest_checkpoint, manifest_payload, prepare_out, write_manifest
from wxarchive.search.query import Query, count, search

FORMAT = "wxarchive-export/1"
RECORD_KINDS = {"wecom.chatdata", "wecom.message", "wechat.row", "media", "quarantine"}
# what state.jsonl holds (capture/jsonl.py reads the same kinds back)
STATE_KINDS = {"wecom.directory", "directory.import", "wechat.directory", "directory.snapshot", "wechat.census",
               "admin.hold.create", "admin.hold.release"}
__all__ = ["ExportError", "ExportResult", "export_jsonl", "manifest_payload", "FORMAT"]


@dataclass
class ExportResult:
    out: Path
    messages: int = 0
    records: int = 0
    entries: int = 0
    media: int = 0
    audit_events: int = 0
    state_entries: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)


def _line(e) -> str:
    return json.dumps({"serial": e.serial, "time": e.time, "kind": e.kind, "meta": e.meta,
                       "data": base64.b64encode(e.data).decode()}, ensure_ascii=False) + "\n"


def export_jsonl(archive, q: Query, out: Path, *, query_text: dict[str, Any], tz: str = "UTC",
                 progress: Callable[[int, int], None] = lambda done, total: None) -> ExportResult:
    """Write the export of record for the messages ``q`` selects (everything if it has no filter)."""
    prepare_out(out, "media")
    result = ExportResult(out)
    engine = archive.catalog.engine
    everything = q == Query()
    keys: set[tuple[str, str]] = set()
    for r in search(engine, q, tz):
        keys.add((r["source"], r["msgid"]))
    result.messages = len(keys)
    if everything:  # quarantined records have no message row: an export of record holds them too
        con = engine.raw_connection()
        try:
            keys.update((src, key) for src, key in con.execute(
                "SELECT source, key FROM records WHERE state = 'quarantined'"))
        finally:
            con.close()
    result.records = len(keys)
    total = archive.journal.head_serial or 1
    media: set[str] = set()
    last_serial = 0
    state = open(out / "state.jsonl", "w", encoding="utf-8") if everything else None
    try:
        with open(out / "records.jsonl", "w", encoding="utf-8") as f:
            for e in archive.journal.entries():
                last_serial = e.serial
                if e.serial % 5000 == 0:
                    progress(e.serial, total)
                if state is not None and e.kind in STATE_KINDS:
                    state.write(_line(e))
                    result.state_entries += 1
                    continue
                if e.kind not in RECORD_KINDS or (e.source, e.key) not in keys:
                    continue
                f.write(_line(e))
                result.entries += 1
                if e.kind == "media" and e.meta.get("state") == "present" and e.meta.get("sha256"):
                    media.add(e.meta["sha256"])
    finally:
        if state is not None:
            state.close()
    for sha in sorted(media):
        if not archive.blobs.has(sha):  # purged or lost: the manifest counts what was written
            continue
        (out / "media" / sha).write_bytes(archive.blobs.get(sha))
        result.media += 1
    with open(out / "audit.jsonl", "w", encoding="utf-8") as f:
        for e in archive.journal.entries():
            if e.kind.startswith("admin."):
                f.write(json.dumps({"source": "journal", "serial": e.serial, "time": e.time, "kind": e.kind,
                                    "meta": e.meta}, ensure_ascii=False) + "\n")
                result.audit_events += 1
        for ev in archive.access_log().events():
            f.write(json.dumps({"source": "access_log", **ev.to_dict()}, ensure_ascii=False) + "\n")
            result.audit_events += 1
    cp = latest_checkpoint(archive)
    (out / "checkpoint.json").write_text(cp.to_json(with_public_key=True) if cp else "{}\n")
    searched = count(engine, q)
    manifest = write_manifest(
        archive, out, fmt=FORMAT, query=query_text, last_exported_entry=last_serial,
        counts={"messages": result.messages, "search_count": searched, "reconciled": searched == result.messages,
                "records": result.records, "entries": result.entries, "media_files": result.media,
                "audit_events": result.audit_events, "state_entries": result.state_entries})
    result.files = manifest["files"]
    return result
