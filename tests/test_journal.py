"""The journal: round trip, chain across segments, torn-tail recovery, refusal of damage."""

from __future__ import annotations

import hashlib
import os
import secrets

import pytest
from hypothesis import given, settings, strategies as st

from wxarchive.archive import journal as jmod
from wxarchive.archive.journal import GENESIS_HASH, Journal, JournalError, chain_hash, iter_frames
from wxarchive.archive.keys import KeyError_, LocalMasterKey


def _fill(j: Journal, n: int, size: int = 50) -> list[bytes]:
    payloads = [secrets.token_bytes(size) for _ in range(n)]
    for i, p in enumerate(payloads):
        j.append("test.record", {"source": "s", "key": f"k{i}"}, p)
    j.sync()
    return payloads


def test_round_trip_and_serials(tmp_path, master):
    with Journal.open(tmp_path, master) as j:
        payloads = _fill(j, 100)
    j = Journal.open(tmp_path, master)
    entries = list(j.entries())
    assert [e.serial for e in entries] == list(range(1, 101))
    assert [e.data for e in entries] == payloads
    assert [e.key for e in entries] == [f"k{i}" for i in range(100)]
    assert j.head_serial == 100
    assert [e.serial for e in j.entries(after=90)] == list(range(91, 101))


def test_chain_spans_segments(tmp_path, master, monkeypatch):
    monkeypatch.setattr(jmod, "SEGMENT_BYTES", 4096)
    with Journal.open(tmp_path, master) as j:
        _fill(j, 200, size=100)
    j = Journal.open(tmp_path, master)
    assert len(j.segments()) > 3
    prev = GENESIS_HASH
    serial = 0
    for seg in j.segments():
        for fr in iter_frames(seg):
            assert fr.serial == serial + 1
            assert chain_hash(prev, fr.head, fr.nonce, fr.ciphertext) == fr.hash
            prev, serial = fr.hash, fr.serial
    assert serial == 200
    assert [e.serial for e in j.entries(after=150)] == list(range(151, 201))


def test_no_plaintext_on_disk(tmp_path, master):
    marker = "机密客户报价 secret-marker-42".encode()
    with Journal.open(tmp_path, master) as j:
        j.append("test.record", {"source": "s", "key": "k"}, marker * 3)
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert marker not in p.read_bytes()
            assert master.key not in p.read_bytes()


@given(cut=st.integers(min_value=1, max_value=200))
@settings(max_examples=30, deadline=None)
def test_torn_tail_is_cut_and_appends_continue(tmp_path_factory, cut):
    master = LocalMasterKey(b"k" * 32, "t")
    d = tmp_path_factory.mktemp("j")
    with Journal.open(d, master) as j:
        _fill(j, 10)
    seg = Journal.open(d, master).segments()[-1]
    size = seg.stat().st_size
    with open(seg, "r+b") as f:  # a crash mid-write of the last frame
        f.truncate(size - min(cut, 80))
    j = Journal.open(d, master)
    assert j.head_serial == 9
    j.append("test.record", {"source": "s", "key": "again"}, b"x")
    j.sync()
    j.close()
    entries = list(Journal.open(d, master).entries())
    assert [e.serial for e in entries] == list(range(1, 11))
    assert entries[-1].key == "again"


