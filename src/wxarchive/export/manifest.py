"""What every export writes beside its files: ``manifest.json``, the chain-of-custody record.

It holds the query, who ran it (and on whose behalf), when and where, the archive and the
checkpoint the export was read at, every file with its SHA-256 and size, and counts
reconciled with the search count for the same query. It is signed (Ed25519) with the
archive's signing key, whose public half and fingerprint it carries: a recipient can prove
that no file was altered, added or removed since (``wxarchive verify-export DIR``, and
``wxarchive import`` before it imports a jsonl export), and pin who signed it (``--expect-key``
with the fingerprint ``wxarchive keys public`` printed at the sender).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wxarchive.archive.audit import current_user
from wxarchive.archive.checkpoints import Signer, list_checkpoints, public_pem, read_checkpoint


class ExportError(Exception):
    """The export cannot be written; the message names the path."""


def prepare_out(out: Path, *subdirs: str) -> None:
    """``out`` must be a new or empty folder (an export never mixes with older files)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: not empty (an export goes into a new or empty folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for d in subdirs:
            (out / d).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{out}: cannot create ({e.strerror or e.__class__.__name__})") from None


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def latest_checkpoint(archive):
    """The newest signed checkpoint, carrying the public key (exports run read-only: beside a
    running ingest the journal may already be past it; the manifest says how far)."""
    cps = list_checkpoints(archive.journal.dir)
    pub = archive.home / "keys" / "signing.pub"
    if not cps or not pub.exists():
        return None
    return replace(read_checkpoint(cps[-1]), public_key=pub.read_text())


def list_files(out: Path) -> list[dict[str, Any]]:
    """Every file under ``out`` but the manifest, with SHA-256 and size, in path order."""
    files = []
    for p in sorted(p for p in out.rglob("*") if p.is_file() and p.relative_to(out).as_posix() != "manifest.json"):
        sha, size = sha256_file(p)
        files.append({"path": p.relative_to(out).as_posix(), "sha256": sha, "size": size})
    return files


def manifest_payload(manifest: dict[str, Any]) -> bytes:
    """The bytes a manifest's signature covers: all of it but the signature, canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def write_manifest(archive, out: Path, *, fmt: str, query: dict[str, Any], counts: dict[str, Any],
                   **extra: Any) -> dict[str, Any]:
    """Hash every file in ``out``, sign, write ``out/manifest.json``; returns the manifest."""
    cp = latest_checkpoint(archive)
    now = time.time_ns() // 1_000_000
    manifest = {
        "format": fmt, "archive_id": archive.archive_id, "query": query,
        "exported_by": current_user(), "on_behalf_of": os.environ.get("WXARCHIVE_ON_BEHALF_OF") or None,
        "host": socket.gethostname(), "exported_at": now,
        "exported_at_utc": datetime.fromtimestamp(now / 1000, timezone.utc).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),  # the same instant, for people (exported_at: ms since the epoch)
        "checkpoint_serial": cp.serial if cp else None,
        **extra,
        "counts": counts,
        "files": list_files(out),
    }
    signer = Signer.load(archive.home / "keys", archive.master)
    if signer is not None:  # the hashes mean something only if the list of them is signed
        manifest["public_key"] = public_pem(signer.public)
        manifest["key_fingerprint"] = signer.fingerprint
        manifest["signature"] = signer.private.sign(manifest_payload(manifest)).hex()
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return manifest


class ManifestError(Exception):
    """The folder is not an export that can be checked (no or unreadable manifest.json)."""


class AlteredExport(ManifestError):
    """The export was altered after it was written, is unsigned, or is signed by another key than expected."""


def check_export(folder: Path, expect_fingerprint: str | None = None) -> dict[str, Any]:
    """The export's manifest, after checking its signature (by the expected key, if given),
    that every file it lists is there with that SHA-256, and that it lists every file there."""
    from cryptography.exceptions import InvalidSignature

    from wxarchive.archive.checkpoints import CheckpointError, fingerprint, load_public_pem

    mpath = folder / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{folder}: not a wxarchive export (no manifest.json)") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{mpath}: unreadable ({e.__class__.__name__})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise ManifestError(f"{mpath}: not a wxarchive export manifest")
    if not manifest.get("signature") or not manifest.get("public_key"):
        raise AlteredExport(f"{mpath}: not signed")
    try:
        public = load_public_pem(str(manifest["public_key"]), str(mpath))
        public.verify(bytes.fromhex(str(manifest["signature"])), manifest_payload(manifest))
    except (CheckpointError, InvalidSignature, ValueError):
        raise AlteredExport(f"{mpath}: the signature does not verify (the manifest was altered)") from None
    fp = fingerprint(public)
    if manifest.get("key_fingerprint") != fp:
        raise AlteredExport(f"{mpath}: key_fingerprint does not match its public key")
    if expect_fingerprint and fp != expect_fingerprint.strip().lower():
        raise AlteredExport(f"{mpath}: signed by key {fp[:16]}…, not the expected {expect_fingerprint[:16]}…")
    listed, problems = set(), []  # every file is checked: a recipient is told all that differs
    for f in manifest["files"]:
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) or ".." in Path(f["path"]).parts \
                or Path(f["path"]).is_absolute():
            raise AlteredExport(f"{mpath}: a file entry is not a relative path inside the export")
        p = folder / f["path"]
        listed.add(f["path"])
        if not p.is_file():
            problems.append(f"{p}: listed in the manifest but missing")
        elif sha256_file(p)[0] != f.get("sha256"):
            problems.append(f"{p}: SHA-256 differs from the manifest (altered after export)")
    extra = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.relative_to(folder).as_posix() != "manifest.json"
                   and p.relative_to(folder).as_posix() not in listed)
    problems += [f"{folder / x}: not listed in the manifest (added after export)" for x in extra]
    if problems:
        shown = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise AlteredExport(shown if len(problems) == 1 else f"{len(problems)} files differ: {shown}")
    return manifest
