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
# state.jsonl (an export of everything): directory, censuses and holds (export/jsonl.py writes them)
STATE_KINDS = {"wecom.directory", "directory.import", "wechat.directory", "directory.snapshot", "wechat.census",
               "admin.hold.create", "admin.hold.release"}


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
    from wxarchive.export.manifest import AlteredExport, ManifestError, check_export

    try:
        manifest = check_export(folder, expect_fingerprint)
    except AlteredExport as e:
        raise TamperedExport(str(e)) from None
    except ManifestError as e:
        raise ImportError_(str(e)) from None
    mpath = folder / "manifest.json"
    if manifest.get("format") != FORMAT:
        raise ImportError_(f"{mpath}: format {manifest.get('format')!r} is not {FORMAT} (only an export of record "
                           "re-imports; 'wxarchive verify-export' checks any)")
    if "records.jsonl" not in {f["path"] for f in manifest["files"]}:
        raise TamperedExport(f"{mpath}: lists no records.jsonl")
    return manifest


def read_entries(folder: Path, problems: list[str]) -> Iterator[ExportedEntry]:
    """The entries of ``records.jsonl``: each names its source and key."""
    return _read(folder / "records.jsonl", KINDS, True, problems)


def read_state(folder: Path, problems: list[str]) -> Iterator[ExportedEntry]:
    """The entries of ``state.jsonl`` (absent from exports of a selection, and from exports
    written before it existed: then nothing)."""
    path = folder / "state.jsonl"
    return _read(path, STATE_KINDS, False, problems) if path.is_file() else iter(())


def _read(path: Path, kinds: set[str], keyed: bool, problems: list[str]) -> Iterator[ExportedEntry]:
    """Each line of ``path`` as an entry of one of ``kinds`` (``keyed``: its metadata must name
    a source and key); a line that is not one is skipped and said in ``problems``."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                kind, meta = d["kind"], d["meta"]
                if kind not in kinds or not isinstance(meta, dict) or (
                        keyed and (not meta.get("source") or not meta.get("key"))):
                    raise ValueError("unknown kind or metadata without " + ("source/key" if keyed else "an object"))
                yield ExportedEntry(n, int(d["serial"]), int(d["time"]), kind, meta,
                                    base64.b64decode(d.get("data") or "", validate=True))
            except (ValueError, KeyError, TypeError, binascii.Error) as e:
                problems.append(f"{path} line {n}: skipped ({e.__class__.__name__}: {str(e)[:80]})")


def state_digest(kind: str, time: int, meta: dict[str, Any], data: bytes) -> str:
    """What makes two state entries the same one (an import of it repeated, or carried by a
    purge): kind, time, metadata but where it was carried or imported from, and data."""
    body = {k: v for k, v in meta.items() if k not in ("retained_from", "imported_from")}
    h = hashlib.sha256(json.dumps([kind, time, body], ensure_ascii=False, sort_keys=True).encode())
    h.update(data)
    return h.hexdigest()


def media_bytes(folder: Path, sha256: str) -> bytes | None:
    p = folder / "media" / sha256
    if not p.is_file():
        return None
    data = p.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == sha256 else None
