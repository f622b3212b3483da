"""Bad input and misuse around the archive's integrity machinery (found by trying to break it)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_archive
from wxarchive.archive import audit as audit_mod
from wxarchive.archive.archive import Archive
from wxarchive.archive.audit import AccessLog, AuditError
from wxarchive.archive.journal import iter_frames


@pytest.fixture
def home(ingested, tmp_path, monkeypatch) -> Path:
    h, key = copy_archive(ingested, tmp_path)
    monkeypatch.setenv("WXARCHIVE_MASTER_KEY_FILE", str(key))
    return h


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def _clean(done: subprocess.CompletedProcess, code: int = 2) -> str:
    assert done.returncode == code, (done.returncode, done.stderr[-800:])
    assert "Traceback" not in done.stderr
    return done.stderr


def test_a_cut_access_log_is_not_papered_over_by_the_next_read(home):
    for t in ("a", "secret", "c"):
        assert _cli(home, "search", t, "--count").returncode == 0
    seg = sorted((home / "audit").glob("seg-*.wxj"))[-1]
    frames = [fr for fr in iter_frames(seg) if not isinstance(fr, tuple)]
    with open(seg, "r+b") as f:
        f.truncate(frames[-2].offset)  # the last two events gone
    assert "does not match its signed head" in _clean(_cli(home, "search", "x"))
    assert _cli(home, "verify").returncode == 1
    assert _cli(home, "verify").returncode == 1  # still: verify's own event did not re-sign over the cut


def test_a_wrong_master_key_writes_nothing(home, tmp_path):
    shutil.rmtree(home / "audit", ignore_errors=True)
    wrong = tmp_path / "wrong.key"
    wrong.write_text(os.urandom(32).hex())
    wrong.chmod(0o600)
    assert "wrong master key" in _clean(_cli(home, "search", "合同", WXARCHIVE_MASTER_KEY_FILE=str(wrong)))
    assert "wrong master key" in _clean(_cli(home, "search", "合同", WXARCHIVE_MASTER_KEY="11" * 32))
    assert not (home / "audit").exists()
    assert _cli(home, "search", "合同", "--count").returncode == 0  # the right key still works
    binary = tmp_path / "binary.key"
    binary.write_bytes(os.urandom(32))
    binary.chmod(0o600)
    assert "not 64 hex characters" in _clean(_cli(home, "status", WXARCHIVE_MASTER_KEY_FILE=str(binary)))


def test_a_deleted_or_emptied_catalog_is_reported(home):
    for p in home.glob("catalog.db*"):
        p.unlink()
    assert "catalog.db: missing" in _cli(home, "verify", "--no-blobs").stdout
    for args in (("status",), ("search", "--count"), ("hold", "list"), ("export", "--format", "csv", "--out",
                                                                         str(home.parent / "never"))):
        refused = _cli(home, *args)  # a reader makes no empty catalog to answer "0 messages" from
        assert refused.returncode == 2 and "no catalog" in refused.stderr and "wxarchive reindex" in refused.stderr
    assert not (home / "catalog.db").exists() and not (home.parent / "never").exists()
    (home / "catalog.db").write_bytes(b"")  # emptied
    assert "not a catalog (no schema revision)" in _clean(_cli(home, "status"))
    assert _cli(home, "reindex").returncode == 0
    assert _cli(home, "verify").returncode == 0
    (home / "catalog.db").write_bytes(b"garbage" * 100)
    for p in home.glob("catalog.db-*"):
        p.unlink()
    assert "not a usable catalog" in _clean(_cli(home, "status"))


def test_a_deleted_signing_key_is_reported_and_never_replaced(home):
    pub = (home / "keys" / "signing.pub").read_text()
    (home / "keys" / "signing.key").unlink()
    assert "keys/signing.key: missing" in _cli(home, "verify").stdout
    assert "restore the signing key from backup" in _clean(_cli(home, "checkpoint"))
    assert (home / "keys" / "signing.pub").read_text() == pub


def test_segment_header_fields_are_checked(home):
    seg = sorted((home / "journal").glob("seg-*.wxj"))[0]
    raw = seg.read_bytes()
    for field, new in ((b'"chain": "SHA-256"', b'"chain": "RHA-256"'), (b'"cipher": "AES-256-GCM"', b'"cipher": "AES-256-GCX"')):
        assert field in raw
        seg.write_bytes(raw.replace(field, new))
        bad = _cli(home, "verify", "--no-catalog", "--no-blobs")
        assert bad.returncode == 1 and "segment header altered" in bad.stdout
    seg.write_bytes(raw)


def test_no_checkpoints_at_all_is_noted(home):
    shutil.rmtree(home / "journal" / "checkpoints")
    done = _cli(home, "verify")
    assert "journal/checkpoints: none yet" in done.stdout


def test_user_mistakes_are_one_line_errors(home):
    assert "give a conversation id" in _clean(_cli(home, "show", ""))
    assert "not a date" in _clean(_cli(home, "search", "x", "--until", "9999-12-31"))
    assert "not a date" in _clean(_cli(home, "audit", "--until", "9999-12-31"))
    assert "unknown time zone" in _clean(_cli(home, "status", WXARCHIVE_TZ="Bogus/Zone"))
    (home / "config.toml").write_text("[archive]\nmaster_key_file = 5\n")
    assert "must be a string" in _clean(_cli(home, "status"))
    (home / "config.toml").unlink()
    assert "folder does not exist" in _clean(_cli(home, "checkpoint", "--out", "/nonexistent/x.json"))
    assert "is not before --until 2024-03-01: no time is in that range" in _clean(
        _cli(home, "search", "--since", "2024-03-10", "--until", "2024-03-01"))
    assert "no archive at" in _clean(_cli(home / "nowhere", "keys", "public"))
    info = (home / "archive.json").read_text()
    (home / "archive.json").write_text("[1]")
    assert "not an archive description" in _clean(_cli(home, "status"))
    (home / "archive.json").write_text(info)


def test_terminal_escapes_are_shown_inert(home):
    assert _cli(home, "status", WXARCHIVE_ON_BEHALF_OF="alice\x1b[2Kbob").returncode == 0
    listing = _cli(home, "audit").stdout
    assert "\x1b" not in listing and "alice\\x1b[2Kbob" in listing


def test_a_stuck_access_log_lock_times_out(home, monkeypatch):
    monkeypatch.setattr(audit_mod, "LOCK_WAIT", 0.3)
    (home / "audit").mkdir(exist_ok=True)
    fd = os.open(home / "audit" / "append.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with Archive.open(home, readonly=True) as ar:
            with pytest.raises(AuditError, match="locked by another process"):
                AccessLog(home, ar.master, ar.archive_id).record("search")
    finally:
        os.close(fd)


def test_rotation_refuses_a_damaged_blob_and_keeps_the_old_key(home):
    key = Path(os.environ["WXARCHIVE_MASTER_KEY_FILE"])
    blob = sorted(p for p in (home / "blobs").rglob("*") if p.is_file())[0]
    good = blob.read_bytes()
    blob.write_bytes(good[:5] + bytes([good[5] ^ 1]) + good[6:])
    assert "damaged blob" in _clean(_cli(home, "keys", "rotate"))
    assert not (home / "keys" / "rotation.json").exists() and not key.with_name(key.name + ".new").exists()
    blob.write_bytes(good)
    old = key.read_text()
    done = _cli(home, "keys", "rotate")
    assert done.returncode == 0 and "backups taken before now need it" in done.stdout
    retired = list(key.parent.glob(key.name + ".retired-*"))
    assert len(retired) == 1 and retired[0].read_text() == old


def _bytes_cli(home: Path, *args: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable.encode(), b"-m", b"wxarchive.cli", b"--home", str(home).encode(), *args],
                          capture_output=True, timeout=120)


def test_odd_input_from_a_break_it_trial_gets_one_line_errors(home):
    bad = b"x\xff"
    for args in ([b"show", bad], [b"hold", b"create", bad, b"--reason", b"r"], [b"audit", b"--user", bad],
                 [b"search", b"--around", bad], [b"checkpoint", b"--out", b"/tmp/" + bad]):
        done = _bytes_cli(home, *args)
        assert done.returncode == 2 and b"Traceback" not in done.stderr, (args, done.stderr[-500:])
        assert b"is not valid UTF-8" in done.stderr
    late = _cli(home, "hold", "create", "H-9", "--reason", "r", "--until", "9999-12-31T23:59:59-12:00")
    assert "out of range" in _clean(late)
    assert _cli(home, "hold", "list").returncode == 0
    (home / "journal" / "checkpoints" / "cp-abc.json").write_text("{}")  # a stray file is not a checkpoint
    assert _cli(home, "checkpoint").returncode == 0
    import sqlite3

    with sqlite3.connect(home / "catalog.db") as db:
        db.execute("DROP TABLE messages_uni")
    err = _clean(_cli(home, "search", "钱"))
    assert "the catalog cannot answer" in err and "wxarchive reindex" in err


def test_a_master_key_file_that_is_a_folder_is_named_as_such(home, tmp_path):
    folder = tmp_path / "keys-folder"
    folder.mkdir(mode=0o755)
    msg = _clean(_cli(home, "status", WXARCHIVE_MASTER_KEY_FILE=str(folder)))
    assert "is a folder: name the key file itself" in msg and "chmod" not in msg


def test_an_auditors_checkpoint_copy_is_never_overwritten(home, tmp_path):
    copy = tmp_path / "cp.json"
    assert _cli(home, "checkpoint", "--out", str(copy)).returncode == 0
    before = copy.read_bytes()
    assert "already exists" in _clean(_cli(home, "checkpoint", "--out", str(copy)))
    assert copy.read_bytes() == before


def test_audit_actions_by_prefix(home):
    assert _cli(home, "checkpoint").returncode == 0
    done = _cli(home, "audit", "--json", "--action", "admin.*")
    assert done.returncode == 0
    actions = {json.loads(x)["action"] for x in done.stdout.splitlines()}
    assert actions and all(a.startswith("admin.") for a in actions) and "admin.checkpoint" in actions
    assert "use one of" in _clean(_cli(home, "audit", "--action", "admin.nosuch"))
