"""Hostile and damaged WeChat copies (from the break-it trial): one bad row, id or page never
stops the archive, bricks the catalog or leaks; damage that loses messages is said."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli import assert_clean_error, run
from test_wechat import _root, catalog, device, ingest
from wxarchive.archive.archive import Archive
from wxarchive.capture.wechat import WeChatDbError, open_reader, parse_key
from wxarchive.capture.wechat.policy import load as load_policy
from wxarchive.ingest_wechat import PolicyCannotApply, ingest_wechat


def edit(db: Path, fmt: str, key: str, *sql: str | tuple) -> None:
    """Change an encrypted database in place, as a hostile or broken client would have written it."""
    import sqlcipher3

    c = sqlcipher3.connect(str(db))
    c.execute(f"PRAGMA cipher_default_compatibility = {dict(android=1, win3=3, v4=4)[fmt]}")
    c.execute(f"PRAGMA cipher_default_page_size = {1024 if fmt == 'android' else 4096}")
    if fmt == "android":
        c.execute(f"PRAGMA key = '{key}'")
    else:
        c.set_key(bytes.fromhex(key))
    c.execute("SELECT count(*) FROM sqlite_master").fetchone()
    c.execute("PRAGMA cipher_default_compatibility = 4")  # process-wide: back to SQLCipher 4's
    c.execute("PRAGMA cipher_default_page_size = 4096")
    for q in sql:
        c.execute(*q) if isinstance(q, tuple) else c.execute(q)
    c.commit()
    c.close()


def copy_device(tmp: Path, answer: dict, name: str) -> dict:
    root = _root(answer)
    dst = tmp / name
    shutil.copytree(root, dst)
    a = json.loads((dst / "answer.json").read_text())
    a["device"] = str(dst / Path(answer["device"]).relative_to(root))
    return a


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    return {fmt: device(tmp, fmt, name=fmt, messages=30) for fmt in ("android", "win3", "v4")}


def v4_table(a: dict, talker: str) -> tuple[Path, str]:
    import hashlib

    return (Path(a["device"]) / "db_storage" / "message" / "message_0.db",
            "Msg_" + hashlib.md5(talker.encode()).hexdigest())


def test_hostile_rows_are_flagged_or_quarantined_and_the_archive_stays_usable(base, tmp_path):
    a = copy_device(tmp_path, base["v4"], "dev")
    db, t = v4_table(a, "wxid_client01")
    cols = "server_id, local_type, sort_seq, real_sender_id, create_time, message_content"
    edit(db, "v4", a["key"],
         f"INSERT INTO {t} ({cols}) VALUES (9100000000000000001, 1, 1, 2, 'notatime', 'text as time')",
         f"INSERT INTO {t} ({cols}) VALUES (9100000000000000002, 1, 1, 2, 100000000000000000, 'overflowing time')",
         f"INSERT INTO {t} ({cols}) VALUES (9100000000000000003, 1, 1, 2, 253402300800, 'year 10000')",
         f"INSERT INTO {t} ({cols}) VALUES (9100000000000000004, 'xyz', 1, 2, 1709900000, 'type as text')",
         f"INSERT INTO {t} ({cols}) VALUES ('abc', 1, 1, 2, 1709900001, 'server id as text')")
    home = tmp_path / "home"
    r = ingest(home, a, "v4")
    assert r.status == "ok" and r.counts["quarantined"] == 1
    msgs = catalog(home)
    for sid in ("9100000000000000001", "9100000000000000002", "9100000000000000003"):
        assert msgs[sid]["sent_at"] is None and "time_unusable" in json.loads(msgs[sid]["flags"])
    assert any(m["text"] == "server id as text" and m["msgid"].startswith("local:") for m in msgs.values())
    con = sqlite3.connect(home / "catalog.db")
    reason = con.execute("SELECT reason FROM records WHERE state = 'quarantined'").fetchone()[0]
    con.close()
    assert "local_type" in reason
    # the archive goes on working: every reader, a rebuild, a later copy
    for args in (["conversations"], ["show", "wxid_client01"], ["search", "year"], ["verify"], ["reindex"]):
        p = run(*args, home=home)
        assert p.returncode == 0, (args, p.stderr[-500:])
    p = run("export", "--format", "rsmf", "--out", str(tmp_path / "x"), home=home)
    assert p.returncode == 0, p.stderr[-500:]
    assert ingest(home, base["v4"], "v4").status == "ok"


def test_ids_and_names_that_are_not_utf8(base, tmp_path):
    a = copy_device(tmp_path, base["android"], "dev")
    db = next(Path(a["device"]).rglob("EnMicroMsg.db"))
    edit(db, "android", a["key"],
         "INSERT INTO message (msgId, msgSvrId, type, isSend, createTime, talker, content) VALUES "
         "(90001, 91, 1, 0, 1709900000000, CAST(X'77786964FFFE' AS TEXT), 'personal chat with a broken id')",
         "INSERT INTO message (msgId, msgSvrId, type, isSend, createTime, talker, content) VALUES "
         "(90002, 92, 1, 0, 1709900001000, CAST(X'7778696401FF' AS TEXT), 'work chat with a broken id')",
         "INSERT INTO rcontact (username, nickname, contactLabelIds) VALUES (CAST(X'7778696401FF' AS TEXT), "
         "CAST(X'4D6F6DFF' AS TEXT), '1')",
         "UPDATE rcontact SET nickname = CAST(X'5A68616E67FF' AS TEXT) WHERE username = 'wxid_client01'",
         "UPDATE rcontact SET contactLabelIds = CAST(X'31FF' AS TEXT) WHERE username = 'wxid_friend01'")
    home = tmp_path / "home"
    r = ingest(home, a, "android")
    assert r.status == "ok"
    msgs = catalog(home)
    broken = [m for m in msgs.values() if m["text"] == "work chat with a broken id"]
    assert len(broken) == 1 and broken[0]["conversation_id"] == "wxid\x01\\xff"  # labelled 客户: work
    assert not any(m["text"] == "personal chat with a broken id" for m in msgs.values())


def test_v4_names_tables_and_rooms_of_odd_shape(base, tmp_path):
    a = copy_device(tmp_path, base["v4"], "dev")
    store = Path(a["device"]) / "db_storage"
    edit(store / "message" / "message_0.db", "v4", a["key"],
         "INSERT INTO Name2Id (user_name) VALUES (CAST(X'77786964FFFE' AS TEXT))",
         'CREATE TABLE "Msg_we""ird" (local_id INTEGER PRIMARY KEY, server_id INTEGER, local_type INTEGER, '
         "real_sender_id INTEGER, create_time INTEGER, message_content TEXT)",
         "INSERT INTO \"Msg_we\"\"ird\" VALUES (1, 5, 1, 1, 1709900000, 'in an unknown table')")
    edit(store / "contact" / "contact.db", "v4", a["key"],
         "CREATE TABLE chat_room2 AS SELECT id, username, owner FROM chat_room", "DROP TABLE chat_room",
         "ALTER TABLE chat_room2 RENAME TO chat_room")
    with open_reader("v4", Path(a["device"]), key=parse_key("v4", a["key"])) as r:
        census = {c.talker: c.total for c in r.census()}
        assert census["unknown:we\"ird"] == 1
        assert r.groups()["20000001@chatroom"].members == []
    assert ingest(tmp_path / "home", a, "v4").status == "ok"


def test_damaged_wal_is_said_and_journaled(base, tmp_path):
    a = copy_device(tmp_path, base["v4"], "dev")
    wal = Path(a["device"]) / "db_storage" / "message" / "message_1.db-wal"
    data = bytearray(wal.read_bytes())
    data[32 + 24 + 100] ^= 0xFF  # inside the first frame's page: its checksum fails
    wal.write_bytes(bytes(data))
    home = tmp_path / "home"
    r = ingest(home, a, "v4")
    assert r.status == "ok"
    assert any("message_1.db-wal: frame 1 of" in w and "fails its checksum" in w for w in r.warnings), r.warnings
    with Archive.open(home, readonly=True) as ar:
        census = [e.meta for e in ar.journal.entries(kinds={"wechat.census"})][-1]
    assert census["warnings"] == r.warnings
    st = json.loads(run("status", "--json", home=home).stdout)
    assert st["wechat"][0]["warnings"] == r.warnings
    assert "fails its checksum" in run("status", home=home).stdout
    wal.write_bytes(bytes(data[: 32 + 24 + 4096 + 1000]))  # cut inside the second frame
    b = copy_device(tmp_path, a, "dev2")
    with open_reader("v4", Path(b["device"]), key=parse_key("v4", b["key"])) as rd:
        assert any("incomplete frame" in w or "fails its checksum" in w for w in rd.warnings), rd.warnings


def test_cut_at_a_page_boundary_with_a_wal_is_refused(base, tmp_path):
    a = copy_device(tmp_path, base["win3"], "dev")
    shard = Path(a["device"]) / "Msg" / "Multi" / "MSG1.db"
    assert Path(str(shard) + "-wal").exists()
    with open(shard, "r+b") as f:
        f.truncate(4096 * 3)
    with pytest.raises(WeChatDbError, match=r"MSG1.db: truncated: the database has \d+ pages, the file 3 and its -wal"):
        open_reader("win3", Path(a["device"]), key=parse_key("win3", a["key"]))


def test_a_damaged_page_is_one_line_naming_the_file(base, tmp_path):
    a = copy_device(tmp_path, base["v4"], "dev")
    db = Path(a["device"]) / "db_storage" / "message" / "message_0.db"
    pages = db.stat().st_size // 4096
    with open(db, "r+b") as f:  # every page but the first: whatever the run reads next is damaged
        for n in range(1, pages):
            f.seek(4096 * n + 100)
            f.write(os.urandom(200))
    root = _root(a)
    p = run("ingest", "wechat", a["device"], "--format", "v4", "--key-file", str(root / "key.txt"), "--policy",
            str(root / "policy.toml"), home=tmp_path / "home")
    assert p.returncode in (1, 2) and "Traceback" not in p.stderr and "ERROR CORE" not in p.stderr, p.stderr
    assert "message_0.db: cannot be read" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_policy_that_needs_contacts_refuses_a_copy_without_them(base, tmp_path):
    a = copy_device(tmp_path, base["v4"], "dev")
    (Path(a["device"]) / "db_storage" / "contact" / "contact.db").unlink()
    (Path(a["device"]) / "db_storage" / "contact" / "contact.db-wal").unlink(missing_ok=True)
    with Archive.open(tmp_path / "home", create=True) as ar, \
            open_reader("v4", Path(a["device"]), key=parse_key("v4", a["key"])) as r:
        assert any("contact.db: missing" in w for w in r.warnings)
        with pytest.raises(PolicyCannotApply, match="no contacts"):
            ingest_wechat(ar, r, load_policy(_root(a) / "policy.toml"))
        assert not any(e.kind == "wechat.row" for e in ar.journal.entries())


def test_the_owner_never_makes_every_group_work(base, tmp_path):
    a = base["win3"]
    pol = tmp_path / "p.toml"
    pol.write_text('work_contacts = ["wxid_owner01"]\ngroups_with_work_contacts = true\nopenim_contacts = false\n')
    with Archive.open(tmp_path / "home", create=True) as ar, \
            open_reader("win3", Path(a["device"]), key=parse_key("win3", a["key"])) as r:
        res = ingest_wechat(ar, r, load_policy(pol))
    assert res.counts["archived"] == 0 and any("own account" in w for w in res.warnings)


def test_cli_input_edge_cases(base, tmp_path):
    a = base["v4"]
    root = _root(a)
    odd = tmp_path / "with [/] brackets [red]"
    p = run("ingest", "wechat", str(odd), "--format", "v4", "--key-file", str(root / "key.txt"), "--policy",
            str(root / "policy.toml"), home=tmp_path / "h")
    assert_clean_error(p)
    assert "[/] brackets [red]" in p.stderr
    bom = tmp_path / "bom.key"
    bom.write_text("\ufeff" + a["key"] + "\n", encoding="utf-8")
    p = run("ingest", "wechat", a["device"], "--format", "v4", "--key-file", str(bom), "--dry-run", home=tmp_path / "h")
    assert p.returncode == 0, p.stderr
    p = run("ingest", "wechat", a["device"], "--format", "v4", "--key-file", "/dev/zero", "--dry-run",
            home=tmp_path / "h", timeout=30)
    assert_clean_error(p)
    assert "is not a regular file" in p.stderr  # /dev/zero: refused before reading (a FIFO would block)
    p = run("ingest", "wechat", a["device"], "--format", "v4", "--key-file", str(bom), "--json",
            "--policy", str(root / "policy.toml"), home=tmp_path / "h")
    assert_clean_error(p)
    assert "--json goes with --dry-run" in p.stderr


def test_sigint_stops_between_chunks_and_a_rerun_completes(tmp_path):
    a = device(tmp_path, "win3", name="big", messages=40000, seed=9)
    root = _root(a)
    home = tmp_path / "home"
    cmd = [sys.executable, "-m", "wxarchive.cli", "--home", str(home), "ingest", "wechat", a["device"], "--format",
           "win3", "--key-file", str(root / "key.txt"), "--policy", str(root / "policy.toml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, errs = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert proc.returncode == 130 and "Traceback" not in errs, errs[-1000:]
    assert " stopped:" in out
    st = json.loads(run("status", "--json", home=home).stdout)
    assert st["reconciliation"]["reconciled"] and st["runs"][-1]["status"] == "stopped"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1000:]
    assert len(catalog(home)) == a["work"]


def test_zstd_bomb_is_quarantined_not_archived(base, tmp_path):
    import zstandard

    a = copy_device(tmp_path, base["v4"], "dev")
    db, t = v4_table(a, "wxid_client01")
    bomb = zstandard.ZstdCompressor(level=3).compress(b"B" * (64 << 20))  # the header states its size
    edit(db, "v4", a["key"], (f"INSERT INTO {t} (server_id, local_type, real_sender_id, create_time, message_content, "
                              "WCDB_CT_message_content) VALUES (9200000000000000001, 1, 2, 1709900000, ?, 4)", (bomb,)))
    r = ingest(tmp_path / "home", a, "v4")
    assert r.status == "ok" and r.counts["quarantined"] == 1
    assert "9200000000000000001" not in catalog(tmp_path / "home")


def test_a_reinstalled_copy_whose_local_ids_start_again_is_read_again(base, tmp_path):
    """The cursor keeps the row it stopped at: when that row is gone or another (reinstall,
    restored backup, recreated table), the chat is read from its start; ids deduplicate."""
    a = copy_device(tmp_path, base["android"], "dev")
    home = tmp_path / "home"
    assert ingest(home, a, "android").status == "ok"
    before = len(catalog(home))
    db = next(Path(a["device"]).rglob("EnMicroMsg.db"))
    edit(db, "android", a["key"], "DELETE FROM message",
         *[f"INSERT INTO message (msgId, msgSvrId, type, isSend, createTime, talker, content) VALUES "
           f"({i}, {9300000000000000000 + i}, 1, 0, {1709990000000 + i * 1000}, 'wxid_client01', 'after reinstall {i}')"
           for i in (1, 2, 3)])
    r = ingest(home, a, "android")
    assert r.counts["archived"] == 3 and len(catalog(home)) == before + 3
    assert any("no longer holds the row" in w for w in r.warnings), r.warnings


def test_missing_label_table_is_said(base, tmp_path):
    a = copy_device(tmp_path, base["win3"], "dev")
    edit(Path(a["device"]) / "Msg" / "MicroMsg.db", "win3", a["key"], "DROP TABLE ContactLabel")
    with Archive.open(tmp_path / "home", create=True) as ar, \
            open_reader("win3", Path(a["device"]), key=parse_key("win3", a["key"])) as r:
        res = ingest_wechat(ar, r, load_policy(_root(a) / "policy.toml"))
    assert any("no ContactLabel table" in w for w in res.warnings), res.warnings


def test_wal_cut_before_its_commit_is_said(base, tmp_path):
    a = copy_device(tmp_path, base["v4"], "dev")
    wal = Path(a["device"]) / "db_storage" / "message" / "message_1.db-wal"
    data = wal.read_bytes()
    frames = (len(data) - 32) // (24 + 4096)
    wal.write_bytes(data[: 32 + (frames - 1) * (24 + 4096)])  # the commit frame is the last one
    with open_reader("v4", Path(a["device"]), key=parse_key("v4", a["key"])) as r:
        assert any("belong to no committed transaction" in w for w in r.warnings), r.warnings


def test_two_android_accounts_in_one_folder_are_refused(base, tmp_path):
    root = _root(copy_device(tmp_path, base["android"], "dev"))
    mm = next(root.rglob("EnMicroMsg.db")).parent
    shutil.copytree(mm, mm.parent / "0123456789abcdef0123456789abcdef")
    with pytest.raises(WeChatDbError, match="holds 2 Android accounts"):
        open_reader("android", root, key=b"abcdef1")


def test_a_path_the_system_refuses_is_one_line(tmp_path):
    p = run("ingest", "wechat", str(tmp_path / ("x" * 300)), "--format", "v4", "--key", "11" * 32, "--dry-run",
            home=tmp_path / "h")
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.startswith("error:"), p.stderr
