"""The cases of ../shared/cases/README.md that concern search and exports, each asserting the
right value on the session archive (whose tenant plants every case)."""

from __future__ import annotations

import csv
import email
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from datetime import datetime
from email import policy
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from wxarchive.archive.archive import Archive
from wxarchive.export import rsmf as rsmf_mod
from wxarchive.search.query import Query, count, iter_results


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


@pytest.fixture(scope="module")
def home(ingested, tenant, tmp_path_factory) -> Path:
    """The session archive, with its directory synced (names of people and groups)."""
    from wxarchive.capture.wecom.directory import DirectoryOptions
    from wxarchive.ingest import sync_directory
    from wxarchive.simulate.server import serve

    h = tmp_path_factory.mktemp("cases-exports") / "home"
    shutil.copytree(ingested, h)
    info = json.loads((tenant / "tenant.json").read_text())
    with serve(tenant) as sim, Archive.open(h) as ar:
        sync_directory(ar, DirectoryOptions(info["corp_id"], (tenant / "secret").read_text().strip(), sim.proxy_url,
                                            sim.cert_pem), f"wecom:{info['corp_id']}")
    return h


@pytest.fixture(scope="module")
def msgs(home) -> list[dict]:
    with Archive.open(home, readonly=True) as ar:
        return list(iter_results(ar.catalog.engine, Query(), "Asia/Shanghai"))


def _export(home: Path, fmt: str, out: Path, *args: str, **env: str) -> Path:
    done = _cli(home, "export", "--format", fmt, "--out", str(out), *args, **env)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def rsmf_dir(home, tmp_path_factory) -> Path:
    return _export(home, "rsmf", tmp_path_factory.mktemp("rsmf") / "out")


@pytest.fixture(scope="module")
def html_dir(home, tmp_path_factory) -> Path:
    return _export(home, "html", tmp_path_factory.mktemp("html") / "out")


@pytest.fixture(scope="module")
def csv_rows(home, tmp_path_factory) -> list[dict]:
    out = _export(home, "csv", tmp_path_factory.mktemp("csv") / "out")
    return list(csv.DictReader(io.StringIO((out / "messages.csv").read_bytes().decode("utf-8-sig"), newline="")))


def _manifests(rsmf_dir: Path):
    for f in sorted((rsmf_dir / "rsmf").glob("*.rsmf")):
        msg = email.message_from_bytes(f.read_bytes(), policy=policy.default)
        z = zipfile.ZipFile(io.BytesIO(list(msg.iter_parts())[1].get_payload(decode=True)))
        yield f, z, json.loads(z.read("rsmf_manifest.json"))


def _events(rsmf_dir: Path) -> dict[str, dict]:
    return {e["id"]: e for _, _, m in _manifests(rsmf_dir) for e in m["events"]}


def test_T1_exports_show_the_configured_zone_with_its_offset(home, msgs, csv_rows, tmp_path):
    m = next(x for x in msgs if x["sent_at_ms"])
    want = datetime.fromtimestamp(m["sent_at_ms"] / 1000, ZoneInfo("Asia/Shanghai"))
    row = next(r for r in csv_rows if r["msgid"] == m["msgid"])
    assert datetime.fromisoformat(row["sent_at"]) == want and row["sent_at"].endswith("+08:00")
    ny = _export(home, "csv", tmp_path / "ny", WXARCHIVE_TZ="America/New_York")
    rows = list(csv.DictReader(io.StringIO((ny / "messages.csv").read_bytes().decode("utf-8-sig"), newline="")))
    for r in rows[:200]:
        if r["sent_at"] != "time unknown":
            at = datetime.fromisoformat(r["sent_at"])
            assert at.utcoffset() == at.astimezone(ZoneInfo("America/New_York")).utcoffset()
            assert r["sent_at"][-6:] in ("-04:00", "-05:00")


def test_T3_exports_are_stable_and_equal_times_keep_source_order(home, csv_rows, tmp_path):
    again = _export(home, "csv", tmp_path / "again")
    second = list(csv.DictReader(io.StringIO((again / "messages.csv").read_bytes().decode("utf-8-sig"), newline="")))
    assert second == csv_rows
    for a, b in zip(csv_rows, csv_rows[1:]):
        if a["sent_at"] == b["sent_at"] and a["source"] == b["source"] and a["seq"] and b["seq"]:
            assert int(a["seq"]) < int(b["seq"])


def test_X1_emoji_names_and_files_exported_byte_exact(rsmf_dir, html_dir, msgs):
    displays = {c["display"] for _, _, m in _manifests(rsmf_dir) for c in m["conversations"]}
    assert "客户群🎉💼" in displays
    assert any("客户群🎉💼" in p.read_text(encoding="utf-8") for p in html_dir.glob("*.html"))
    files = {a["display"] for e in _events(rsmf_dir).values() for a in e.get("attachments", [])}
    assert "报价单✅.xlsx" in files
    zwj = next(m for m in msgs if "👩‍👩‍👧" in m["text"])
    assert _events(rsmf_dir)[zwj["msgid"]]["body"] == zwj["text"]


def test_X3_a_60000_character_message_is_whole_and_searchable(home, msgs, rsmf_dir):
    long = next(m for m in msgs if len(m["text"]) >= 60_000)
    assert _events(rsmf_dir)[long["msgid"]]["body"] == long["text"]
    with Archive.open(home, readonly=True) as ar:
        e = ar.catalog.engine
        tail = long["text"][-12:]
        assert count(e, Query(text=tail, literal=True)) >= 1
        for word in ("مرحبا", "最终报价", "final quote"):
            assert count(e, Query(text=word)) >= 1, word


