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
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wxarchive.archive.audit import current_user
from wxarchive.archive.checkpoints import Signer, public_pem
from wxarchive.search.query import Query, count, search

FORMAT = "wxarchive-export/1"
RECORD_KINDS = {"wecom.chatdata", "wecom.message", "media", "quarantine"}


class ExportError(Exception):
    """The export cannot be written; the message names the path."""


@dataclass
class ExportResult:
    out: Path
    messages: int = 0
    records: int = 0
    entries: int = 0
    media: int = 0
    audit_events: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _prepare(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: not empty (an export goes into a new or empty folder)")
    try:
        (out / "media").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{out}: cannot create ({e.strerror or e.__class__.__name__})") from None


def _latest_checkpoint(archive):
    """The newest signed checkpoint, carrying the public key (exports run read-only: beside a
    running ingest the journal may already be past it; the manifest says how far)."""
    from dataclasses import replace

    from wxarchive.archive.checkpoints import list_checkpoints, read_checkpoint

    cps = list_checkpoints(archive.journal.dir)
    pub = archive.home / "keys" / "signing.pub"
    if not cps or not pub.exists():
        return None
    return replace(read_checkpoint(cps[-1]), public_key=pub.read_text())


def export_jsonl(archive, q: Query, out: Path, *, query_text: dict[str, Any], tz: str = "UTC",
                 progress: Callable[[int, int], None] = lambda done, total: None) -> ExportResult:
    """Write the export of record for the messages ``q`` selects (everything if it has no filter)."""
    _prepare(out)
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
    with open(out / "records.jsonl", "w", encoding="utf-8") as f:
        for e in archive.journal.entries():
            last_serial = e.serial
            if e.serial % 5000 == 0:
                progress(e.serial, total)
            if e.kind not in RECORD_KINDS or (e.source, e.key) not in keys:
                continue
            f.write(json.dumps({"serial": e.serial, "time": e.time, "kind": e.kind, "meta": e.meta,
                                "data": base64.b64encode(e.data).decode()}, ensure_ascii=False) + "\n")
            result.entries += 1
            if e.kind == "media" and e.meta.get("state") == "present" and e.meta.get("sha256"):
                media.add(e.meta["sha256"])
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
    cp = _latest_checkpoint(archive)
    (out / "checkpoint.json").write_text(cp.to_json(with_public_key=True) if cp else "{}\n")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    for p in files:
        sha, size = _sha256_file(p)
        result.files.append({"path": str(p.relative_to(out)), "sha256": sha, "size": size})
    searched = count(engine, q)
    manifest = {
        "format": FORMAT, "archive_id": archive.archive_id, "query": query_text,
        "exported_by": current_user(), "on_behalf_of": os.environ.get("WXARCHIVE_ON_BEHALF_OF") or None,
        "host": socket.gethostname(), "exported_at": int(time.time() * 1000),
        "checkpoint_serial": cp.serial if cp else None,
        "last_exported_entry": last_serial,
        "counts": {"messages": result.messages, "search_count": searched, "reconciled": searched == result.messages,
                   "records": result.records, "entries": result.entries, "media_files": result.media,
                   "audit_events": result.audit_events},
        "files": result.files,
    }
    signer = Signer.load(archive.home / "keys", archive.master)
    if signer is not None:  # the hashes mean something only if the list of them is signed
        manifest["public_key"] = public_pem(signer.public)
        manifest["key_fingerprint"] = signer.fingerprint
        manifest["signature"] = signer.private.sign(manifest_payload(manifest)).hex()
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return result


def manifest_payload(manifest: dict[str, Any]) -> bytes:
    """The bytes a manifest's signature covers: all of it but the signature, canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
