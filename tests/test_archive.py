"""The archive facade: one writer at a time, readers that change nothing, signed checkpoints."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys

import pytest

from wxarchive.archive.archive import Archive, ArchiveError
from wxarchive.archive.checkpoints import list_checkpoints, read_checkpoint, signature_ok
from wxarchive.archive.journal import JournalError


def _hold_writer(home, ready, release):
    with Archive.open(home):
        ready.set()
        release.wait(30)


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    with Archive.open(h, create=True) as ar:
        for i in range(5):
            ar.journal.append("test.record", {"source": "s", "key": f"k{i}"}, b"x" * 10)
    return h


def test_second_writer_is_refused_with_the_holders_pid(home):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_writer, args=(home, ready, release))
    p.start()
    try:
        assert ready.wait(20)
        with pytest.raises(ArchiveError, match=rf"another wxarchive process \(pid {p.pid}\) is writing"):
            Archive.open(home)
        with Archive.open(home, readonly=True) as ar:  # readers are welcome meanwhile
            assert [e.key for e in ar.journal.entries()] == [f"k{i}" for i in range(5)]
    finally:
        release.set()
        p.join(20)
    with Archive.open(home) as ar:  # the lock went with the holder
        assert ar.journal.head_serial == 5


def test_lock_is_released_when_the_holder_dies(home):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_writer, args=(home, ready, release))
    p.start()
    assert ready.wait(20)
    p.kill()
    p.join(20)
    with Archive.open(home) as ar:
        assert ar.journal.head_serial == 5


def test_reader_never_cuts_a_frame_being_written(home):
    """A reader opening beside a writer mid-frame must not 'repair' the writer's tail."""
    with Archive.open(home, readonly=True) as ar:
        seg = ar.journal.segments()[-1]
    whole = seg.read_bytes()
    seg.write_bytes(whole + b"\x00\x00\x01\x00partial")  # the first bytes of a frame in flight
    with Archive.open(home, readonly=True) as ar:
        assert len(list(ar.journal.entries())) == 5
        with pytest.raises(JournalError, match="read-only"):
            ar.journal.append("test.record", {}, b"")
        with pytest.raises(ArchiveError, match="read-only"):
            ar.checkpoint()
    assert seg.read_bytes() == whole + b"\x00\x00\x01\x00partial"


def test_reader_writes_no_checkpoint_and_no_lock(home):
    before = sorted(p.relative_to(home) for p in home.rglob("*") if "catalog.db" not in p.name)
    stamps = {p: p.stat().st_mtime_ns for p in home.rglob("*") if p.is_file() and "catalog.db" not in p.name}
    with Archive.open(home, readonly=True):
        pass
    after = sorted(p.relative_to(home) for p in home.rglob("*") if "catalog.db" not in p.name)
    assert before == after
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_closing_a_writer_signs_the_head(home):
    with Archive.open(home, readonly=True) as ar:
        head, head_hash = None, None
        for e in ar.journal.entries():
            head, head_hash = e.serial, e.hash
        cps = list_checkpoints(ar.journal.dir)
        archive_id = ar.archive_id
    assert head == 5
    cp = read_checkpoint(cps[-1])
    assert (cp.archive_id, cp.serial, cp.head_hash) == (archive_id, 5, head_hash.hex())
    from wxarchive.archive.checkpoints import load_public_pem

    public = load_public_pem((home / "keys" / "signing.pub").read_text(), "signing.pub")
    assert signature_ok(cp, public)
    forged = json.loads(cps[-1].read_text())
    forged["serial"] = 4
    cps[-1].write_text(json.dumps(forged))
    assert not signature_ok(read_checkpoint(cps[-1]), public)


def test_signing_key_is_stored_only_wrapped(home):
    raw = (home / "keys" / "signing.key").read_bytes()
    with Archive.open(home) as ar:
        from cryptography.hazmat.primitives import serialization

        private = ar.signer.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                  serialization.NoEncryption())
    assert private not in raw and len(raw) > len(private)
    assert oct(os.stat(home / "keys" / "signing.key").st_mode & 0o777) == "0o600"


