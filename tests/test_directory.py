"""The directory: WeCom directory APIs (served by the simulator over HTTPS) and the HR import,
with history — a search by any name, mobile (any formatting) or e-mail finds the person's
messages; transcripts show the name valid when the message was sent; a rebuilt catalog has
the same directory (the answers are journaled)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wxarchive.archive.archive import Archive
from wxarchive.capture.wecom.directory import DirectoryError, DirectoryOptions
from wxarchive.ingest import sync_directory
from wxarchive.model import mobile_digits, participant_kind
from wxarchive.search.query import Query, count
from wxarchive.simulate.server import serve


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))


@pytest.fixture
def home(ingested, tmp_path) -> Path:
    h = tmp_path / "home"
    shutil.copytree(ingested, h)
    return h


@pytest.fixture
def tenant_copy(tenant, tmp_path) -> Path:
    t = tmp_path / "tenant"
    shutil.copytree(tenant, t)
    return t


def _opts(tenant: Path, sim) -> DirectoryOptions:
    info = json.loads((tenant / "tenant.json").read_text())
    return DirectoryOptions(corp_id=info["corp_id"], secret=(tenant / "secret").read_text().strip(),
                            proxy=sim.proxy_url, ca_pem=sim.cert_pem)


def _sync(home: Path, tenant: Path) -> None:
    info = json.loads((tenant / "tenant.json").read_text())
    with serve(tenant) as sim, Archive.open(home) as ar:
        res = sync_directory(ar, _opts(tenant, sim), f"wecom:{info['corp_id']}")
    assert res.answered == res.asked and not res.errors


def _people(home: Path) -> list[dict]:
    done = _cli(home, "directory", "list", "--history", "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_sync_names_everyone_and_search_finds_them_by_name(home, tenant_copy):
    info = json.loads((tenant_copy / "tenant.json").read_text())
    _sync(home, tenant_copy)
    rows = {r["person"]: r for r in _people(home)}
    users = {u["userid"]: u for u in info["users"]}
    seen_users = [u for u in users if u in rows]
    assert seen_users and all(rows[u]["name"] == users[u]["name"] for u in seen_users)
    assert all(rows[u]["mobile"] is None and rows[u]["email"] is None for u in seen_users)  # not since 2022
    assert all(rows[u]["department"] == users[u]["department"] for u in seen_users)
    ext = next(e for e in info["externals"] if e["external_userid"] in rows)
    assert rows[ext["external_userid"]]["name"] == ext["name"] and rows[ext["external_userid"]]["kind"] == "external"
    with Archive.open(home, readonly=True) as ar:
        e = ar.catalog.engine
        for uid in seen_users[:5]:
            assert count(e, Query(sender=users[uid]["name"])) == count(e, Query(sender=uid)) > 0
        with e.connect() as c:
            titles = dict(c.exec_driver_sql("SELECT id, title FROM conversations WHERE kind = 'group'").fetchall())
            consent = c.exec_driver_sql("SELECT count(*) FROM consent").scalar()
    groups = {g["roomid"]: g["name"] for g in info["groups"]}
    assert titles and all(titles[r] == groups[r] for r in titles if r in groups)
    assert consent > 0


def test_a_rename_keeps_history_and_both_names_find_everything(home, tenant_copy):
    _sync(home, tenant_copy)
    t = json.loads((tenant_copy / "tenant.json").read_text())
    with Archive.open(home, readonly=True) as ar:
        with ar.catalog.engine.connect() as c:
            active = {r[0] for r in c.exec_driver_sql("SELECT sender FROM messages WHERE sender IS NOT NULL")}
    user = next(u for u in t["users"] if u["userid"] in active)
    old, new = user["name"], user["name"] + "（新）"
    user["name"] = new
    (tenant_copy / "tenant.json").write_text(json.dumps(t, ensure_ascii=False))
    _sync(home, tenant_copy)
    hist = [r for r in _people(home) if r["person"] == user["userid"] and r["origin"] == "api"]
    assert [r["name"] for r in hist] == [old, new] and hist[0]["valid_to"] == hist[1]["valid_from"]
    with Archive.open(home, readonly=True) as ar:
        e = ar.catalog.engine
        n = count(e, Query(sender=user["userid"]))
        assert n > 0 and count(e, Query(sender=old)) == n == count(e, Query(sender=new))
    # the messages (2024) were sent under the old name: the CSV export says so
    out = home.parent / "csv"
    assert _cli(home, "export", "--format", "csv", "--out", str(out), "--sender", user["userid"]).returncode == 0
    rows = list(csv.DictReader(io.StringIO((out / "messages.csv").read_bytes().decode("utf-8-sig"), newline="")))
    assert len(rows) == n and {r["sender_name"] for r in rows} == {old}


def test_hr_import_gives_mobiles_emails_and_past_names(home, tenant_copy):
    _sync(home, tenant_copy)
    with Archive.open(home, readonly=True) as ar:
        with ar.catalog.engine.connect() as c:
            uid, first, last = c.exec_driver_sql(
                "SELECT sender, min(sent_at), max(sent_at) FROM messages WHERE sender NOT LIKE 'w%' "
                "GROUP BY sender ORDER BY count(*) DESC LIMIT 1").fetchone()
    mid = (first + last) // 2
    from datetime import datetime, timezone

    cut = datetime.fromtimestamp(mid / 1000, timezone.utc).isoformat()
    hr = home.parent / "hr.csv"
    hr.write_text("id,name,mobile,email,department,valid_from,valid_to\n"
                  f"{uid},旧名字,+86 138-0013-8000,Old.Name@Example.com,合规部,,{cut}\n"
                  f"{uid},新名字,+86 138-0013-8000,New.Name@Example.com,合规部,{cut},\n"
                  ",no id,,,,,\n"
                  f"{uid},bad date,,,,yesterday,\n", encoding="utf-8")
    done = _cli(home, "directory", "import", str(hr))
    assert done.returncode == 1 and "line 4: no id" in done.stderr and "line 5:" in done.stderr
    assert "imported 2 row(s) for 1 person(s)" in done.stdout
    with Archive.open(home, readonly=True) as ar:
        e = ar.catalog.engine
        n = count(e, Query(sender=uid))
        for way in ("13800138000", "+86 138 0013 8000", "0086-138-0013-8000", "new.name@example.com",
                    "OLD.NAME@EXAMPLE.COM", "旧名字", "新名字"):
            assert count(e, Query(sender=way)) == n, way
        assert count(e, Query(sender="138 0013")) == 0  # part of a number is not the number
        assert count(e, Query(department="合规部")) >= n
    again = _cli(home, "directory", "import", str(hr))
    assert again.returncode == 1
    assert len([r for r in _people(home) if r["person"] == uid and r["origin"] == "hr"]) == 2  # replaced, not added
    out = home.parent / "csv"
    assert _cli(home, "export", "--format", "csv", "--out", str(out), "--sender", uid).returncode == 0
    rows = list(csv.DictReader(io.StringIO((out / "messages.csv").read_bytes().decode("utf-8-sig"), newline="")))
    api_name = next(r["name"] for r in _people(home) if r["person"] == uid and r["origin"] == "api")
    assert {r["sender_name"] for r in rows} == {api_name}  # the APIs' name comes first when it is valid


def test_consent_states_filter_the_chats_they_cover(home, tenant_copy):
    """Consent comes from agree/disagree messages and from the APIs; the newest report wins
    (one without a time, Default_Agree, only over another without one)."""
    t = json.loads((tenant_copy / "tenant.json").read_text())
    with Archive.open(home, readonly=True) as ar:
        with ar.catalog.engine.connect() as c:
            rows = c.exec_driver_sql("SELECT conversation_id, conversation_kind, kind, content, sender FROM messages"
                                     ).fetchall()
    convs = {(cid, kind) for cid, kind, _, _, _ in rows}
    ext_in_direct = sorted({p for cid, kind in convs if kind == "direct" for p in cid.split("|")
                            if p.startswith(("wm", "wo"))})
    refuser, agreer = ext_in_direct[:2]
    t["consent"] = [{"external_userid": refuser, "status": "Disagree", "time": 1710000000},
                    {"external_userid": agreer, "status": "Agree", "time": 1710000001}]
    (tenant_copy / "tenant.json").write_text(json.dumps(t, ensure_ascii=False))
    _sync(home, tenant_copy)
    # the same, worked out from the raw facts: consent messages, and what the APIs answer
    states: dict[tuple[str, str], tuple[int | None, str]] = {}

    def report(ext: str, scope: str, at: int | None, status: str) -> None:
        old = states.get((ext, scope))
        if old is None or old[0] is None or (at is not None and at >= old[0]):
            states[(ext, scope)] = (at, status)

    for cid, kind, mkind, content, sender in rows:
        if mkind == "consent":
            c = json.loads(content)
            ext = c.get("userid") or sender
            scope = next((p for p in cid.split("|") if p != ext), cid) if kind == "direct" else cid
            report(ext, scope, c.get("time"), "Agree" if c.get("agree") else "Disagree")
    api = {c["external_userid"]: (c["status"], c["time"] * 1000) for c in t["consent"]}
    for cid, kind in sorted(convs):
        pairs = []
        if kind == "direct" and "|" in cid:
            a, b = cid.split("|", 1)
            kinds = {participant_kind(a): a, participant_kind(b): b}
            pairs = [(kinds["external"], kinds["employee"])] if set(kinds) == {"employee", "external"} else []
        else:
            members = next((g["members"] for g in t["groups"] if g["roomid"] == cid), [])
            pairs = [(m, cid) for m in members if m.startswith(("wm", "wo"))]
        for ext, scope in pairs:
            status, at = api.get(ext, ("Default_Agree", 0))
            report(ext, scope, at or None, status)

    def expected(status: str) -> int:
        covered = {(cid, kind) for cid, kind in convs for (ext, scope), (_, st) in states.items() if st == status
                   and (cid == scope if kind == "group" else set(cid.split("|")) == {ext, scope})}
        return sum(1 for cid, kind, _, _, _ in rows if (cid, kind) in covered)

    with Archive.open(home, readonly=True) as ar:
        e = ar.catalog.engine
        for state, word in (("Disagree", "disagree"), ("Agree", "agree"), ("Default_Agree", "default")):
            assert count(e, Query(consent=word)) == expected(state) > 0, word
        with pytest.raises(Exception, match="use one of agree, disagree, default"):
            count(e, Query(consent="maybe"))


def test_reindex_rebuilds_the_same_directory(home, tenant_copy):
    _sync(home, tenant_copy)
    before = sorted(json.dumps(r, sort_keys=True) for r in _people(home))
    assert _cli(home, "reindex").returncode == 0
    assert sorted(json.dumps(r, sort_keys=True) for r in _people(home)) == before


def test_bad_credentials_and_files_are_clear_errors(home, tenant_copy, tmp_path):
    with serve(tenant_copy) as sim, Archive.open(home) as ar:
        opts = _opts(tenant_copy, sim)
        opts.secret = "wrong"
        with pytest.raises(DirectoryError, match="gettoken: errcode 40001"):
            sync_directory(ar, opts, "wecom:x")
        untrusted = _opts(tenant_copy, sim)
        untrusted.ca_pem = None
        with pytest.raises(DirectoryError, match="cannot reach"):
            sync_directory(ar, untrusted, "wecom:x")
    not_csv = tmp_path / "photo.csv"
    not_csv.write_bytes(b"\xff\xd8\xff\xe0 binary")
    for f, msg in ((not_csv, "not UTF-8"), (tmp_path / "none.csv", "cannot read")):
        done = _cli(home, "directory", "import", str(f))
        assert done.returncode == 2 and msg in done.stderr and "Traceback" not in done.stderr
    dupes = tmp_path / "d.csv"
    dupes.write_text("id,name,name,id\nlina,A,B,sunli\n")
    done = _cli(home, "directory", "import", str(dupes))
    assert done.returncode == 2 and "appear twice" in done.stderr
    far = tmp_path / "far.csv"
    far.write_text("id,name,valid_to\nlina,Lina,9999-12-31\nsunli,Sun,\n" + "x,\"" + "y" * 200_000 + "\",\n")
    done = _cli(home, "directory", "import", str(far))
    assert done.returncode == 1 and "line 2: '9999-12-31' is out of range" in done.stderr, done.stderr
    with serve(tenant_copy) as sim, Archive.open(home) as ar:
        for change, msg in (({"proxy": "not a url"}, "give http://HOST:PORT"), ({"proxy": "socks5://h:1"}, "give http"),
                            ({"ca_pem": b"not a certificate"}, "no PEM certificate")):
            opts = _opts(tenant_copy, sim)
            for k, v in change.items():
                setattr(opts, k, v)
            with pytest.raises(DirectoryError, match=msg):
                sync_directory(ar, opts, "wecom:x")
    headerless = tmp_path / "h.csv"
    headerless.write_text("name,mobile\nA,1\n")
    done = _cli(home, "directory", "import", str(headerless))
    assert done.returncode == 2 and "no 'id' column" in done.stderr


def test_mobile_numbers_in_any_formatting():
    for v in ("+86 138 0013 8000", "0086 13800138000", "86-138-0013-8000", "138 0013 8000", "(138)00138000"):
        assert mobile_digits(v) == "13800138000"
    assert mobile_digits("+1 415 555 0100") == "14155550100" and mobile_digits("") is None
