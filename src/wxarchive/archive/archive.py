"""The archive facade: one home directory holding journal, blobs and catalog.

Layout of ``<home>``::

    archive.json      archive id, format version (no secrets)
    config.toml       optional settings (see wxarchive.config)
    journal/          segments (seg-*.wxj) and wrapped data keys (keys/)
    blobs/            encrypted media, content-addressed
    catalog.db        the derived SQLite catalog (plaintext text and metadata: see docs/security.md)
    logs/             operational logs: no message text, keys, secrets or sdkfileids
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from wxarchive.archive.blobs import BlobStore
from wxarchive.archive.catalog.sqlite import Catalog
from wxarchive.archive.journal import Journal
from wxarchive.archive.keys import LocalMasterKey, load_master_key, master_key_for_new_archive

FORMAT = 1


class ArchiveError(Exception):
    """The archive cannot be opened or used; the message says why and where."""


@dataclass
class Archive:
    home: Path
    archive_id: str
    master: LocalMasterKey
    journal: Journal
    blobs: BlobStore
    catalog: Catalog

    @classmethod
    def open(cls, home: Path, *, create: bool = False, master_key_file: str | None = None) -> Archive:
        info_path = home / "archive.json"
        if not info_path.exists():
            if not create:
                raise ArchiveError(
                    f"no archive at {home} (run an ingest to create one, or pass --home / set WXARCHIVE_HOME)"
                )
            home.mkdir(parents=True, exist_ok=True)
            os.chmod(home, 0o700)
            info = {"archive_id": "wxa-" + secrets.token_hex(8), "format": FORMAT,
                    "created_at": int(time.time() * 1000)}
            tmp = info_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            os.replace(tmp, info_path)
            master = master_key_for_new_archive(info["archive_id"], master_key_file)
        else:
            try:
                info = json.loads(info_path.read_text())
            except (OSError, ValueError) as e:
                raise ArchiveError(f"{info_path}: unreadable ({e.__class__.__name__})") from None
            if info.get("format") != FORMAT:
                raise ArchiveError(f"{info_path}: archive format {info.get('format')} is not supported")
            master = load_master_key(info["archive_id"], master_key_file)
        journal = Journal.open(home / "journal", master)
        blobs = BlobStore(home / "blobs", master)
        catalog = Catalog.open(home / "catalog.db")
        return cls(home, info["archive_id"], master, journal, blobs, catalog)

    def close(self) -> None:
        self.journal.close()
        self.catalog.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
