"""The disk image test: a stolen copy of the archive home reveals nothing but the catalog.

After a full ingest through the official SDK (media included), every file under the home
except the catalog (``catalog.db`` and its WAL, documented as plaintext in
docs/security.md) is searched byte for byte for message text, media bytes from the
answer key, the master key, the archive's signing key, the WeCom secret and the RSA
private keys.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from conftest import answer_messages
from wxarchive.archive.archive import Archive


def _texts(tenant: Path) -> set[str]:
    """Message texts long enough that finding one by chance in ciphertext is impossible."""
    out = set()
    for m in answer_messages(tenant):
        p = m.get("plaintext") or {}
        for key in ("text", "markdown"):
            c = (p.get(key) or {}).get("content") if isinstance(p.get(key), dict) else None
            if isinstance(c, str) and len(c.encode("utf-8", "surrogatepass")) >= 12:
                try:
                    c.encode()
                except UnicodeEncodeError:  # case X2's lone surrogate: never stored as such
                    continue
                out.add(c)
    return out


def _files(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file() and not p.name.startswith("catalog.db")]


def test_no_plaintext_keys_or_media_outside_the_catalog(ingested, tenant):
    texts = _texts(tenant)
    assert len(texts) > 100
    with Archive.open(ingested, readonly=True) as ar:
        master = ar.master.key
        from cryptography.hazmat.primitives import serialization

        from wxarchive.archive.checkpoints import Signer

        signing = Signer.load_or_create(ingested / "keys", ar.master).private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        with ar.catalog.engine.connect() as c:
            shas = [r[0] for r in c.exec_driver_sql(
                "SELECT DISTINCT sha256 FROM attachments WHERE state = 'present' AND size >= 256")]
        media = []
        for sha in shas:
            data = ar.blobs.get(sha)
            mid = len(data) // 2
            media.append((sha, data[mid : mid + 64]))
    assert len(media) > 20
    secrets = {
        "master key (raw)": master,
        "master key (hex)": master.hex().encode(),
        "signing key (raw)": signing,
        "WeCom secret": (tenant / "secret").read_text().strip().encode(),
    }
    for pem in (tenant / "keys").glob("private_v*.pem"):
        body = "".join(pem.read_text().splitlines()[1:-1])
        secrets[f"{pem.name} (base64)"] = body[:64].encode()
        secrets[f"{pem.name} (DER)"] = base64.b64decode(body)[40:104]
    files = _files(ingested)
    assert any(p.suffix == ".wxj" for p in files) and any("blobs" in p.parts for p in files)
    needles = [(f"message text {t[:8]!r}…", t.encode()) for t in texts]
    needles += [(f"media {sha[:12]}", chunk) for sha, chunk in media]
    needles += list(secrets.items())
    for p in files:
        raw = p.read_bytes()
        for what, needle in needles:
            assert needle not in raw, f"{p.relative_to(ingested)} holds {what}"


def test_the_catalog_is_where_text_lives(ingested, tenant):
    """The scan above would see text if it were there: the catalog does hold it (documented)."""
    texts = sorted(_texts(tenant))[:20]
    db = b"".join(p.read_bytes() for p in ingested.glob("catalog.db*"))
    assert all(t.encode() in db for t in texts)


def test_logs_hold_ids_and_counts_only(ingested, tenant, tmp_path):
    """A CLI run writes its operational log under the home: no text, no sdkfileid, no secret."""
    import os
    import shutil
    import subprocess
    import sys

    home = tmp_path / "home"
    shutil.copytree(ingested, home)
    env = {**os.environ, "WXARCHIVE_HOME": str(home)}
    for args in (["status"], ["search", "合同"], ["verify"], ["reindex"]):
        done = subprocess.run([sys.executable, "-m", "wxarchive.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, (args, done.stderr[-500:])
    logs = list((home / "logs").glob("*.log"))
    assert logs
    blob = b"".join(p.read_bytes() for p in logs)
    fileids: set[str] = set()

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "sdkfileid" and isinstance(x, str) and len(x) > 40:
                    fileids.add(x)
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v.startswith("{"):
            try:
                walk(json.loads(v))  # nested chatrecord items carry their content as a JSON string
            except ValueError:
                pass

    for m in answer_messages(tenant):
        walk(m.get("plaintext"))
    assert fileids
    for t in _texts(tenant):
        assert t.encode() not in blob
    for f in fileids:
        assert f[:40].encode() not in blob
    assert (tenant / "secret").read_text().strip().encode() not in blob
