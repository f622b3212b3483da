"""WeChat capture: generated encrypted databases of each format → ingest → the archive
holds exactly the generator's answer key; re-reads add nothing; personal chats never land.

Cases from shared/cases: P2 (group sender), X2 (invalid UTF-8), T2 (createTime 0), C2
(recall marks the original), C3 (quotes keep their link and text), W1 (lz4 CompressContent,
real subtype from the XML), W2 (4.x 64-bit local_type), W3 (newest rows only in -wal), W4
(shards with different columns), W5 (SILK with the 0x02 header), W6 (Android key without
IMEI, negative uin).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from wxarchive.archive.archive import Archive
from wxarchive.capture.wechat import WeChatDbError, open_reader, parse_image_key, parse_key
from wxarchive.capture.wechat.policy import load as load_policy
from wxarchive.ingest_wechat import ingest_wechat
from wxarchive.simulate.wechat import MARKER, generate_device

FORMATS = ["android", "win3", "v4"]


def device(tmp: Path, fmt: str, name: str = "dev", **kw) -> dict:
    return generate_device(tmp / name, fmt, **kw)


def reader_for(answer: dict, fmt: str):
    dev = Path(answer["device"])
    if fmt == "android":
        return open_reader(fmt, dev, uin=answer["uin"])  # no key, no IMEI: derived (case W6)
    image_key = parse_image_key(answer["image_key"]) if answer.get("image_key") else None
    return open_reader(fmt, dev, key=parse_key(fmt, answer["key"]), image_key=image_key)


def ingest(home: Path, answer: dict, fmt: str):
    policy = load_policy(_root(answer) / "policy.toml")
    with Archive.open(home, create=True) as ar, reader_for(answer, fmt) as r:
        return ingest_wechat(ar, r, policy)


def _root(answer: dict) -> Path:
    p = Path(answer["device"])
    while not (p / "answer.json").exists():
        p = p.parent
    return p


def catalog(home: Path) -> dict[str, dict]:
    con = sqlite3.connect(home / "catalog.db")
    con.row_factory = sqlite3.Row
    out = {}
    for r in con.execute("SELECT * FROM messages"):
        d = dict(r)
        d["attachments"] = [dict(a) for a in con.execute(
            "SELECT kind, state, reason, sha256, path FROM attachments WHERE message_id = ? ORDER BY path", (r["id"],))]
        out[r["msgid"]] = d
    con.close()
    return out


def by_key(msgs: dict[str, dict], e: dict) -> dict | None:
    """The archived message for an answer-key entry: by server id, or (rows without one) by chat
    and text — and then there must be as many archived as expected."""
    if e["msgid"]:
        return msgs.get(e["msgid"])
    hits = [m for m in msgs.values() if m["conversation_id"] == e["conversation_id"] and m["text"] == e["text"]]
    return hits[0] if hits else None


def test_rows_without_server_id_are_counted_exactly(archived):
    _, _, answer, home, _ = archived
    msgs = catalog(home).values()
    want: dict[tuple, int] = {}
    for e in answer["messages"]:
        if not e["msgid"]:
            want[(e["conversation_id"], e["text"])] = want.get((e["conversation_id"], e["text"]), 0) + 1
    got = {k: sum(1 for m in msgs if (m["conversation_id"], m["text"]) == k) for k in want}
    assert got == want and 2 in want.values()  # two identical notices in one second stay two


@pytest.fixture(scope="module", params=FORMATS)
def archived(request, tmp_path_factory):
    fmt = request.param
    tmp = tmp_path_factory.mktemp(f"wechat-{fmt}")
    answer = device(tmp, fmt, messages=60)
    home = tmp / "home"
    result = ingest(home, answer, fmt)
    return fmt, tmp, answer, home, result


def test_archive_equals_answer_key(archived):
    fmt, _, answer, home, result = archived
    assert result.status == "ok", result.error
    msgs = catalog(home)
    assert len(msgs) == answer["work"] == result.counts["archived"]
    for e in answer["messages"]:
        m = by_key(msgs, e)
        assert m is not None, e
        assert m["conversation_id"] == e["conversation_id"]
        assert m["sender"] == e["sender"], e
        assert m["kind"] == e["kind"], e
        assert m["text"] == e["text"], e
        assert m["sent_at"] == e["sent_at"], e
        assert m["conversation_kind"] == ("group" if e["conversation_id"].endswith("@chatroom") else "direct")
        for flag in e.get("flags", []):
            assert flag in json.loads(m["flags"]), (flag, e)
        if "reply_to" in e:
            assert m["reply_to"] == e["reply_to"]
            assert json.loads(m["content"])["quote"]["quoted_text"] == e["quote_text"]
        if "recalls" in e:
            assert m["recalls"] == e["recalls"]
            assert msgs[e["recalls"]]["recalled_by"] == m["msgid"]  # case C2: the original stays, marked
        if "attachments" in e:
            got = sorted(f"{a['kind']}:{a['state']}" for a in m["attachments"])
            assert got == sorted(e["attachments"]), (got, e)
        if "media_sha256" in e:  # the file on the device, unwrapped, is what was archived
            assert sorted(a["sha256"] for a in m["attachments"] if a["sha256"] and a["kind"] != "voice_wav"
                          and a["kind"] != "voice") == sorted(e["media_sha256"]), e
            if e.get("media_reason"):
                assert any(e["media_reason"] in (a["reason"] or "") for a in m["attachments"]), (m["attachments"], e)
            else:
                assert all(not a["reason"] for a in m["attachments"] if a["state"] == "present"), m["attachments"]


def test_second_read_adds_nothing_and_newer_copy_adds_exactly_the_new(archived, tmp_path):
    fmt, tmp, answer, home, _ = archived
    h = tmp_path / "home"
    shutil.copytree(home, h)
    before = catalog(h)
    again = ingest(h, answer, fmt)
    assert again.status == "ok"
    assert again.counts["archived"] == 0 and again.counts["pulled"] == 0  # the cursor covers everything
    assert catalog(h).keys() == before.keys()
    newer = device(tmp_path, fmt, name="newer", messages=60, extra=100)
    r = ingest(h, newer, fmt)
    after = catalog(h)
    new_work = newer["work"] - answer["work"]
    assert r.counts["archived"] == new_work == len(after) - len(before)
    assert 0 < new_work <= 100
    assert newer["total"] == answer["total"] + 100  # 100 more messages, personal ones among them
    assert r.counts["excluded"] == newer["personal"]
    expected_new = {e["msgid"] for e in newer["messages"] if e["msgid"]} - set(before)
    assert set(after) - set(before) == expected_new


def test_rereading_from_scratch_is_idempotent_by_server_id(archived, tmp_path):
    """Without the cursor (a copy restored elsewhere, a shard re-split), the message ids still
    deduplicate: every row read again is a duplicate."""
    fmt, tmp, answer, home, _ = archived
    h = tmp_path / "home"
    shutil.copytree(home, h)
    con = sqlite3.connect(h / "catalog.db")
    con.execute("DELETE FROM cursors")
    con.commit()
    con.close()
    r = ingest(h, answer, fmt)
    assert r.counts["archived"] == 0
    assert r.counts["duplicates"] == r.counts["pulled"] == answer["work"]


def test_personal_chats_never_reach_journal_catalog_or_logs(archived):
    fmt, _, answer, home, result = archived
    assert result.counts["excluded"] == answer["personal"] > 0
    with Archive.open(home, readonly=True) as ar:
        for e in ar.journal.entries():
            blob = e.data + json.dumps(e.meta, ensure_ascii=False).encode()
            assert MARKER.encode() not in blob, e.kind
            assert b"wxid_friend02" not in blob and "家人群".encode() not in blob, e.kind
        blobs = [f.name for f in (home / "blobs").rglob("*") if f.is_file() and len(f.name) == 64]
        assert len(blobs) >= (4 if fmt == "android" else 6)  # voice, WAV, images, video (and the file)
        for sha in blobs:  # media of personal chats are never read, so never stored
            assert MARKER.encode() not in ar.blobs.get(sha), sha
        census = [e.meta for e in ar.journal.entries() if e.kind == "wechat.census"][-1]
    assert census["captured"] + census["excluded"] == census["total"] == answer["total"]
    assert census["captured"] == answer["work"]
    for f in home.rglob("*"):
        if f.is_file():
            raw = f.read_bytes()
            assert MARKER.encode() not in raw, f
            assert "妈妈".encode() not in raw, f  # a personal contact's name
    con = sqlite3.connect(home / "catalog.db")
    assert json.loads(con.execute("SELECT value FROM meta WHERE key = ?", (f"census:wechat:{answer['owner']}",))
                      .fetchone()[0])["excluded"] == answer["personal"]
    con.close()


def test_group_sender_resolved_each_platforms_way(archived):
    """Case P2: Android prefix, Windows BytesExtra, 4.x Name2Id — the member, never the group."""
    fmt, _, answer, home, _ = archived
    msgs = catalog(home)
    group = [m for m in msgs.values() if m["conversation_id"].endswith("@chatroom") and m["kind"] == "text"]
    assert group and all(m["sender"] and not m["sender"].endswith("@chatroom") for m in group)
    assert all(not m["text"].startswith("wxid_") for m in group)  # the prefix is not part of the text
    first = next(m for m in group if m["text"] == "明天见")
    assert first["sender"] == "wxid_client01"


def test_invalid_utf8_kept_raw_and_shown_with_replacement(archived):
    """Case X2: the journal keeps the stored bytes; the catalog shows U+FFFD and a flag."""
    fmt, _, answer, home, _ = archived
    e = next(x for x in answer["messages"] if "invalid_text" in x.get("flags", []))
    m = catalog(home)[e["msgid"]]
    assert m["text"] == "价格\ufffd\ufffd确认" and "invalid_text" in json.loads(m["flags"])
    with Archive.open(home, readonly=True) as ar:
        raw = next(x for x in ar.journal.entries() if x.kind == "wechat.row" and x.meta["key"] == e["msgid"])
    import base64

    rec = json.loads(raw.data)
    body = next(v for k, v in rec["row"].items() if isinstance(v, dict) and k in ("content", "StrContent", "message_content"))
    assert b"\xff\xfe" in base64.b64decode(next(iter(body.values())))


def test_unknown_time_is_none_not_1970(archived):
    """Case T2: createTime 0 is unknown time, flagged."""
    _, _, answer, home, _ = archived
    m = next(m for m in catalog(home).values() if m["text"] == "没有时间的消息")
    assert m["sent_at"] is None and "unknown_time" in json.loads(m["flags"])


def test_wal_only_rows_are_archived(archived):
    """Case W3: the newest rows live only in the -wal file."""
    fmt, _, answer, home, _ = archived
    assert answer["wal_only"]
    msgs = catalog(home)
    assert all(sid in msgs for sid in answer["wal_only"])
    assert any(p.name.endswith("-wal") for p in Path(answer["device"]).rglob("*"))


def test_silk_voice_kept_and_converted(archived):
    """Case W5: WeChat's SILK (0x02 then #!SILK_V3) is kept as it is and a WAV made beside it."""
    _, _, answer, home, _ = archived
    v = next(m for m in catalog(home).values() if m["kind"] == "voice")
    atts = {a["path"]: a for a in v["attachments"]}
    assert atts[""]["state"] == "present" and atts["wav"]["state"] == "present"
    with Archive.open(home, readonly=True) as ar:
        assert ar.blobs.get(atts[""]["sha256"]).startswith(b"\x02#!SILK_V3")
        wav = ar.blobs.get(atts["wav"]["sha256"])
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) > 40000  # one second at 24 kHz


