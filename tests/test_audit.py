"""The access audit log: every read is recorded before it is shown, tamper-evidently."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wxarchive.archive.archive import Archive
from wxarchive.archive.audit import AccessLog, AuditError
from wxarchive.archive.journal import iter_frames


def _cli(home: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wxarchive.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "WXARCHIVE_HOME": str(home), **env}, timeout=300)


@pytest.fixture
def home(ingested, tmp_path) -> Path:
    h = tmp_path / "home"
    shutil.copytree(ingested, h)
    return h


def _events(home: Path) -> list[dict]:
    done = _cli(home, "audit", "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_each_read_is_recorded_with_who_what_and_how_many(home):
    me = pwd.getpwuid(os.getuid()).pw_name
    found = _cli(home, "search", "合同", "--json")
    assert found.returncode == 0
    n = len(found.stdout.splitlines())
    assert n > 0
    assert _cli(home, "search", "合同", "--count").stdout.strip() == str(n)
    conv = json.loads(found.stdout.splitlines()[0])["conversation"]
    shown = _cli(home, "show", conv, WXARCHIVE_ON_BEHALF_OF="officer.li")
    assert shown.returncode == 0
    assert _cli(home, "status").returncode == 0
    events = _events(home)
    assert [e["action"] for e in events] == ["search", "search", "show", "status"]
    first, counted, show, status = events
    assert first["who"] == me and first["query"] == {"text": "合同"} and first["results"] == n
    assert counted["query"] == {"text": "合同", "count_only": True} and counted["results"] == n
    assert show["on_behalf_of"] == "officer.li" and show["query"] == {"conversation": conv}
    assert show["results"] == len([ln for ln in shown.stdout.splitlines() if ln[:4].isdigit()])
    assert status["results"] > 300
    assert all(e["at"].endswith("+08:00") for e in events)  # shown in the configured zone
    assert [e["serial"] for e in events] == list(range(1, 5))
    # listing the log is itself recorded
    again = _events(home)
    assert again[-1]["action"] == "audit" and again[-1]["results"] == 4 and len(again) == 5
    only = _cli(home, "audit", "--json", "--action", "show")
    assert [json.loads(x)["action"] for x in only.stdout.splitlines()] == ["show"]
    mine = _cli(home, "audit", "--json", "--user", "officer.li")
    assert len(mine.stdout.splitlines()) == 1


def test_a_read_that_cannot_be_recorded_is_refused(home):
    (home / "audit").write_text("not a directory")  # the log cannot be written
    done = _cli(home, "search", "合同", "--json")
    assert done.returncode == 2
    answer = json.loads(done.stdout)  # no result: only the error, as JSON for the script
    assert answer["ok"] is False and "cannot record this access in the audit log" in answer["error"]
    assert "cannot record this access in the audit log" in done.stderr and "Traceback" not in done.stderr


def test_the_log_is_encrypted_and_verified(home):
    assert _cli(home, "search", "机密报价单XYZ").returncode == 0
    files = [p for p in (home / "audit").rglob("*") if p.is_file()]
    assert files and all("机密报价单XYZ".encode() not in p.read_bytes() for p in files)
    ok = _cli(home, "verify", "--json")
    assert ok.returncode == 0, ok.stdout
    assert json.loads(ok.stdout)["audit_entries"] == 1

    seg = sorted((home / "audit").glob("seg-*.wxj"))[0]
    raw = bytearray(seg.read_bytes())
    raw[-40] ^= 0x04  # inside the last entry's ciphertext
    seg.write_bytes(bytes(raw))
    bad = _cli(home, "verify")
    assert bad.returncode == 1
    assert f"audit: audit/{seg.name} entry 2" in bad.stdout  # entry 2: the first verify's own event


def test_an_entry_cut_off_the_end_is_caught_by_the_signed_head(home):
    for text in ("a", "b", "c"):
        assert _cli(home, "search", text, "--count").returncode == 0
    seg = sorted((home / "audit").glob("seg-*.wxj"))[-1]
    last = [fr for fr in iter_frames(seg) if not isinstance(fr, tuple)][-1]
    with open(seg, "r+b") as f:
        f.truncate(last.offset)
    bad = _cli(home, "verify")
    assert bad.returncode == 1
    assert "audit/head.json entry 3: signed entry 3 but the access log ends at 2" in bad.stdout


def test_readers_record_beside_a_running_writer(home):
    with Archive.open(home) as writer:  # an ingest holds the writer lock
        done = _cli(home, "search", "合同", "--count")
        assert done.returncode == 0, done.stderr
        assert writer.journal.head_serial > 0
    events = list(AccessLog(home, Archive.open(home, readonly=True).master, "x").events())
    assert [e.action for e in events] == ["search"]


def test_record_failure_is_an_audit_error(tmp_path, master):
    (tmp_path / "audit").write_text("")
    with pytest.raises(AuditError, match="refusing to show results"):
        AccessLog(tmp_path, master, "wxa-test").record("search", query={"text": "x"})


def test_admin_actions_are_listed_with_the_reads(home, tmp_path, monkeypatch):
    from conftest import copy_archive

    home, key = copy_archive(home, tmp_path / "own")  # its own key file: the rotation leaves the shared one alone
    monkeypatch.setenv("WXARCHIVE_MASTER_KEY_FILE", str(key))
    assert _cli(home, "checkpoint", "--out", str(tmp_path / "cp.json")).returncode == 0
    assert _cli(home, "keys", "rotate").returncode == 0
    events = _events(home)
    assert [e["action"] for e in events[:2]] == ["admin.checkpoint", "admin.keys.rotate"]
    assert events[0]["query"]["exported_to"] == str(tmp_path / "cp.json")
    assert events[1]["query"]["rewrapped"] > 10 and events[1]["query"]["journal_serial"] > 0
    only = _cli(home, "audit", "--json", "--action", "admin.keys.rotate")
    assert len(only.stdout.splitlines()) == 1


def test_mistyped_filters_are_errors_not_empty_results(home):
    bad = _cli(home, "search", "--type", "bogus", "--count")
    assert bad.returncode == 2 and "unknown message type 'bogus'" in bad.stderr
    assert _cli(home, "search", "--type", "revoke", "--count").stdout.strip() != "0"  # a WeCom msgtype
    bad = _cli(home, "audit", "--action", "bogus")
    assert bad.returncode == 2 and "--action 'bogus'" in bad.stderr
    some = _cli(home, "search", "合同", "--limit", "1")
    total = _cli(home, "search", "合同", "--count").stdout.strip()
    assert f"1 of {total} message(s)" in some.stderr


def _read_then_checkpoint(home: Path) -> dict:
    """Some reads, then a writer's checkpoint: it anchors the access log's signed head."""
    for text in ("a", "b"):
        assert _cli(home, "search", text, "--count").returncode == 0
    assert _cli(home, "checkpoint").returncode == 0
    newest = sorted((home / "journal" / "checkpoints").glob("cp-*.json"))[-1]
    return json.loads(newest.read_text())


def test_checkpoints_anchor_the_access_log(home):
    cp = _read_then_checkpoint(home)
    # the two searches and the checkpoint command's own admin event (signed on its close)
    assert cp["audit_serial"] == 3 and len(cp["audit_hash"]) == 64
    clean = _cli(home, "verify", "--json")
    assert clean.returncode == 0, clean.stdout
    # the anchor is part of what is signed: changing it breaks the checkpoint's signature
    newest = sorted((home / "journal" / "checkpoints").glob("cp-*.json"))[-1]
    newest.write_text(json.dumps({**cp, "audit_serial": 1}))
    forged = _cli(home, "verify")
    assert forged.returncode == 1
    assert f"journal/checkpoints/{newest.name} entry {cp['serial']}: signature does not verify" in forged.stdout


def test_a_deleted_access_log_is_caught_by_the_checkpoint_that_anchored_it(home):
    cp = _read_then_checkpoint(home)
    shutil.rmtree(home / "audit")
    bad = _cli(home, "verify")
    assert bad.returncode == 1
    assert f"audit: audit/ entry {cp['audit_serial']}: missing, but journal/checkpoints/" in bad.stdout
    assert "(the access log was deleted)" in bad.stdout


def test_a_deleted_access_log_and_every_checkpoint_are_caught_by_the_journal_anchor(home):
    """The access log's head is also journaled (``audit.anchor``, in the hash chain) when a
    checkpoint is signed: deleting audit/ with every checkpoint file still leaves a trace."""
    cp = _read_then_checkpoint(home)
    with Archive.open(home, readonly=True) as ar:
        anchors = [e for e in ar.journal.entries(kinds={"audit.anchor"})]
    assert anchors and anchors[-1].meta == {"audit_serial": cp["audit_serial"], "audit_hash": cp["audit_hash"]}
    assert anchors[-1].serial <= cp["serial"]  # journaled before the checkpoint that signs it
    shutil.rmtree(home / "audit")
    shutil.rmtree(home / "journal" / "checkpoints")
    bad = _cli(home, "verify")
    assert bad.returncode == 1, bad.stdout
    assert (f"audit: audit/ entry {cp['audit_serial']}: missing, but journal entry {anchors[-1].serial} "
            "(audit.anchor) vouches for") in bad.stdout


def test_an_unchanged_access_log_is_not_anchored_again(home):
    _read_then_checkpoint(home)
    with Archive.open(home, readonly=True) as ar:
        before = sum(1 for _ in ar.journal.entries(kinds={"audit.anchor"}))
    with Archive.open(home) as ar:  # a writer that appends and closes, nobody read meanwhile
        ar.journal.append("test.record", {"source": "s", "key": "k"}, b"x")
    with Archive.open(home, readonly=True) as ar:
        assert sum(1 for _ in ar.journal.entries(kinds={"audit.anchor"})) == before
    assert _cli(home, "verify").returncode == 0


def test_an_access_log_cut_back_and_re_signed_is_caught_by_the_anchor(home):
    """Cutting entries and signing a new head needs the signing key; even then the journal's
    checkpoint still vouches for the entry that was removed."""
    cp = _read_then_checkpoint(home)
    seg = sorted((home / "audit").glob("seg-*.wxj"))[-1]
    frames = [fr for fr in iter_frames(seg) if not isinstance(fr, tuple)]
    keep = next(fr for fr in frames if fr.serial == cp["audit_serial"])
    with open(seg, "r+b") as f:
        f.truncate(keep.offset)  # the anchored entry and everything after it gone
    with Archive.open(home) as ar:  # re-sign the log's head as an insider with the keys could
        from wxarchive.archive.journal import Journal

        j = Journal.open(home / "audit", ar.master, readonly=True)
        head = ar.signer.sign(ar.archive_id, keep.serial - 1, frames[keep.serial - 2].hash, seg.name)
        (home / "audit" / "head.json").write_text(head.to_json())
        j.close()
    bad = _cli(home, "verify")
    assert bad.returncode == 1
    assert (f"vouches for access-log entry {cp['audit_serial']} but the log ends at {cp['audit_serial'] - 1} "
            "(entries removed)") in bad.stdout


def test_a_reader_never_cuts_access_log_entries_its_signed_head_vouches_for(home):
    """A damaged length field in the access log looks like a torn tail: the reader appending its
    read must refuse (the signed head covers those entries), not cut them."""
    for args in (("status",), ("status",), ("search", "合同")):
        assert _cli(home, *args).returncode == 0
    seg = sorted((home / "audit").glob("seg-*.wxj"))[-1]
    first = next(fr for fr in iter_frames(seg) if not isinstance(fr, tuple))
    raw = bytearray(seg.read_bytes())
    raw[first.offset] = 0xFF
    seg.write_bytes(bytes(raw))
    done = _cli(home, "status")
    assert done.returncode == 2 and "refusing to show results" in done.stderr and "Traceback" not in done.stderr
    assert seg.read_bytes() == bytes(raw) and not (home / "audit" / "torn").exists()


def test_a_torn_access_log_tail_is_cut_kept_and_said_in_the_log(home):
    assert _cli(home, "status").returncode == 0
    seg = sorted((home / "audit").glob("seg-*.wxj"))[-1]
    seg.write_bytes(seg.read_bytes() + b"\x00\x00\x01\x00partial frame of a reader killed mid-append")
    assert _cli(home, "status").returncode == 0
    events = _events(home)
    repair = [e for e in events if e["action"] == "audit.repair"]
    assert len(repair) == 1 and repair[0]["query"]["reason"] == "incomplete final frame"
    assert (home / "audit" / repair[0]["query"]["kept"]).exists()
    assert [e["action"] for e in events][-2:] == ["audit.repair", "status"]


def test_an_export_that_cannot_be_recorded_leaves_no_file(home, tmp_path, monkeypatch):
    assert _cli(home, "status").returncode == 0  # the log exists, signed
    (home / "audit" / "head.json").unlink()  # now it can no longer be appended to
    out = tmp_path / "out"
    done = _cli(home, "export", "--format", "csv", "--out", str(out))
    assert done.returncode == 2 and "refusing to show results" in done.stderr
    assert not out.exists()  # refused before any file was written
    # and when the record fails only after the files are written, they are removed
    from wxarchive.archive import audit

    ok = tmp_path / "ok"
    calls = []

    def fail_second(self, *a, **k):
        calls.append(1)
        raise audit.AuditError("audit log: disk full; refusing to show results")

    from typer.testing import CliRunner

    from wxarchive import cli

    monkeypatch.setattr(audit.AccessLog, "check", lambda self: None)
    monkeypatch.setattr(audit.AccessLog, "record", fail_second)
    res = CliRunner().invoke(cli.app, ["--home", str(home), "export", "--format", "jsonl", "--out", str(ok)])
    assert res.exit_code != 0 and calls and not ok.exists()


def test_a_reader_never_starts_a_new_access_log_where_a_checkpoint_vouches_for_one(home):
    cp = _read_then_checkpoint(home)
    shutil.rmtree(home / "audit")
    done = _cli(home, "search", "合同")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"missing, but journal/checkpoints/cp-{cp['serial']:012d}.json vouches for its entry " \
           f"{cp['audit_serial']}" in done.stderr
    assert not (home / "audit").exists()  # nothing started in its place


def test_an_access_log_replaced_after_every_checkpoint_was_deleted_is_caught_by_every_anchor(home):
    """Deleting audit/ and the checkpoints, letting a reader start a fresh log and a writer anchor
    it: the journal's earlier anchors still vouch for the log that was there."""
    cp = _read_then_checkpoint(home)
    shutil.rmtree(home / "audit")
    shutil.rmtree(home / "journal" / "checkpoints")
    assert _cli(home, "search", "a", "--count").returncode == 0  # no checkpoint left to vouch: a new log
    assert _cli(home, "checkpoint").returncode == 0  # a writer anchors the new log's head
    bad = _cli(home, "verify")
    assert bad.returncode == 1, bad.stdout
    assert "(the access log was rolled back or replaced)" in bad.stdout
    assert f"vouches for access-log entry {cp['audit_serial']}" in bad.stdout or \
           f"the access log no longer holds the entry {cp['audit_serial']}" in bad.stdout
