"""The SQLCipher catalog option: with it, not even the catalog holds plaintext on disk."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import answer_messages, tenant_options

pytest.importorskip("sqlcipher3", reason="sqlcipher3-binary ships wheels for x86_64 only")

from wxarchive.archive.archive import Archive  # noqa: E402
from wxarchive.archive.verify import identify, verify_archive  # noqa: E402


@pytest.fixture(scope="module")
def encrypted(tenant, tmp_path_factory) -> tuple[Path, Path]:
    """An archive created through the CLI with catalog_encryption = "sqlcipher"."""
    from wxarchive.simulate.server import serve

    home = tmp_path_factory.mktemp("sqlcipher") / "home"
    home.mkdir()
    (home / "config.toml").write_text('[archive]\ncatalog_encryption = "sqlcipher"\n')
    key = home.parent / "master.key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    opts = tenant_options(tenant, "")
    secret = home.parent / "secret"
    secret.write_text(opts.secret)
    env = {**os.environ, "WXARCHIVE_MASTER_KEY_FILE": str(key)}
    with serve(tenant) as sim:
        cmd = [sys.executable, "-m", "wxarchive.cli", "--home", str(home), "ingest", "wecom", "--corp-id",
               opts.corp_id, "--secret-file", str(secret), "--proxy", sim.proxy_url, "--limit", "100"]
        for ver in opts.private_keys:
            cmd += ["--private-key", f"{ver}={tenant / 'keys' / f'private_v{ver}.pem'}"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return home, key


def _cli(home: Path, key: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "WXARCHIVE_MASTER_KEY_FILE": str(key)})


def test_the_catalog_file_is_ciphertext(encrypted, tenant):
    home, key = encrypted
    raw = b"".join(p.read_bytes() for p in home.glob("catalog.db*"))
    assert not raw.startswith(b"SQLite format 3")
    texts = [m["plaintext"]["text"]["content"] for m in answer_messages(tenant)
             if (m.get("plaintext") or {}).get("msgtype") == "text"
             and len(m["plaintext"]["text"]["content"].encode("utf-8", "surrogatepass")) >= 12][:200]
    assert len(texts) > 50
    for t in texts:
        try:
            assert t.encode() not in raw
        except UnicodeEncodeError:
            continue
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(home / "catalog.db").execute("SELECT count(*) FROM messages").fetchone()
    assert (home / "keys" / "catalog.key").exists()


def test_search_status_verify_and_rotation_work_on_it(encrypted, tmp_path):
    import shutil

    home0, key0 = encrypted
    home, key = tmp_path / "home", tmp_path / "master.key"
    shutil.copytree(home0, home)
    shutil.copy(key0, key)
    key.chmod(0o600)
    found = _cli(home, key, "search", "合同", "--json")
    assert found.returncode == 0, found.stderr
    assert len(found.stdout.splitlines()) > 0
    status = json.loads(_cli(home, key, "status", "--json").stdout)
    assert status["messages"] > 300 and status["reconciliation"]["reconciled"]
    assert _cli(home, key, "verify").returncode == 0
    deep = _cli(home, key, "verify", "--deep", "--json")  # the scratch rebuild is SQLCipher too
    assert deep.returncode == 0 and json.loads(deep.stdout)["deep_checked"] > 0, deep.stdout + deep.stderr
    assert _cli(home, key, "keys", "rotate").returncode == 0  # the catalog key is re-wrapped too
    assert _cli(home, key, "search", "合同", "--json").stdout == found.stdout
    assert _cli(home, key, "reindex").returncode == 0
    assert _cli(home, key, "search", "合同", "--json").stdout == found.stdout
    archive_id, master = identify(home, str(key))
    assert verify_archive(home, master, archive_id).ok


def test_a_wrong_catalog_key_is_a_clear_error(encrypted, tmp_path):
    import shutil

    home0, key0 = encrypted
    home = tmp_path / "home"
    shutil.copytree(home0, home)
    with Archive.open(home, readonly=True, master_key_file=str(key0)) as ar:
        other = ar.master.wrap(os.urandom(32))
    (home / "keys" / "catalog.key").write_bytes(other)
    done = _cli(home, key0, "status")
    assert done.returncode == 2
    assert "the catalog key does not open this SQLCipher database" in done.stderr and "Traceback" not in done.stderr


def test_asking_for_sqlcipher_on_a_plain_catalog_is_an_error(ingested, tmp_path):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(ingested, home)
    (home / "config.toml").write_text('[archive]\ncatalog_encryption = "sqlcipher"\n')
    done = _cli(home, Path(os.environ.get("WXARCHIVE_MASTER_KEY_FILE", "")), "status")
    assert done.returncode == 2 and "this archive's catalog is plain SQLite" in done.stderr


def test_the_demo_honours_catalog_encryption(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[archive]\ncatalog_encryption = "sqlcipher"\n')
    env = {**os.environ, "WXARCHIVE_MASTER_KEY_FILE": str(tmp_path / "master.key")}
    done = subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(home), "demo", "-n", "100",
                           "--tenant", str(tmp_path / "tenant")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not (home / "catalog.db").read_bytes().startswith(b"SQLite format 3")
    assert (home / "keys" / "catalog.key").exists()