def test_config_changes_are_journaled_as_admin_events(home):
    (home / "config.toml").write_text('[archive]\ntimezone = "Asia/Shanghai"\n')
    with Archive.open(home):
        pass
    with Archive.open(home):  # no change, no new event
        pass
    (home / "config.toml").write_text('[archive]\ntimezone = "America/New_York"\n')
    with Archive.open(home) as ar:
        events = [e.meta for e in ar.journal.entries(kinds={"admin.config.change"})]
    assert len(events) == 2
    assert "Asia/Shanghai" in events[0]["config"] and events[0]["previous_sha256"] is None
    assert "America/New_York" in events[1]["config"] and events[1]["previous_sha256"] == events[0]["sha256"]
    assert all(e["who"] for e in events)
    with Archive.open(home, readonly=True) as ar:
        actions = [ev.action for ev in ar.access_log().events()]
    assert actions.count("admin.config.change") == 2


def _append_and_die(home, n):
    """A writer that journals ``n`` more records, makes them durable, and dies before closing
    (so no checkpoint signs them and no catalog row relies on them)."""
    ar = Archive.open(home)
    for i in range(n):
        ar.journal.append("test.record", {"source": "s", "key": f"late{i}"}, b"y" * 10)
    ar.journal.sync()
    os._exit(0)


def test_a_power_loss_tail_is_cut_kept_and_journaled_and_the_archive_verifies(home):
    from wxarchive.archive.journal import iter_frames
    from wxarchive.archive.verify import verify_archive

    p = multiprocessing.get_context("fork").Process(target=_append_and_die, args=(home, 4))
    p.start()
    p.join(30)
    with Archive.open(home, readonly=True) as ar:
        seg = ar.journal.segments()[-1]
        head = max(e.serial for e in ar.journal.entries())
        archive_id, master = ar.archive_id, ar.master
    frames = [fr for fr in iter_frames(seg) if not isinstance(fr, tuple)]
    raw = bytearray(seg.read_bytes())
    zeroed = frames[-2].offset  # the last two frames' sectors never reached the disk
    raw[zeroed + 4 : zeroed + 4 + len(frames[-2].head)] = bytes(len(frames[-2].head))
    raw[frames[-1].offset + 4 :] = bytes(len(raw) - frames[-1].offset - 4)
    seg.write_bytes(bytes(raw))
    with Archive.open(home) as ar:
        assert ar.journal.head_serial == head - 1  # the two cut, the repair event journaled
        repairs = [e.meta for e in ar.journal.entries(kinds={"admin.journal.repair"})]
    assert len(repairs) == 1 and repairs[0]["after_serial"] == head - 2 and repairs[0]["offset"] == zeroed
    assert repairs[0]["who"] and (home / "journal" / repairs[0]["kept"]).read_bytes() == bytes(raw[zeroed:])
    with Archive.open(home, readonly=True) as ar:
        assert "admin.journal.repair" in [ev.action for ev in ar.access_log().events()]
    report = verify_archive(home, master, archive_id, blobs=False, catalog=False)  # the fixture catalogues nothing
    assert report.ok, report.problems


def test_a_damaged_length_field_is_reported_and_never_cut(home):
    """One flipped byte in entry 1's length makes it look like an incomplete final frame with
    everything after it: verify must report it, and a writer must refuse rather than cut."""
    from wxarchive.archive.journal import iter_frames
    from wxarchive.archive.verify import verify_archive

    with Archive.open(home, readonly=True) as ar:
        seg = ar.journal.segments()[-1]
        archive_id, master = ar.archive_id, ar.master
    first = next(fr for fr in iter_frames(seg) if not isinstance(fr, tuple))
    raw = bytearray(seg.read_bytes())
    raw[first.offset] = 0xFF
    seg.write_bytes(bytes(raw))
    report = verify_archive(home, master, archive_id, blobs=False, catalog=False)
    assert not report.ok
    assert (report.problems[0].detail, report.problems[0].serial, report.problems[0].offset) == (
        "frame length damaged: whole entries follow it", 1, first.offset)
    with pytest.raises(JournalError, match=r"entry 1 \(a checkpoint or the catalog relies on it\)"):
        Archive.open(home)
    assert seg.read_bytes() == bytes(raw) and not (home / "journal" / "torn").exists()


