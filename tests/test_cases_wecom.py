"""The WeCom cases of ../shared/cases/README.md, each asserting the right value on an archive
ingested through the official SDK (K2-K4 and C1, which need faults or re-pulls, live in
test_ingest_wecom.py: test_server_errcode_..., test_transient_faults_..., test_second_ingest_...)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import answer_media, answer_messages
from wxarchive.archive.archive import Archive
from wxarchive.archive.catalog import schema as s
from wxarchive.model import iso_time
from wxarchive.search.query import Query, search


@pytest.fixture(scope="module")
def archive(ingested):
    with Archive.open(ingested) as ar:
        yield ar


def _rows(ar, **where) -> list[dict]:
    return list(search(ar.catalog.engine, Query(**where), "Asia/Shanghai"))


def _by_msgid(ar) -> dict[str, dict]:
    return {r["msgid"]: r for r in _rows(ar)}


def test_K1_both_key_versions_used_by_version_and_missing_version_quarantined(archive, tenant):
    info = json.loads((tenant / "tenant.json").read_text())
    answer = answer_messages(tenant)
    late_v1 = [a for a in answer if a["publickey_ver"] == 1 and a["seq"] > info["rotation_seq"]
               and a["expected"] == "archived"]
    v2 = [a for a in answer if a["publickey_ver"] == 2 and a["expected"] == "archived"]
    assert late_v1 and v2
    got = _by_msgid(archive)
    assert all(a["msgid"] in got for a in late_v1 + v2)
    with archive.catalog.engine.connect() as c:
        reasons = dict(c.execute(select(s.records.c.key, s.records.c.reason).where(s.records.c.state == "quarantined")).all())
    v3 = [a for a in answer if a["publickey_ver"] == 3]
    assert v3 and all(reasons[a["msgid"]] == "no private key for publickey_ver 3" for a in v3)


def test_K5_cursor_is_largest_durable_seq_and_no_batch_boundary_skips(archive, tenant):
    answer = answer_messages(tenant)
    seqs = sorted(a["seq"] for a in answer)
    assert any(b - a > 1 for a, b in zip(seqs, seqs[1:])), "the tenant must have seq gaps"
    assert archive.catalog.cursor(next(iter(_by_msgid(archive).values()))["source"]) == str(seqs[-1])
    # ingested with limit=100: every record at a batch boundary is there
    got = _by_msgid(archive)
    for i in range(99, len(answer), 100):
        a = sorted(answer, key=lambda x: x["seq"])[i]
        if a["expected"] == "archived":
            assert a["msgid"] in got


def test_K6_bad_records_do_not_stop_capture_and_are_not_dropped(archive, tenant):
    answer = sorted(answer_messages(tenant), key=lambda a: a["seq"])
    bad = [i for i, a in enumerate(answer) if a["expected"] == "quarantined"]
    got = _by_msgid(archive)
    with archive.catalog.engine.connect() as c:
        quarantined = {k for (k,) in c.execute(select(s.records.c.key).where(s.records.c.state == "quarantined"))}
        raw = {k for (k,) in c.execute(select(s.records.c.key))}
    for i in bad:
        assert answer[i]["msgid"] in quarantined and answer[i]["msgid"] in raw
        after = [a for a in answer[i + 1 :] if a["expected"] == "archived"]
        assert after and after[0]["msgid"] in got
    # the raw original of each quarantined record is in the journal, byte for byte as pulled
    lines = {json.loads(line)["msgid"]: json.loads(line) for line in (tenant / "chatdata.jsonl").read_text().splitlines()}
    kept = {e.key: json.loads(e.data) for e in archive.journal.entries(kinds={"wecom.chatdata"}) if e.key in quarantined}
    for k in quarantined:
        assert kept[k] == lines[k]


def test_A2_expired_media_is_archived_with_a_reason(archive, tenant):
    expired = [m for m in answer_media(tenant) if m["state"] == "expired"]
    assert expired
    got = _by_msgid(archive)
    for m in expired:
        att = next(a for a in got[m["msgid"]]["attachments"] if a["path"] == m["path"])
        assert att["state"] == "expired" and "10010" in att["reason"]


@pytest.mark.parametrize("size", [0, 16, 524288, 524289])
def test_A3_media_sizes_byte_exact(archive, tenant, size):
    items = [m for m in answer_media(tenant) if m["size"] == size and m["state"] == "present"]
    assert items, size
    for m in items:
        assert archive.blobs.get(m["sha256"]) is not None
        assert len(archive.blobs.get(m["sha256"])) == size


def test_A3_media_over_one_mebibyte(archive, tenant):
    big = [m for m in answer_media(tenant) if m["size"] > 1024 * 1024 and m["state"] == "present"]
    assert big
    import hashlib

    for m in big:
        assert hashlib.sha256(archive.blobs.get(m["sha256"])).hexdigest() == m["sha256"]


def test_C2_recall_marks_its_original_whichever_arrives_first(archive, tenant):
    answer = {a["msgid"]: a for a in answer_messages(tenant) if a["expected"] == "archived"}
    got = _by_msgid(archive)
    recalls = [a for a in answer.values() if a["kind"] == "recall"]
    assert recalls
    early = 0
    for r in recalls:
        orig = r["plaintext"]["revoke"]["pre_msgid"]
        assert got[r["msgid"]]["recalls"] == orig
        if orig in answer:
            assert got[orig]["recalled_by"] == r["msgid"]
            early += answer[orig]["seq"] > r["seq"]
    assert early >= 1, "the tenant must hold a recall pulled before its original"


def test_C4_nested_chat_record_items_archived_fetched_and_searchable(archive, tenant):
    media = answer_media(tenant)
    nested = [m for m in media if m["path"].startswith("item.")]
    assert nested
    got = _by_msgid(archive)
    for m in nested:
        att = next(a for a in got[m["msgid"]]["attachments"] if a["path"] == m["path"])
        assert att["state"] == m["state"]
        if m["state"] == "present":
            assert att["sha256"] == m["sha256"]
    rec = next(a for a in answer_messages(tenant) if a["kind"] == "chat_record")
    items = rec["plaintext"]["chatrecord"]["item"]
    texts = [json.loads(i["content"]).get("content") for i in items if "Text" in i["type"]]
    texts = [t for t in texts if t]
    assert texts
    for t in texts:
        assert rec["msgid"] in {r["msgid"] for r in _rows(archive, text=t)}


def test_T1_times_shown_in_configured_zone_with_offset():
    assert iso_time(1710054000000, "Asia/Shanghai") == "2024-03-10T15:00:00+08:00"
    assert iso_time(1710054000000, "America/New_York") == "2024-03-10T03:00:00-04:00"
    assert iso_time(1710054000000 - 3600_000, "America/New_York") == "2024-03-10T01:00:00-05:00"
    assert iso_time(None, "Asia/Shanghai") is None


def test_T1_stored_as_utc_ms(archive, tenant):
    answer = {a["msgid"]: a for a in answer_messages(tenant) if a["expected"] == "archived"}
    with archive.catalog.engine.connect() as c:
        rows = c.execute(select(s.messages.c.msgid, s.messages.c.sent_at)).all()
    for mid, sent in rows:
        p = answer[mid]["plaintext"]
        want = p.get("msgtime") if p.get("action") != "switch" else p.get("time")
        assert sent == (want or None)


def test_T2_nested_seconds_become_ms(archive, tenant):
    rec = next(a for a in answer_messages(tenant) if a["kind"] == "chat_record")
    with archive.catalog.engine.connect() as c:
        content = json.loads(c.execute(select(s.messages.c.content).where(s.messages.c.msgid == rec["msgid"])).scalar())
    src_times = [i["msgtime"] for i in rec["plaintext"]["chatrecord"]["item"]]
    got_times = [i.get("time") for i in content["items"]]
    assert got_times == [t * 1000 if t and t < 10**11 else (t or None) for t in src_times]


def test_X1_emoji_names_and_texts_byte_exact(archive, tenant):
    names = [a["file_name"] for r in _rows(archive, kind="file") for a in r["attachments"]]
    assert "报价单✅.xlsx" in names
    zwj = "👩‍👩‍👧"
    hits = {r["msgid"] for r in _rows(archive, text=zwj)}
    want = {a["msgid"] for a in answer_messages(tenant)
            if a["expected"] == "archived" and zwj in json.dumps(a["plaintext"], ensure_ascii=False)}
    assert hits and hits <= want | hits


def test_X2_lone_surrogate_kept_raw_shown_with_replacement_and_flagged(archive, tenant):
    raw = (tenant / "answer" / "messages.jsonl").read_text()
    assert "\\ud83d" in raw
    flagged = [r for r in _rows(archive) if "invalid_text" in r["flags"]]
    assert flagged
    assert any("\ufffd" in r["text"] for r in flagged)
    mid = flagged[0]["msgid"]
    plain = next(e.data for e in archive.journal.entries(kinds={"wecom.message"}) if e.key == mid)
    assert b"\\ud83d" in plain  # the original is kept exactly as decrypted
