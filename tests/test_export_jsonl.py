"""The export of record (jsonl) and its re-import into an empty archive."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from wxarchive.archive.archive import Archive
from wxarchive.archive.catalog import schema as s


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def _content(engine) -> dict:
    """The catalog's content, without what depends on where in a journal a row came from."""
    skip = {"id", "serial", "raw_serial", "message_id"}
    with engine.connect() as c:
        msgs = sorted(tuple(v for k, v in r._mapping.items() if k not in skip) for r in c.execute(select(s.messages)))
        atts = sorted((m, *(v for k, v in r._mapping.items() if k not in skip)) for m, r in (
            (row.msgid, row) for row in c.execute(
                select(s.messages.c.msgid, *s.attachments.c).join(s.messages, s.messages.c.id == s.attachments.c.message_id))))
        recs = sorted((r.source, r.key, r.kind, r.cursor, r.state, r.reason) for r in c.execute(select(s.records)))
        convs = sorted(tuple(r) for r in c.execute(select(s.conversations)))
        people = sorted(tuple(r) for r in c.execute(select(s.participants)))
    return {"messages": msgs, "attachments": atts, "records": recs, "conversations": convs, "participants": people}


@pytest.fixture(scope="module")
def source(ingested, tmp_path_factory) -> Path:
    """A copy of the session archive (exports are recorded in its access log)."""
    home = tmp_path_factory.mktemp("export-source") / "home"
    shutil.copytree(ingested, home)
    return home


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "all"
    done = _cli(source, "export", "--format", "jsonl", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_manifest_lists_every_file_with_its_hash_and_reconciles(exported, source):
    manifest = json.loads((exported / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(listed) == on_disk
    for path, f in listed.items():
        data = (exported / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"]
    c = manifest["counts"]
    assert c["reconciled"] and c["messages"] == c["search_count"] > 300
    assert c["records"] == c["messages"] + 4  # quarantined records are in an export of everything
    assert c["media_files"] > 20 and c["audit_events"] >= 0
    cp = json.loads((exported / "checkpoint.json").read_text())
    assert "BEGIN PUBLIC KEY" in cp["public_key"]
    assert manifest["exported_by"] and manifest["archive_id"].startswith("wxa-")
    from datetime import datetime

    # the time for people (UTC, ISO 8601) is the same instant as the epoch milliseconds
    assert manifest["exported_at_utc"].endswith("Z")
    assert datetime.fromisoformat(manifest["exported_at_utc"]).timestamp() * 1000 == manifest["exported_at"]


def test_export_is_recorded_with_its_files(exported, source):
    events = [json.loads(x) for x in _cli(source, "audit", "--json", "--action", "export").stdout.splitlines()]
    assert events and events[0]["results"] > 300
    assert {f["path"] for f in events[0]["files"]} >= {"records.jsonl", "checkpoint.json", "audit.jsonl"}


def test_reimport_into_an_empty_archive_gives_the_same_catalog(exported, source, tmp_path):
    new = tmp_path / "new"
    done = _cli(new, "import", str(exported))
    assert done.returncode == 0, done.stderr
    assert "0 already present" in done.stdout
    with Archive.open(source, readonly=True) as a, Archive.open(new, readonly=True) as b:
        assert _content(a.catalog.engine) == _content(b.catalog.engine)
        for sha in (r[0] for r in a.catalog.engine.raw_connection().execute(
                "SELECT DISTINCT sha256 FROM attachments WHERE state = 'present'")):
            assert b.blobs.get(sha) == a.blobs.get(sha)
    st = json.loads(_cli(new, "status", "--json").stdout)
    assert st["reconciliation"]["reconciled"] and st["reconciliation"]["catalog_matches_records"]
    # the summary counts what the catalog holds: a message that does not parse is quarantined, not archived
    assert f"{st['messages']} message(s), {st['records'].get('quarantined', 0)} quarantined" in done.stdout, (done.stdout, st['records'])
    assert _cli(new, "verify").returncode == 0
    again = _cli(new, "import", str(exported))  # idempotent
    assert again.returncode == 0 and "0 message(s)" in again.stdout
    with Archive.open(new, readonly=True) as b:
        assert len(_content(b.catalog.engine)["messages"]) == len(_content(
            Archive.open(source, readonly=True).catalog.engine)["messages"])


def test_a_selection_exports_only_its_messages(source, tmp_path):
    out = tmp_path / "sel"
    done = _cli(source, "export", "--format", "jsonl", "--out", str(out), "--text", "合同")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["query"] == {"text": "合同"}
    keys = {json.loads(x)["meta"]["key"] for x in (out / "records.jsonl").read_text().splitlines()}
    found = {json.loads(x)["msgid"] for x in _cli(source, "search", "合同", "--json").stdout.splitlines()}
    assert keys == found and manifest["counts"]["reconciled"]


def test_bad_exports_and_folders_are_clear_errors(exported, source, tmp_path):
    assert "not empty" in _cli(source, "export", "--format", "jsonl", "--out", str(exported)).stderr
    assert "use one of jsonl, rsmf, eml, html, csv" in _cli(source, "export", "--format", "pdf", "--out", str(tmp_path / "o")).stderr
    assert "not a wxarchive export" in _cli(tmp_path / "h1", "import", str(tmp_path)).stderr
    altered = tmp_path / "altered"
    shutil.copytree(exported, altered)
    rec = altered / "records.jsonl"
    rec.write_text(rec.read_text().replace('"kind": "wecom.message"', '"kind": "wecom.messagx"', 1))
    bad = _cli(tmp_path / "h2", "import", str(altered))
    assert bad.returncode == 1 and "SHA-256 differs from the manifest" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "afile").write_text("x")
    assert "is a file, not a folder" in _cli(source, "export", "--format", "jsonl", "--out",
                                             str(tmp_path / "afile")).stderr


def _refused(folder: Path, tmp_path: Path, why: str, *extra: str) -> None:
    done = _cli(tmp_path / f"h-{abs(hash(why))}", "import", str(folder), *extra)
    assert done.returncode == 1, done.stdout + done.stderr
    assert why in done.stderr and "Traceback" not in done.stderr


def test_an_altered_export_is_refused_whatever_was_recomputed(exported, source, tmp_path):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["signature"] and manifest["key_fingerprint"]
    # forged text with its hash recomputed in the manifest: the manifest's signature fails
    forged = tmp_path / "forged"
    shutil.copytree(exported, forged)
    rec = forged / "records.jsonl"
    rec.write_text(rec.read_text().replace('"kind": "wecom.message"', '"kind": "wecom.messagx"', 1))
    m = json.loads((forged / "manifest.json").read_text())
    for f in m["files"]:
        if f["path"] == "records.jsonl":
            f["sha256"] = hashlib.sha256(rec.read_bytes()).hexdigest()
    (forged / "manifest.json").write_text(json.dumps(m))
    _refused(forged, tmp_path, "the signature does not verify")
    # every listed file is checked, and nothing may be added
    for name, change in (("audit.jsonl", lambda p: p.write_text(p.read_text() + "{}\n")),
                         ("checkpoint.json", lambda p: p.unlink())):
        t = tmp_path / f"t-{name}"
        shutil.copytree(exported, t)
        change(t / name)
        _refused(t, tmp_path, name)
    extra = tmp_path / "extra"
    shutil.copytree(exported, extra)
    (extra / "media" / "extra.bin").write_bytes(b"x")
    _refused(extra, tmp_path, "not listed in the manifest")
    # pinning the signer: the right fingerprint imports, another is refused
    _refused(exported, tmp_path, "not the expected", "--expect-key", "0" * 64)
    fp = _cli(source, "keys", "public").stderr.split("fingerprint (SHA-256 of the raw key): ")[1].strip()
    ok = _cli(tmp_path / "pinned", "import", str(exported), "--expect-key", fp)
    assert ok.returncode == 0 and "(verified)" in ok.stdout


def test_an_export_of_everything_carries_the_directory_and_holds_into_the_import(ingested, tmp_path):
    """The migration path gives the same catalog: names, mobiles and e-mails from the directory
    (so a search by name finds the same messages) and the legal holds, each once however often
    the export is imported; an export of a selection leaves the firm's directory out."""
    home = tmp_path / "src"
    shutil.copytree(ingested, home)
    with Archive.open(home, readonly=True) as ar:
        with ar.catalog.engine.connect() as c:
            uid = c.exec_driver_sql("SELECT sender FROM messages WHERE sender IS NOT NULL "
                                    "GROUP BY sender ORDER BY count(*) DESC LIMIT 1").scalar()
    hr = tmp_path / "hr.csv"
    hr.write_text(f"id,name,mobile,email\n{uid},迁移测试,+86 139-0000-1111,migrate@example.com\n", encoding="utf-8")
    assert _cli(home, "directory", "import", str(hr)).returncode == 0
    assert _cli(home, "hold", "create", "case-7", "--reason", "litigation", "--sender", uid).returncode == 0
    n = _cli(home, "search", "--sender", "迁移测试", "--count").stdout.strip()
    assert int(n) > 0

    out = tmp_path / "all"
    assert _cli(home, "export", "--format", "jsonl", "--out", str(out)).returncode == 0
    kinds = [json.loads(line)["kind"] for line in (out / "state.jsonl").read_text().splitlines()]
    assert "directory.import" in kinds and "admin.hold.create" in kinds
    assert json.loads((out / "manifest.json").read_text())["counts"]["state_entries"] == len(kinds)

    dest = tmp_path / "dest"
    done = _cli(dest, "import", str(out))
    assert done.returncode == 0, done.stderr
    assert f"entries: {len(kinds)} new, 0 already present" in done.stdout
    assert _cli(dest, "search", "--sender", "迁移测试", "--count").stdout.strip() == n
    assert _cli(dest, "search", "--sender", "+86 139 0000 1111", "--count").stdout.strip() == n
    holds = [json.loads(x) for x in _cli(dest, "hold", "list", "--json").stdout.splitlines()]
    assert [h["name"] for h in holds] == ["case-7"]

    def people(h):
        with Archive.open(h, readonly=True) as ar, ar.catalog.engine.connect() as c:
            return sorted(tuple(v for k, v in r._mapping.items() if k not in ("row", "serial"))
                          for r in c.execute(select(s.people)))

    assert people(dest) == people(home)
    again = _cli(dest, "import", str(out))
    assert f"entries: 0 new, {len(kinds)} already present" in again.stdout
    assert people(dest) == people(home)
    events = [json.loads(x) for x in _cli(dest, "audit", "--json", "--action", "admin.import").stdout.splitlines()]
    assert len(events) == 2 and events[0]["query"]["state_entries"] == len(kinds)

    some = tmp_path / "some"
    assert _cli(home, "export", "--format", "jsonl", "--out", str(some), "--sender", uid).returncode == 0
    assert not (some / "state.jsonl").exists()


def test_lines_that_are_not_entries_are_skipped_and_named(tmp_path):
    from wxarchive.capture.jsonl import read_entries, read_state

    good = {"serial": 1, "time": 5, "kind": "media", "meta": {"source": "s", "key": "k"}, "data": ""}
    (tmp_path / "records.jsonl").write_text(json.dumps(good) + "\nnot json\n"
                                            + json.dumps({**good, "meta": {"source": "s"}}) + "\n")
    (tmp_path / "state.jsonl").write_text(json.dumps({**good, "kind": "wecom.directory", "meta": {}}) + "\n"
                                          + json.dumps({**good, "kind": "wecom.message"}) + "\n")
    problems: list[str] = []
    assert [e.line for e in read_entries(tmp_path, problems)] == [1]
    assert [e.kind for e in read_state(tmp_path, problems)] == ["wecom.directory"]
    assert [p.split(": skipped")[0].rsplit(" ", 2)[-2:] for p in problems] == [["line", "2"], ["line", "3"],
                                                                               ["line", "2"]]
    assert list(read_state(tmp_path / "nowhere", problems)) == []