def test_damage_before_tail_is_refused(tmp_path, master):
    with Journal.open(tmp_path, master) as j:
        _fill(j, 10)
    seg = j.segments()[-1]
    raw = bytearray(seg.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    seg.write_bytes(bytes(raw))
    with pytest.raises(JournalError, match="verify|authentication|chain"):
        Journal.open(tmp_path, master)


def test_wrong_master_key_is_a_clear_error(tmp_path, master):
    with Journal.open(tmp_path, master) as j:
        _fill(j, 3)
    other = LocalMasterKey(os.urandom(32), "other")
    with pytest.raises(KeyError_, match="master key"):
        list(Journal.open(tmp_path, other).entries())


def test_appends_between_syncs_are_read_back_and_survive_reopen(tmp_path, master, monkeypatch):
    """Frames wait in memory between syncs (and are written in pieces): readers of the same
    journal see them, a small segment size set after opening is honoured, every frame is whole."""
    monkeypatch.setattr(jmod, "_WRITE_BYTES", 1000)
    j = Journal.open(tmp_path, master)
    j.segment_bytes = 8192
    payloads = [secrets.token_bytes(i % 300) for i in range(300)]
    for i, p in enumerate(payloads):
        j.append("test.record", {"source": "s", "key": f"k{i}"}, p)
        if i == 150:
            assert [e.data for e in j.entries()] == payloads[:151]  # pending frames are written first
    j.sync()
    assert len(j.segments()) > 5
    assert all(s.stat().st_size < 8192 + 400 for s in j.segments())
    j.close()
    j = Journal.open(tmp_path, master)
    assert [e.data for e in j.entries()] == payloads
    assert j.head_serial == 300


def test_nonces_never_repeat_under_a_segment_key(tmp_path, master):
    """Reopening the tail (and re-using the serial of a cut torn frame) draws a new nonce base."""
    for _ in range(3):
        with Journal.open(tmp_path, master) as j:
            _fill(j, 20)
    seg = Journal.open(tmp_path, master).segments()[-1]
    with open(seg, "r+b") as f:
        f.truncate(seg.stat().st_size - 5)
    with Journal.open(tmp_path, master) as j:
        _fill(j, 5)
    nonces = [fr.nonce for fr in iter_frames(seg)]
    assert len(nonces) == 64 and len(set(nonces)) == 64  # 60, the last cut, 5 more


def _unsynced_entry_under_a_failing_fsync(tmp_path, master, monkeypatch, n: int) -> Journal:
    """A journal of ``n`` durable entries and one more appended, whose fsync will fail (EIO)."""
    with Journal.open(tmp_path, master) as j:
        _fill(j, n)
    j = Journal.open(tmp_path, master)
    j.append("test.record", {"source": "s", "key": "lost"}, b"x")

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(jmod.os, "fsync", failing_fsync)
    return j


def test_failed_fsync_is_not_retried(tmp_path, master, monkeypatch):
    """After a write or fsync fails the journal refuses to report anything durable (the kernel may
    have dropped the pages it could not write); reopening starts from what the file holds."""
    j = _unsynced_entry_under_a_failing_fsync(tmp_path, master, monkeypatch, 5)
    with pytest.raises(OSError):
        j.sync()
    monkeypatch.undo()
    with pytest.raises(JournalError, match="failed"):
        j.sync()
    with pytest.raises(JournalError, match="failed"):
        j.append("test.record", {"source": "s", "key": "more"}, b"y")
    j.close()
    j = Journal.open(tmp_path, master)
    assert j.head_serial in (5, 6)
    j.append("test.record", {"source": "s", "key": "after"}, b"z")
    j.sync()
    assert [e.key for e in j.entries()][-1] == "after"


def _walk_chain(j: Journal) -> int:
    """Check serials and chain hashes frame by frame over every segment; returns the last serial."""
    prev, serial = GENESIS_HASH, 0
    for seg in j.segments():
        for fr in iter_frames(seg):
            assert not isinstance(fr, tuple), f"torn frame in {seg.name}"
            assert fr.serial == serial + 1
            assert chain_hash(prev, fr.head, fr.nonce, fr.ciphertext) == fr.hash
            prev, serial = fr.hash, fr.serial
    assert prev == j.head_hash or j.head_serial == 0
    return serial


def test_append_many_equals_appends_across_segment_starts(tmp_path, master, monkeypatch):
    monkeypatch.setattr(jmod, "SEGMENT_BYTES", 4096)
    monkeypatch.setattr(jmod, "_WRITE_BYTES", 1024)  # several writes inside one batch too
    items = [({"source": "s", "key": f"k{i}"}, secrets.token_bytes(97)) for i in range(120)]
    with Journal.open(tmp_path, master) as j:
        assert j.append("test.one", {"source": "s", "key": "first"}, b"x") == 1
        assert j.append_many("test.batch", items[:70], at=1_700_000_000_000) == 2
        assert j.append_many("test.batch", [], at=5) == 72  # nothing appended: the next serial
        assert j.append_many("test.batch", items[70:]) == 72
        assert j.head_serial == 121
        j.sync()
    j = Journal.open(tmp_path, master)
    assert len(j.segments()) > 5  # the batches crossed segment starts
    assert _walk_chain(j) == 121
    entries = list(j.entries())
    assert [e.serial for e in entries] == list(range(1, 122))
    assert [(e.meta, e.data) for e in entries[1:]] == items
    assert {e.kind for e in entries[1:]} == {"test.batch"}
    assert {e.time for e in entries[1:71]} == {1_700_000_000_000}  # one time for the batch given
    assert len({e.time for e in entries[71:]}) == 1


def test_append_many_stops_at_an_item_that_fails_and_keeps_the_ones_before(tmp_path, master):
    items = [({"source": "s", "key": "a"}, b"1"), ({"source": "s", "key": "b"}, b"2"),
             ({"source": "s", "key": {1, 2}}, b"3"), ({"source": "s", "key": "d"}, b"4")]
    with Journal.open(tmp_path, master) as j:
        with pytest.raises(TypeError, match="not JSON serializable"):
            j.append_many("test.batch", items)
        assert j.head_serial == 2  # the two before the bad one
        assert j.append("test.one", {"source": "s", "key": "after"}, b"5") == 3
        j.sync()
    j = Journal.open(tmp_path, master)
    assert _walk_chain(j) == 3
    assert [e.key for e in j.entries()] == ["a", "b", "after"]


def _zero_last_frames(seg, keep_frames: int) -> int:
    """Zero every byte after the first ``keep_frames`` frames' lengths: complete-length frames whose
    content never reached the disk (a power loss). Returns the offset of the first zeroed frame."""
    frames = [fr for fr in iter_frames(seg) if not isinstance(fr, tuple)]
    first = frames[keep_frames].offset
    raw = bytearray(seg.read_bytes())
    for fr in frames[keep_frames:]:
        raw[fr.offset + 4 : fr.offset + 4 + len(fr.head) + 12 + len(fr.ciphertext) + 32] = bytes(
            len(fr.head) + 12 + len(fr.ciphertext) + 32)
    seg.write_bytes(bytes(raw))
    return first


def test_a_power_loss_tail_of_zeroed_frames_is_cut_and_kept(tmp_path, master):
    with Journal.open(tmp_path, master) as j:
        payloads = _fill(j, 10)
    seg = j.segments()[-1]
    size = seg.stat().st_size
    first = _zero_last_frames(seg, 7)
    gone = seg.read_bytes()[first:]
    j = Journal.open(tmp_path, master, durable_floor=7)  # entries 8-10 were never relied on
    assert j.head_serial == 7
    assert j.repair == {"segment": seg.name, "offset": first, "bytes": size - first, "after_serial": 7,
                        "sha256": hashlib.sha256(gone).hexdigest(), "kept": f"torn/{seg.stem}-{first:012d}.bin",
                        "reason": "entry 8 and after fail the chain (never durable: torn)"}
    assert (tmp_path / j.repair["kept"]).read_bytes() == gone  # nothing thrown away
    assert seg.stat().st_size == first
    j.append("test.record", {"source": "s", "key": "again"}, b"x")
    j.sync()
    j.close()
    entries = list(Journal.open(tmp_path, master).entries())
    assert [e.data for e in entries] == payloads[:7] + [b"x"]
    assert _walk_chain(Journal.open(tmp_path, master)) == 8


def test_a_bad_tail_something_relied_on_is_refused_not_cut(tmp_path, master):
    with Journal.open(tmp_path, master) as j:
        _fill(j, 10)
    seg = j.segments()[-1]
    _zero_last_frames(seg, 7)
    before = seg.read_bytes()
    with pytest.raises(JournalError, match=r"offset \d+ breaks the chain; run 'wxarchive verify'"):
        Journal.open(tmp_path, master, durable_floor=8)  # entry 8 was signed or catalogued
    assert seg.read_bytes() == before and not (tmp_path / "torn").exists()


def test_a_damaged_frame_with_written_frames_after_it_is_refused_not_cut(tmp_path, master):
    """A flipped byte in entry 8 of 10: entries 9 and 10 still decrypt, so this is no tear."""
    with Journal.open(tmp_path, master) as j:
        _fill(j, 10)
    seg = j.segments()[-1]
    frames = [fr for fr in iter_frames(seg) if not isinstance(fr, tuple)]
    raw = bytearray(seg.read_bytes())
    raw[frames[7].offset + 4 + len(frames[7].head) + 12 + 3] ^= 0x01  # inside entry 8's ciphertext
    seg.write_bytes(bytes(raw))
    with pytest.raises(JournalError, match="breaks the chain"):
        Journal.open(tmp_path, master, durable_floor=0)
    assert seg.read_bytes() == bytes(raw)


@pytest.mark.parametrize("entry", [0, 4])
def test_a_damaged_length_field_is_refused_not_cut_as_a_tear(tmp_path, master, entry):
    """A length field made too large (or zero) looks like an incomplete final frame; the whole
    frames after it show it is not one."""
    with Journal.open(tmp_path, master) as j:
        _fill(j, 10)
    seg = j.segments()[-1]
    frames = [fr for fr in iter_frames(seg) if not isinstance(fr, tuple)]
    for damage in (b"\xff", b"\x00\x00\x00\x00"):
        raw = bytearray(seg.read_bytes())
        raw[frames[entry].offset : frames[entry].offset + len(damage)] = damage
        seg.write_bytes(bytes(raw))
        with pytest.raises(JournalError, match=rf"entry {entry + 1} \(entries that were written follow it\) "
                                               r"at offset \d+ breaks the chain"):
            Journal.open(tmp_path, master)
        assert seg.read_bytes() == bytes(raw) and not (tmp_path / "torn").exists()


def test_a_newest_segment_whose_header_was_never_completed_is_set_aside(tmp_path, master, monkeypatch):
    monkeypatch.setattr(jmod, "SEGMENT_BYTES", 2048)
    with Journal.open(tmp_path, master) as j:
        payloads = _fill(j, 30)
    head = j.head_serial
    for stub in (b"WXJ1\x00", b"", b"WXJ1\x00\x00\x00\x40{\"segment\": \"seg-"):
        seg = tmp_path / f"seg-{head + 1:012d}.wxj"  # a crash while starting the next segment
        seg.write_bytes(stub)
        j = Journal.open(tmp_path, master)
        assert j.head_serial == head and not seg.exists()
        if stub:
            assert (j.repair["reason"], j.repair["bytes"], j.repair["offset"]) == (
                "segment header never completed", len(stub), 0)
            assert (tmp_path / j.repair["kept"]).read_bytes() == stub
        else:
            assert j.repair is None  # an empty file: nothing to keep
        j.close()
    j = Journal.open(tmp_path, master)
    j.append("test.record", {"source": "s", "key": "next"}, b"n")
    j.sync()
    j.close()
    assert [e.data for e in Journal.open(tmp_path, master).entries()] == payloads + [b"n"]
    assert _walk_chain(Journal.open(tmp_path, master)) == head + 1


def test_a_large_garbage_tail_is_cut_in_one_pass(tmp_path, master):
    with Journal.open(tmp_path, master) as j:
        payloads = _fill(j, 5)
    seg = j.segments()[-1]
    garbage = (200).to_bytes(4, "big") + os.urandom(4 << 20)
    seg.write_bytes(seg.read_bytes() + garbage)
    j = Journal.open(tmp_path, master)
    assert j.head_serial == 5 and j.repair["bytes"] == len(garbage)
    assert [e.data for e in j.entries()] == payloads


def test_sync_start_runs_the_fsync_beside_the_caller_and_sync_wait_makes_durable(tmp_path, master, monkeypatch):
    """Group commit: ``sync_start`` writes the entries and fsyncs them in a thread while the
    caller goes on (appending more, here); ``sync_wait`` returns only after that fsync returned."""
    import threading

    started, release, synced = threading.Event(), threading.Event(), []
    real_fsync = jmod.os.fsync

    def slow_fsync(fd):
        started.set()
        assert release.wait(10)
        real_fsync(fd)
        synced.append(fd)

    with Journal.open(tmp_path, master) as j:
        _fill(j, 3)
        j.append("test.record", {"source": "s", "key": "a"}, b"1")
        monkeypatch.setattr(jmod.os, "fsync", slow_fsync)
        covered = j.sync_start()
        assert covered == j.head_serial == 4
        assert started.wait(10)
        j.append("test.record", {"source": "s", "key": "b"}, b"2")  # the caller is not held up
        assert synced == []
        threading.Timer(0.2, release.set).start()
        j.sync_wait(covered)
        assert len(synced) == 1  # returned only after the fsync did
        monkeypatch.undo()
        j.sync_wait(5)  # not covered by the fsync in flight: synced now
    j = Journal.open(tmp_path, master)
    assert [e.key for e in j.entries()][-2:] == ["a", "b"]


def test_a_failed_background_fsync_is_reported_and_the_journal_refuses(tmp_path, master, monkeypatch):
    j = _unsynced_entry_under_a_failing_fsync(tmp_path, master, monkeypatch, 2)
    covered = j.sync_start()
    with pytest.raises(OSError):
        j.sync_wait(covered)
    monkeypatch.undo()
    with pytest.raises(JournalError, match="failed"):
        j.sync()
    with pytest.raises(JournalError, match="failed"):
        j.sync_start()
    j.close()
    assert Journal.open(tmp_path, master).head_serial in (2, 3)


def test_close_waits_for_an_fsync_in_flight(tmp_path, master, monkeypatch):
    """The descriptor is never closed under a running fsync (its number could be reused)."""
    import time

    real_fsync, done = jmod.os.fsync, []

    def slow_fsync(fd):
        time.sleep(0.3)
        real_fsync(fd)
        done.append(fd)

    j = Journal.open(tmp_path, master)
    _fill(j, 2)
    j.append("test.record", {"source": "s", "key": "c"}, b"3")
    monkeypatch.setattr(jmod.os, "fsync", slow_fsync)
    j.sync_start()
    j.close()
    assert done  # the background fsync finished before close returned
    monkeypatch.undo()
    assert [e.key for e in Journal.open(tmp_path, master).entries()][-1] == "c"


def test_segment_blocks_are_reserved_ahead_without_changing_the_size(tmp_path, master):
    """Preallocation (FALLOC_FL_KEEP_SIZE) reserves blocks past the end: readers see the frames only."""
    with Journal.open(tmp_path, master) as j:
        _fill(j, 2000, size=600)  # > 256 KiB: written through _write_pending
        seg = j.segments()[-1]
        written = seg.stat()
        if jmod._preallocate is not None:
            assert written.st_blocks * 512 > written.st_size  # reserved beyond the end
    j = Journal.open(tmp_path, master)
    assert j.head_serial == 2000
    assert sum(1 for _ in iter_frames(seg)) == 2000
