"""End to end: simulated tenant → wire-level server → official SDK → archive.

Every test pulls through the real ``libWeWorkFinanceSdk_C`` (in its worker process) and
checks the archive against the simulator's answer key.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from wxarchive.archive.archive import Archive
from wxarchive.archive.catalog import schema as s
from wxarchive.archive.journal import Entry
from wxarchive.archive.status import status
from wxarchive.demo import check_answer_key
from wxarchive.ingest import WeComCapture, WeComOptions, apply, reindex
from wxarchive.simulate.server import parse_fault_spec, serve
from conftest import TENANT_MESSAGES as N
from conftest import answer_messages as _answer
from conftest import tenant_options as _opts


def _ingest(home: Path, tenant: Path, faults: str = "", **kw):
    with serve(tenant, faults=parse_fault_spec(faults) if faults else None) as sim:
        with Archive.open(home, create=True) as ar:
            result = WeComCapture(ar, _opts(tenant, sim.proxy_url, **kw)).run()
            chk = check_answer_key(ar.catalog.engine, tenant)
            st = status(ar.catalog.engine)
        return result, chk, st, sim.stats


def test_ingest_archives_exactly_the_answer_key(tmp_path, tenant):
    result, chk, st, _ = _ingest(tmp_path / "a", tenant)
    assert result.status == "ok", result.error
    assert chk.missing == [] and chk.unexpected == [] and chk.wrong_kind == []
    assert chk.archived == chk.expected_archived > 0
    assert chk.quarantined == chk.expected_quarantined > 0
    assert chk.media_bad == [] and chk.media_ok == chk.media_expected
    assert chk.msgtypes_expected <= chk.msgtypes_archived
    rec = st["reconciliation"]
    assert rec["reconciled"] and rec["catalog_matches_records"] and rec["pending_records"] == 0
    assert rec["pulled"] == N
    answer = _answer(tenant)
    assert st["cursors"][0]["cursor"] == str(max(a["seq"] for a in answer))
    # quarantine reasons name the problem (K1, P14, K6)
    reasons = {q["key"]: q["reason"] for q in st["quarantined"]}
    for a in answer:
        if a["expected"] == "quarantined":
            assert reasons[a["msgid"]], a
    assert any("3" in r and "key" in r.lower() for r in reasons.values())


def test_second_ingest_adds_nothing_and_rewound_cursor_dedupes(tmp_path, tenant):
    home = tmp_path / "a"
    _ingest(home, tenant)
    result, chk, st, _ = _ingest(home, tenant)
    assert result.counts["pulled"] == 0 and result.counts["archived"] == 0
    # an operator rewinds the cursor to 0 (C1, K5): everything comes again, nothing is added
    with Archive.open(home) as ar:
        source = st["cursors"][0]["source"]
        serial = ar.journal.append("cursor", {"source": source, "cursor": "0"})
        ar.journal.sync()
        apply(ar, [Entry(serial, 0, "cursor", {"source": source, "cursor": "0"}, b"")])
    result, chk, st2, _ = _ingest(home, tenant)
    assert result.counts["pulled"] == N
    assert result.counts["duplicates"] == N
    assert result.counts["archived"] == 0
    assert st2["messages"] == st["messages"]
    assert chk.missing == [] and chk.unexpected == []


def test_transient_faults_are_retried_and_nothing_is_skipped(tmp_path, tenant):
    faults = "chat500=2;chatdrop=3;chatslow=4:0.3;tokenexpire=5;media500=2;mediacorrupt=first;token500=1"
    result, chk, st, stats = _ingest(tmp_path / "a", tenant, faults)
    assert result.status == "ok", result.error
    assert chk.ok, (chk.missing[:3], chk.media_bad[:3])
    assert st["reconciliation"]["reconciled"]


def test_server_errcode_stops_with_clear_error_and_keeps_cursor(tmp_path, tenant):
    home = tmp_path / "a"
    result, chk, st, _ = _ingest(home, tenant, "chaterr=3:301042")
    assert result.status == "failed"
    assert "301042" in result.error and "trusted IP" in result.error
    answer = sorted(_answer(tenant), key=lambda a: a["seq"])
    # two calls of 100 succeeded: the cursor is the largest seq of those, not beyond
    assert st["cursors"][0]["cursor"] == str(answer[199]["seq"])
    assert st["messages"] <= 200
    result, chk, st, _ = _ingest(home, tenant)
    assert result.status == "ok"
    assert chk.ok


def test_missing_key_version_quarantines_only_those(tmp_path, tenant):
    info = json.loads((tenant / "tenant.json").read_text())
    v1_only = {1: (tenant / "keys" / "private_v1.pem").read_bytes()}
    with serve(tenant) as sim:
        with Archive.open(tmp_path / "b", create=True) as ar:
            result = WeComCapture(ar, _opts(tenant, sim.proxy_url, private_keys=v1_only)).run()
            st = status(ar.catalog.engine)
    assert result.status == "ok"
    answer = _answer(tenant)
    v2 = [a for a in answer if a["publickey_ver"] == 2 and a["expected"] == "archived"]
    assert v2
    reasons = {q["key"]: q["reason"] for q in st["quarantined"]}
    for a in v2:
        assert reasons[a["msgid"]] == "no private key for publickey_ver 2"
    archived_v1 = [a for a in answer if a["publickey_ver"] == 1 and a["expected"] == "archived"]
    assert st["messages"] == len(archived_v1)
    assert st["reconciliation"]["reconciled"]
    assert info["key_versions"] == [1, 2]


def _catalog_dump(engine) -> dict:
    out = {}
    with engine.connect() as c:
        out["messages"] = sorted(
            tuple(r) for r in c.execute(select(*[col for col in s.messages.c if col.name != "id"]))
        )
        out["attachments"] = sorted(
            (mid, *r[2:]) for mid, *r in c.execute(
                select(s.messages.c.msgid, *[col for col in s.attachments.c if col.name != "message_id"])
                .join(s.messages, s.messages.c.id == s.attachments.c.message_id)
            )
        )
        out["attachments"] = sorted(tuple(x for x in row) for row in out["attachments"])
        out["records"] = sorted(tuple(r) for r in c.execute(select(s.records)))
        out["cursors"] = sorted((r.source, r.cursor) for r in c.execute(select(s.cursors)))
        out["conversations"] = sorted(tuple(r) for r in c.execute(select(s.conversations)))
        out["participants"] = sorted(tuple(r) for r in c.execute(select(s.participants)))
    return out


def test_reindex_rebuilds_the_same_catalog(tmp_path, tenant):
    home = tmp_path / "a"
    _ingest(home, tenant)
    with Archive.open(home) as ar:
        before = _catalog_dump(ar.catalog.engine)
        reindex(ar)
        after = _catalog_dump(ar.catalog.engine)
    for table in before:
        assert before[table] == after[table], table


def test_search_equals_brute_force(tmp_path, tenant):
    from wxarchive.search.query import Query, search

    home = tmp_path / "a"
    _ingest(home, tenant)
    with Archive.open(home) as ar:
        with ar.catalog.engine.connect() as c:
            rows = c.execute(select(s.messages.c.msgid, s.messages.c.text)).all()
        rng = random.Random(5)
        texts = [t for _, t in rows if t]
        needles = {"合同", "钱", "😀", "a", "Q3", "报价单✅"}
        for _ in range(150):
            t = rng.choice(texts)
            n = rng.randint(1, 6)
            i = rng.randrange(max(1, len(t) - n + 1))
            needles.add(t[i : i + n])
        for needle in needles:
            if not needle:
                continue
            want = {m for m, t in rows if needle in t}
            got = {r["msgid"] for r in search(ar.catalog.engine, Query(text=needle, literal=True))}
            assert got == want, needle


def test_a_replay_is_signed_as_it_goes(tmp_path, tenant, monkeypatch):
    """Long replays checkpoint every CHECKPOINT_EVERY entries like live captures (a verify run
    beside a first big import otherwise saw a large journal with no checkpoint: 'deleted?')."""
    import wxarchive.archive.archive as amod
    from wxarchive.archive.checkpoints import list_checkpoints
    monkeypatch.setattr(amod, "CHECKPOINT_EVERY", 100)
    home = tmp_path / "home"
    with Archive.open(home, create=True) as ar:
        result = WeComCapture(ar, _opts(tenant, "", fetch_media=False), replay=tenant / "chatdata.jsonl").run()
        assert result.status == "ok", result.error
        mid_run = len(list_checkpoints(home / "journal"))
    assert mid_run >= 1  # signed while the run was open (its one batch of 400 raw items), not only on close
