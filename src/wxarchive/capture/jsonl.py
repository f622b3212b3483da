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
KINDS = {"wecom.chatdata", "wecom.message", "media", "quarantine"}


class ImportError_(Exception):
    """The folder is not an export we can read; the message names the file."""


@dataclass
class ExportedEntry:
    line: int
    serial: int  # in the exporting archive
    time: int
    kind: str
    meta: dict[str, Any]
    data: bytes


def open_export(folder: Path) -> dict[str, Any]:
    """The export's manifest, after checking it is one of ours and complete."""
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
    for f in manifest.get("files", []):
        p = folder / f["path"]
        if f["path"] in ("records.jsonl",) or f["path"].startswith("media/"):
            if not p.is_file():
                raise ImportError_(f"{p}: listed in the manifest but missing")
            h = hashlib.sha256(p.read_bytes()).hexdigest()
            if h != f["sha256"]:
                raise ImportError_(f"{p}: SHA-256 differs from the manifest (altered after export)")
    return manifest


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