def test_X4_markup_is_inert_in_html(html_dir, msgs):
    text = "".join(p.read_text(encoding="utf-8") for p in html_dir.glob("*.html"))
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "<img src=x" not in text
    assert 'href="javascript:' not in text and "javascript:alert(1)" in text  # shown, not followed


def test_X5_csv_cells_neutralised_and_multiline_intact(csv_rows):
    texts = {r["text"] for r in csv_rows}
    assert "'=HYPERLINK(\"http://evil.example/\",\"点我查看收益\")" in texts
    assert "'-5% 止损线到了\n@David Chen 请确认\r\n+1 同意" in texts


def test_P3_two_chats_with_one_title_export_apart(rsmf_dir, html_dir):
    same = [f for f, _, m in _manifests(rsmf_dir) if m["conversations"][0]["display"] == "项目组"]
    assert len({json.loads(z.read("rsmf_manifest.json"))["conversations"][0]["id"]
                for f, z, _ in _manifests(rsmf_dir) if f in same}) == 2
    pages = [p for p in html_dir.glob("*.html") if "<h1>项目组</h1>" in p.read_text(encoding="utf-8")]
    assert len(pages) == 2 and len({p.name for p in pages}) == 2 and all(p.name.startswith("项目组_") for p in pages)


def test_P4_consent_events_appear_with_their_actor(rsmf_dir, msgs):
    consent = [m for m in msgs if m["kind"] == "consent"]
    assert consent
    events = _events(rsmf_dir)
    for m in consent:
        assert events[m["msgid"]]["type"] == "disclaimer" and events[m["msgid"]]["participant"] == m["sender"]


def test_A1_same_named_files_kept_apart_in_every_export(rsmf_dir, html_dir, home, tmp_path, msgs):
    same = [a for m in msgs for a in m["attachments"] if a["file_name"] == "合同.pdf" and a["state"] == "present"]
    assert len({a["sha256"] for a in same}) == 2
    members = {a["id"] for e in _events(rsmf_dir).values() for a in e.get("attachments", [])
               if a["display"] == "合同.pdf"}
    assert len(members) == 2
    for a in same:
        media = list((html_dir / "media").glob(a["sha256"] + "*"))
        assert media and hashlib.sha256(media[0].read_bytes()).hexdigest() == a["sha256"]


def test_A1_unsafe_file_names_are_made_safe():
    from wxarchive.export.conversations import safe_name
    from wxarchive.export.rsmf import _zip_name

    for bad in ("../../etc/passwd", "a/b\\c", "nul\0byte", "CON", "x" * 300, ".hidden", "合同.pdf"):
        name = _zip_name({"file_name": bad, "kind": "file", "media_type": None, "sha256": "ab" * 32})
        assert "/" not in name and "\\" not in name and "\0" not in name and ".." not in name
        assert len(name) <= 16 + 1 + 40 + 11 and not name.startswith(".")
    assert safe_name("CON") == "_CON" and safe_name("aux.txt") == "_aux.txt" and safe_name("..") == "x"
    assert safe_name("客户群🎉💼/../x", unicode=True) == "客户群_x" and safe_name("Søren Åberg", unicode=True) == "Søren_Åberg"


def test_A2_missing_media_shows_its_reason(home, rsmf_dir):
    done = _cli(home, "search", "--json", "--has-attachment")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    expired = [(r["msgid"], a) for r in rows for a in r["attachments"] if a["state"] == "expired"]
    assert expired and all(a["reason"] for _, a in expired)
    events = _events(rsmf_dir)
    for msgid, a in expired:
        custom = {c["name"]: c["value"] for c in events[msgid]["custom"]}
        assert any("expired" in v for k, v in custom.items() if k.startswith("attachment"))


def test_C3_quoted_replies_link_to_the_quoted_message(rsmf_dir, msgs):
    quotes = [m for m in msgs if (m["content"] or {}).get("quote")]
    assert quotes
    events = _events(rsmf_dir)
    linked = [m for m in quotes if "parent" in events[m["msgid"]]]
    assert linked
    for m in linked:
        parent = events[events[m["msgid"]]["parent"]]
        assert parent["body"] == m["content"]["quote"]["quoted_text"]


def test_C5_split_exports_neither_drop_nor_repeat_a_message(home, msgs, tmp_path, monkeypatch):
    monkeypatch.setattr(rsmf_mod, "MAX_EVENTS", 5)
    with Archive.open(home, readonly=True) as ar:
        rsmf_mod.export_rsmf(ar, Query(), tmp_path / "out", query_text={})
    seen: list[str] = []
    for _, _, m in _manifests(tmp_path / "out"):
        for e in m["events"]:
            seen.append(e["id"])
            seen += [c["value"] for c in e["custom"] if c["name"] == "recall_msgid"]
    recalls_alone = {m["msgid"] for m in msgs if m["recalls"]} - set(seen)
    assert sorted(seen) == sorted(m["msgid"] for m in msgs if m["msgid"] not in recalls_alone)
    assert not recalls_alone  # every recall is in a file: folded or as its own event


def test_C6_a_huge_conversation_exports_in_bounded_memory(tmp_path):
    """20,000 messages in one conversation: memory is bounded by one 10,000-event slice."""
    from wxarchive.simulate.search_corpus import fill, generate

    home = tmp_path / "huge"
    with Archive.open(home, create=True) as ar:
        fill(ar.catalog, generate(20_000, seed=4, conversations=1))
    with Archive.open(home, readonly=True) as ar:
        tracemalloc.start()
        res = rsmf_mod.export_rsmf(ar, Query(), tmp_path / "out", query_text={})
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert res.messages == 20_000 and res.files >= 2
    assert peak < 120 * 1024 * 1024, peak
