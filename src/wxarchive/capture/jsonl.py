"""Re-import of our own export of record (``export --format jsonl``): a capture source.

Reads ``records.jsonl`` and ``media/`` of an export folder and yields its journal entries,
checked: every line must be a JSON object with a known kind, a metadata object naming a
source and key, and base64 data; every media file must hash to its name. Problems name the
file and line and stop nothing but that line (the importer counts and reports them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "wxarchive-export/1"
KINDS = {"wecom.chatdata", "wecom.message", "wechat.row", "media", "quarantine"}


class ImportError_(Exception):
    """The folder is not an export we can read; the message names the file."""


class TamperedExport(ImportError_):
    """The export was altered after it was written (or is signed by another key than expected)."""


@dataclass
class ExportedEntry:
    line: int
    serial: int  # in the exporting archive
    time: int
    kind: str
    meta: dict[str, Any]
    data: bytes


def open_export(folder: Path, expect_fingerprint: str | None = None) -> dict[str, Any]:
    """The export's manifest, after checking it is one of ours, signed (by the expected key,
    if one is given), complete, and that every file is as the manifest says."""
    mpath = folder / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImportError_(f"{folder}: not a wxarchive export (no manifest.json)") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ImportError_(f"{mpath}: unreadable ({e.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ImportError_(f"{mpath}: format {manifest.get('format') if isinstance(manifest, dict) else None!r} "
                           f"is not {FORMAT}")
    _check_signature(mpath, manifest, expect_fingerprint)
    listed = set()
    for f in manifest.get("files", []):
        p = folder / f["path"]
        listed.add(f["path"])
        if not p.is_file():
            raise TamperedExport(f"{p}: listed in the manifest but missing")
        if _sha256(p) != f["sha256"]:
            raise TamperedExport(f"{p}: SHA-256 differs from the manifest (altered after export)")
    extra = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.name != "manifest.json" and str(p.relative_to(folder)) not in listed)
    if extra:
        raise TamperedExport(f"{folder / extra[0]}: not listed in the manifest (added after export)")
    if "records.jsonl" not in listed:
        raise TamperedExport(f"{mpath}: lists no records.jsonl")
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_signature(mpath: Path, manifest: dict[str, Any], expect_fingerprint: str | None) -> None:
    from cryptography.exceptions import InvalidSignature

    from wxarchive.archive.checkpoints import CheckpointError, fingerprint, load_public_pem
    from wxarchive.export.manifest import manifest_payload

    if not manifest.get("signature") or not manifest.get("public_key"):
        raise TamperedExport(f"{mpath}: not signed")
    try:
        public = load_public_pem(str(manifest["public_key"]), str(mpath))
        public.verify(bytes.fromhex(str(manifest["signature"])), manifest_payload(manifest))
    except (CheckpointError, InvalidSignature, ValueError):
        raise TamperedExport(f"{mpath}: the signature does not verify (the manifest was altered)") from None
    fp = fingerprint(public)
    if manifest.get("key_fingerprint") != fp:
        raise TamperedExport(f"{mpath}: key_fingerprint does not match its public key")
    if expect_fingerprint and fp != expect_fingerprint.lower():
        raise TamperedExport(f"{mpath}: signed by key {fp[:16]}…, not the expected {expect_fingerprint[:16]}…")


def read_entries(folder: Path, problems: list[str]) -> Iterator[ExportedEntry]:
    path = folder / "records.jsonl"
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                kind, meta = d["kind"], d["meta"]
                if kind not in KINDS or not isinstance(meta, dict) or not meta.get("source") or not meta.get("key"):
                    raise ValueError("unknown kind or metadata without source/key")
                yield ExportedEntry(n, int(d["serial"]), int(d["time"]), kind, meta,
                                    base64.b64decode(d.get("data") or "", validate=True))
            except (ValueError, KeyError, TypeError, binascii.Error) as e:
                problems.append(f"{path} line {n}: skipped ({e.__class__.__name__}: {str(e)[:80]})")


def media_bytes(folder: Path, sha256: str) -> bytes | None:
    p = folder / "media" / sha256
    if not p.is_file():
        return None
    data = p.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == sha256 else None