def test_ingest_apply_commits_the_catalog_only_after_the_journal_fsync(home, monkeypatch):
    """Group commit in the ingest: the catalog transaction for entries is built while the
    journal fsyncs them and committed after; a failed fsync commits nothing."""
    import time

    from sqlalchemy import event

    from wxarchive.archive import journal as jmod
    from wxarchive.archive.journal import Entry
    from wxarchive.ingest import apply, catch_up

    order: list[str] = []
    real_fsync = jmod.os.fsync

    def slow_fsync(fd):
        time.sleep(0.2)
        real_fsync(fd)
        order.append("fsync")

    with Archive.open(home) as ar:
        catch_up(ar)
        event.listen(ar.catalog.engine, "commit", lambda conn: order.append("commit"))
        meta = {"source": "s", "cursor": "42"}
        serial = ar.journal.append("cursor", meta)
        monkeypatch.setattr(jmod.os, "fsync", slow_fsync)
        apply(ar, [Entry(serial, 0, "cursor", meta, b"")], durable=ar.journal.sync_start())
        monkeypatch.undo()
        assert order == ["fsync", "commit"]
        assert ar.catalog.applied_serial() == serial
        assert ar.catalog.cursor("s") == "42"

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    ar = Archive.open(home)
    before = ar.catalog.applied_serial()
    meta = {"source": "s", "cursor": "43"}
    serial = ar.journal.append("cursor", meta)
    monkeypatch.setattr(jmod.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        apply(ar, [Entry(serial, 0, "cursor", meta, b"")], durable=ar.journal.sync_start())
    monkeypatch.undo()
    assert ar.catalog.applied_serial() == before  # rolled back: nothing of it committed
    assert ar.catalog.cursor("s") == "42"
    with pytest.raises(JournalError):
        ar.close()


def _cut_last_frames(seg, k: int) -> None:
    from wxarchive.archive.journal import iter_frames

    frames = [fr for fr in iter_frames(seg) if not isinstance(fr, tuple)]
    with open(seg, "r+b") as f:
        f.truncate(frames[-k].offset)


def test_a_writer_refuses_a_journal_cut_back_below_its_signed_checkpoint(home):
    """Whole entries removed from the end: appending would re-use serials a checkpoint signed
    and the next checkpoint would sign over the removal. Readers still open (verify reports)."""
    seg = sorted((home / "journal").glob("seg-*.wxj"))[-1]
    _cut_last_frames(seg, 2)
    with pytest.raises(ArchiveError, match=r"ends at entry 3, but a signed checkpoint .*cp-000000000005.json"):
        Archive.open(home)
    with Archive.open(home, readonly=True) as ar:  # readers still open
        assert [e.serial for e in ar.journal.entries()] == [1, 2, 3]
    done = subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(home), "checkpoint"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "ends at entry 3" in done.stderr
    assert len(list((home / "journal" / "checkpoints").glob("cp-*.json"))) == 1  # nothing re-signed


def test_a_journal_behind_its_catalog_is_refused_until_reindexed(home):
    from wxarchive.ingest import catch_up

    with Archive.open(home) as ar:
        catch_up(ar)
        assert ar.catalog.applied_serial() == 5
    shutil.rmtree(home / "journal" / "checkpoints")  # so that only the catalog still knows
    _cut_last_frames(sorted((home / "journal").glob("seg-*.wxj"))[-1], 1)
    with pytest.raises(ArchiveError, match="ends at entry 4, but the catalog reflects entries up to 5"):
        Archive.open(home)
    done = subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(home), "reindex"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "catalog rebuilt from 4 journal entries" in done.stdout
    with Archive.open(home) as ar:  # then the reindex itself, journaled (and the access log's anchor)
        assert ar.catalog.applied_serial() == ar.journal.head_serial > 4
        assert [e.kind for e in ar.journal.entries(after=4)][0] == "admin.reindex"


def test_a_checkpoint_is_never_replaced_by_one_of_another_head(home):
    from wxarchive.archive.checkpoints import CheckpointError, write_checkpoint

    with Archive.open(home) as ar:
        cp = ar.checkpoint(force=True)
        assert write_checkpoint(ar.journal.dir, cp)  # the same head again: fine
        other = ar.signer.sign(ar.archive_id, cp.serial, b"\x01" * 32, cp.segment)
        with pytest.raises(CheckpointError, match="already signs entry 5 with another hash"):
            write_checkpoint(ar.journal.dir, other)
