"""Master key rotation: data keys re-wrapped, content untouched, crash-safe and resumable."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_archive
from wxarchive.archive import rotation
from wxarchive.archive.archive import Archive
from wxarchive.archive.keys import ROTATION_FILE, LocalMasterKey
from wxarchive.archive.verify import identify, verify_archive


@pytest.fixture
def copy(ingested, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A copy of the ingested archive with its own master key file (env for this test)."""
    home, key = copy_archive(ingested, tmp_path)
    monkeypatch.setenv("WXARCHIVE_MASTER_KEY_FILE", str(key))
    return home, key


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))


def _verify_ok(home: Path) -> None:
    archive_id, master = identify(home)
    report = verify_archive(home, master, archive_id)
    assert report.ok, [p.line() for p in report.problems[:5]]


def _blob_bodies(home: Path) -> dict[str, bytes]:
    out = {}
    for p in (home / "blobs").rglob("*"):
        if p.is_file():
            raw = p.read_bytes()
            n = int.from_bytes(raw[4:6], "big")
            out[p.name] = raw[6 + n :]  # nonce + ciphertext: must not change
    return out


def test_rotation_rewraps_keys_and_leaves_content_alone(copy):
    home, key = copy
    old_key = key.read_text()
    segs = {p.name: p.read_bytes() for p in (home / "journal").glob("seg-*.wxj")}
    bodies = _blob_bodies(home)
    wrapped = {p: p.read_bytes() for p in (home / "journal" / "keys").glob("*.key")}
    before = _cli(home, "search", "合同", "--json").stdout
    done = _cli(home, "keys", "rotate")
    assert done.returncode == 0, done.stderr
    assert "master key rotated" in done.stdout and "back it up" in done.stdout
    assert key.read_text() != old_key and oct(key.stat().st_mode & 0o777) == "0o600"
    assert not (home / "keys" / ROTATION_FILE).exists() and not key.with_name(key.name + ".new").exists()
    for name, data in segs.items():  # journal content untouched (the rotation event is appended)
        assert (home / "journal" / name).read_bytes()[: len(data)] == data
    assert _blob_bodies(home) == bodies
    assert all(p.read_bytes() != w for p, w in wrapped.items())
    assert _cli(home, "search", "合同", "--json").stdout == before
    _verify_ok(home)
    with Archive.open(home, readonly=True) as ar:
        events = [e for e in ar.journal.entries(kinds={"admin.keys.rotate"})]
    assert len(events) == 1
    ev = events[0].meta
    assert ev["from"] != ev["to"] and ev["rewrapped"] > 10 and ev["who"]
    # the old key opens nothing any more
    old = LocalMasterKey(bytes.fromhex(old_key.strip()), "old")
    archive_id, _ = identify(home)
    from wxarchive.archive.verify import CannotVerify

    with pytest.raises(CannotVerify, match="wrong master key"):
        verify_archive(home, old, archive_id, blobs=False, catalog=False)


def _crashing_rotation(home: Path, key_file: str, after: int) -> None:
    """In a child: rotate, but die (as kill -9 would) after ``after`` files were re-wrapped,
    or (``after`` = -1) once all are, just before the new key file is installed."""
    count = {"n": 0}
    for name in ("_rewrap_key_file", "_rewrap_blob"):
        real = getattr(rotation, name)

        def wrapper(*a, _real=real):
            if 0 <= after <= count["n"]:
                os._exit(137)
            count["n"] += 1
            return _real(*a)

        setattr(rotation, name, wrapper)
    real_replace = os.replace

    def replace(src, dst):  # also die just before the new key file is installed
        if str(src).endswith(".new"):
            os._exit(137)
        return real_replace(src, dst)

    os.replace = replace
    os.environ["WXARCHIVE_MASTER_KEY_FILE"] = key_file
    with Archive.open(home) as ar:
        ar.rotate_master_key()
    os._exit(0)


@pytest.mark.parametrize("after", [0, 1, 5, 40, -1])
def test_a_crash_mid_rotation_loses_nothing_and_resumes(copy, after):
    home, key = copy
    before = _cli(home, "search", "合同", "--json").stdout
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_crashing_rotation, args=(home, str(key), after))
    p.start()
    p.join(120)
    assert p.exitcode == 137
    assert (home / "keys" / ROTATION_FILE).exists()
    _verify_ok(home)  # mid-rotation the archive still opens and verifies (either key unwraps)
    assert _cli(home, "search", "合同", "--json").stdout == before
    done = _cli(home, "keys", "rotate")  # resume
    assert done.returncode == 0, done.stderr
    assert not (home / "keys" / ROTATION_FILE).exists()
    _verify_ok(home)
    assert _cli(home, "search", "合同", "--json").stdout == before


def test_a_crash_after_installing_the_new_key_is_finished_by_rerunning(copy):
    home, key = copy
    assert _cli(home, "keys", "rotate").returncode == 0
    new_key = key.read_text()
    (home / "keys" / ROTATION_FILE).write_text("{}")  # as if killed before removing the marker
    _verify_ok(home)
    assert _cli(home, "keys", "rotate").returncode == 0
    assert key.read_text() == new_key and not (home / "keys" / ROTATION_FILE).exists()
    _verify_ok(home)


def test_rotation_refuses_a_key_from_the_environment(copy, monkeypatch):
    home, key = copy
    monkeypatch.delenv("WXARCHIVE_MASTER_KEY_FILE")
    monkeypatch.setenv("WXARCHIVE_MASTER_KEY", key.read_text().strip())
    done = _cli(home, "keys", "rotate")
    assert done.returncode == 2 and "needs the master key in a file" in done.stderr
    assert "Traceback" not in done.stderr


def test_public_key_for_auditors(copy):
    home, _ = copy
    done = _cli(home, "keys", "public")
    assert done.returncode == 0 and done.stdout.startswith("-----BEGIN PUBLIC KEY-----")