def test_app_messages_by_real_subtype(archived):
    """Cases W1/W2: quotes, records, transfers… are found by their real subtype on every
    platform (4.x: high 32 bits of local_type; 3.x: the lz4 CompressContent XML)."""
    fmt, _, _, home, _ = archived
    msgs = catalog(home).values()
    types = {m["source_type"].split(":", 1)[1] for m in msgs}
    for t in ("app:quote", "app:chat_record", "app:file", "app:link", "app:transfer", "app:red_packet",
              "app:mini_program", "app:channels", "sysmsg:revokemsg", "sysmsg:pat", "voip"):
        assert t in types, (fmt, t, sorted(types))
    terms = next(m for m in msgs if m["text"].startswith("Terms "))
    assert terms["text"].count("重复条款") == 3000  # lz4 output far beyond 4× its input (W1)


def test_quote_exports_keep_link_and_text(archived, tmp_path):
    """Case C3: the HTML transcript shows the quoted text beside the reply."""
    fmt, _, answer, home, _ = archived
    from wxarchive.export.html import export_html
    from wxarchive.search.query import Query

    with Archive.open(home, readonly=True) as ar:
        export_html(ar, Query(conversation="wxid_client01"), tmp_path / "out", query_text={}, tz="Asia/Shanghai")
    html = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "out").rglob("*.html"))
    assert "已发，请查收" in html and "您好，报价单今天能发吗？" in html
    assert "<img src=x onerror" not in html  # case X4 on WeChat text too


def test_reindex_rebuilds_the_same_catalog(archived, tmp_path):
    from wxarchive.ingest import reindex

    _, _, _, home, _ = archived
    h = tmp_path / "home"
    shutil.copytree(home, h)
    fields = ("text", "sender", "kind", "recalled_by", "content", "flags", "sent_at", "reply_to", "recipients",
              "source_type", "attachments", "conversation_id", "external")

    def rows():  # what the live ingest wrote (parsed from the rows as read) = what the journal rebuilds
        return {k: tuple(str(v[f]) for f in fields) for k, v in catalog(h).items()}

    before = rows()
    with Archive.open(h) as ar:
        reindex(ar)
    assert rows() == before


def test_phone_pc_and_v4_copies_of_one_account_are_one_archive(archived, tmp_path):
    """The same account read from its Android, Windows 3.x and 4.x databases: one message each,
    server ids or not (the notices without one get the same id on every platform)."""
    fmt, _, answer, home, _ = archived
    h = tmp_path / "home"
    shutil.copytree(home, h)
    for other in FORMATS:
        if other != fmt:
            r = ingest(h, device(tmp_path, other, name=other, messages=60), other)
            assert r.counts["archived"] == 0 and r.counts["duplicates"] == answer["work"], (other, r.counts)
    assert len(catalog(h)) == answer["work"]


# ---- errors: one line naming the file, nothing archived ----------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wechat-small")
    return {fmt: device(tmp, fmt, name=fmt) for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_key_is_one_clear_error(small, fmt):
    a = small[fmt]
    wrong = "abcdef1" if fmt == "android" else "11" * 32
    with pytest.raises(WeChatDbError, match="key does not open"):
        open_reader(fmt, Path(a["device"]), key=parse_key(fmt, wrong))


def test_android_key_candidates_exhausted(small):
    with pytest.raises(WeChatDbError, match=r"no key derived from the IMEI and uin opens it \(4 tried: IMEI "
                                            r"490154203237518 with uin 3000000000; .*with uin -1294967296\)"):
        open_reader("android", Path(small["android"]["device"]), imei="490154203237518", uin="3000000000")


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file_is_refused(small, fmt, tmp_path):
    a = small[fmt]
    copy = tmp_path / "dev"
    shutil.copytree(Path(a["device"]), copy)
    db = max((p for p in copy.rglob("*.db") if "message" in p.name.lower() or p.name.startswith(("MSG", "EnMicro"))),
             key=lambda p: p.stat().st_size)
    for w in copy.rglob("*-wal"):
        w.unlink()
    size = db.stat().st_size
    page = 1024 if fmt == "android" else 4096
    key = None if fmt == "android" else parse_key(fmt, a["key"])
    with open(db, "r+b") as f:
        f.truncate(size - 700)
    with pytest.raises(WeChatDbError, match="whole number of"):
        open_reader(fmt, copy, key=key, uin=a.get("uin"), account="wxid_owner01")
    with open(db, "r+b") as f:  # cut at a page boundary: the header's page count tells
        f.truncate(size - 2 * page)
    with pytest.raises(WeChatDbError, match=r"truncated: the database has \d+ pages, the file \d+"):
        open_reader(fmt, copy, key=key, uin=a.get("uin"), account="wxid_owner01")


def test_plain_sqlite_and_wrong_format_are_refused(small, tmp_path):
    plain = tmp_path / "EnMicroMsg.db"
    sqlite3.connect(plain).execute("CREATE TABLE t(x)").connection.commit()
    with pytest.raises(WeChatDbError, match="plain .unencrypted. SQLite"):
        open_reader("android", plain, key=b"abcdef1")
    with pytest.raises(WeChatDbError, match="not a WeChat 4.x db_storage"):
        open_reader("v4", Path(small["win3"]["device"]), key=parse_key("v4", small["win3"]["key"]))
    with pytest.raises(WeChatDbError, match="64 hex"):
        parse_key("win3", "abc")


def test_unknown_schema_names_the_version(tmp_path):
    """A database rewritten by a WeChat version whose message table lacks what we map."""
    import sqlcipher3

    db = tmp_path / "EnMicroMsg.db"
    c = sqlcipher3.connect(str(db))
    c.execute("PRAGMA cipher_default_compatibility = 1")
    c.execute("PRAGMA key = 'abcdef1'")
    c.execute("PRAGMA user_version = 9")
    c.execute("PRAGMA cipher_default_compatibility = 4")  # process-wide: back to SQLCipher 4's
    c.execute("CREATE TABLE message (msgId INTEGER PRIMARY KEY, svrMsgId INTEGER, kind INT, body BLOB)")
    c.commit()
    c.close()
    with pytest.raises(WeChatDbError, match=r"lacks .*createTime.*schema version 9"):
        open_reader("android", db, key=b"abcdef1")


def test_win3_shard_missing_a_needed_column(small, tmp_path):
    """Case W4: different column sets are fine (the generator's two shards differ); a column
    the mapping needs is a clear error naming the shard."""
    import sqlcipher3

    a = small["win3"]
    copy = tmp_path / "acct"
    shutil.copytree(Path(a["device"]), copy)
    shard = copy / "Msg" / "Multi" / "MSG1.db"
    for w in shard.parent.glob("MSG1.db-wal"):
        w.unlink()
    shard.unlink()
    c = sqlcipher3.connect(str(shard))
    c.execute("PRAGMA cipher_default_compatibility = 3")
    c.execute("PRAGMA cipher_default_page_size = 4096")
    c.set_key(bytes.fromhex(a["key"]))
    c.execute("PRAGMA user_version = 1")  # the first access fixes the settings; then the defaults go back
    c.execute("PRAGMA cipher_default_compatibility = 4")
    c.execute("CREATE TABLE MSG (localId INTEGER PRIMARY KEY, MsgSvrID INT, Type INT, SubType INT, IsSender INT, "
              "CreateTime INT, StrContent TEXT)")
    c.commit()
    c.close()
    with pytest.raises(WeChatDbError, match=r"MSG1.db: table MSG lacks StrTalker"):
        open_reader("win3", copy, key=bytes.fromhex(a["key"]))


def test_win3_shards_really_differ(small):
    with open_reader("win3", Path(small["win3"]["device"]), key=parse_key("win3", small["win3"]["key"])) as r:
        from wxarchive.capture.wechat.sqlcipher import columns

        cols = [columns(conn, "MSG") for _, conn in r.shards]
    assert cols[0] != cols[1] and "Reserved6" in cols[0] and "Reserved6" not in cols[1]


def test_no_plaintext_copy_left_on_disk(small, tmp_path, monkeypatch):
    monkeypatch.setenv("WXARCHIVE_TMP", str(tmp_path))
    a = small["v4"]
    with reader_for(a, "v4") as r:
        list(r.rows("wxid_client01", {}))
        for f in tmp_path.rglob("*"):
            if f.is_file():
                assert b"SQLite format 3" not in f.read_bytes()[:16], f  # copies are encrypted
    assert not any(tmp_path.iterdir())  # and gone after close


# ---- the archive's readers on WeChat messages ---------------------------------------------------


def test_rsmf_export_of_wechat_conversations_validates(archived, tmp_path):
    from wxarchive.export.rsmf import export_rsmf
    from wxarchive.export.rsmf_validate import validate_file
    from wxarchive.search.query import Query

    fmt, _, answer, home, _ = archived
    with Archive.open(home, readonly=True) as ar:
        export_rsmf(ar, Query(), tmp_path / "out", query_text={}, tz="Asia/Shanghai")
    files = sorted((tmp_path / "out" / "rsmf").glob("*.rsmf"))
    assert len(files) == 7  # one per work conversation
    for f in files:
        v = validate_file(f)
        assert v.result == "Passed", (f.name, [x.line() for x in v.findings[:5]])


def test_export_of_record_imports_into_the_same_catalog(archived, tmp_path):
    from wxarchive.export.jsonl import export_jsonl
    from wxarchive.ingest import import_export
    from wxarchive.search.query import Query

    fmt, _, answer, home, _ = archived
    with Archive.open(home, readonly=True) as ar:
        export_jsonl(ar, Query(), tmp_path / "rec", query_text={})
    with Archive.open(tmp_path / "copy", create=True) as ar:
        res = import_export(ar, tmp_path / "rec")
    assert res.problems == [] and res.messages == answer["work"]
    keep = ("text", "sender", "kind", "content", "flags", "sent_at", "reply_to", "recalled_by", "attachments")
    a, b = catalog(home), catalog(tmp_path / "copy")
    assert {k: [str(v[f]) for f in keep] for k, v in a.items()} == {k: [str(v[f]) for f in keep] for k, v in b.items()}


def test_device_root_is_enough_when_it_holds_one_account(small):
    for fmt in ("win3", "v4"):
        root = _root(small[fmt])
        with open_reader(fmt, root, key=parse_key(fmt, small[fmt]["key"])) as r:
            assert r.owner == "wxid_owner01"


def test_copies_left_by_a_killed_reader_are_swept(small, tmp_path, monkeypatch):
    from wxarchive.capture.wechat.sqlcipher import TMP_PREFIX

    monkeypatch.setenv("WXARCHIVE_TMP", str(tmp_path))
    dead = tmp_path / f"{TMP_PREFIX}dead"
    dead.mkdir()
    (dead / "pid").write_text("999999999")
    (dead / "db").write_bytes(b"encrypted copy")
    alive = tmp_path / f"{TMP_PREFIX}alive"
    alive.mkdir()
    (alive / "pid").write_text(str(__import__("os").getpid()))
    with reader_for(small["android"], "android"):
        pass
    assert not dead.exists() and alive.exists()
