"""WeChat media files beside the databases: images (3.x XOR and 4.x V1/V2 ``.dat``), video and
files are read from the account folder, unwrapped, checked against the MD5 the message
declares, and archived; what is not there is missing with where it was looked for; nothing
outside the account folder is ever read."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from wxarchive.archive.archive import Archive
from wxarchive.capture.wechat import WeChatDbError, mediafiles, open_reader, parse_image_key, parse_key
from wxarchive.capture.wechat.mediafiles import DatError, decode_dat, sniff
from wxarchive.capture.wechat.policy import load as load_policy
from wxarchive.capture.wechat.windows import _account_file, bytes_extra_paths
from wxarchive.ingest_wechat import ingest_wechat
from wxarchive.simulate.wechat import (
    V4_IMAGE_KEY, _bytes_extra, dat_3x, dat_v4, generate_device, jpeg_like, mp4_like, png,
)

IMAGES = st.one_of(
    st.builds(lambda w, h, s: png(w, h, s), st.integers(1, 40), st.integers(1, 40), st.integers(0, 255)),
    st.builds(lambda n, s: jpeg_like(n, s), st.integers(0, 4000), st.integers(0, 255)),
)


@settings(max_examples=150, deadline=None)
@given(IMAGES, st.integers(1, 255))
def test_3x_dat_round_trip(image, xor):
    data, mt, how = decode_dat(dat_3x(image, xor))
    assert data == image and mt == sniff(image) and how == "3.x XOR"


@settings(max_examples=150, deadline=None)
@given(IMAGES, st.integers(0, 255), st.sampled_from(["V1", "V2"]), st.binary(min_size=16, max_size=16),
       st.integers(0, 2048), st.integers(0, 600))
def test_4x_dat_round_trip(image, xor, version, key, aes_len, xor_len):
    aes = b"cfcd208495d565ef" if version == "V1" else key
    wrapped = dat_v4(image, aes, xor, version, aes_len=aes_len, xor_len=xor_len)
    data, mt, how = decode_dat(wrapped, aes_key=None if version == "V1" else key)
    assert data == image and mt == sniff(image) and how == f"4.x {version}"


def test_dat_that_cannot_be_unwrapped_says_why():
    img = png(10, 10, 1)
    with pytest.raises(DatError, match="image key was not given"):
        decode_dat(dat_v4(img, V4_IMAGE_KEY, 9, "V2"))
    with pytest.raises(DatError, match="wrong image key"):
        decode_dat(dat_v4(img, V4_IMAGE_KEY, 9, "V2"), aes_key=b"0123456789abcdef")
    with pytest.raises(DatError, match="header declares"):
        decode_dat(dat_v4(img, b"cfcd208495d565ef", 9)[:40])
    with pytest.raises(DatError, match="shorter than its 15-byte header"):
        decode_dat(b"\x07\x08V1\x08\x07\x00")
    with pytest.raises(DatError, match="neither 4.x"):
        decode_dat(b"\x00\x01\x02\x03 not an image at all")


def test_image_key_parsing_never_echoes_the_key():
    assert parse_image_key("7a1c0e3f9b2d4c68") == b"7a1c0e3f9b2d4c68"
    assert parse_image_key("00" * 16) == bytes(16)
    with pytest.raises(WeChatDbError) as e:
        parse_image_key("secretsecretsecretX")
    assert "secret" not in str(e.value) and "19 characters" in str(e.value)


def test_paths_from_the_database_stay_inside_the_account_folder(tmp_path):
    acct = tmp_path / "wxid_a"
    assert _account_file(acct, "wxid_a\\FileStorage\\File\\2024-03\\a.pdf") == acct / "FileStorage/File/2024-03/a.pdf"
    for hostile in ("..\\..\\etc\\passwd", "wxid_a\\FileStorage\\..\\..\\x", "C:\\Windows\\win.ini", "/etc/passwd/.."):
        got = _account_file(acct, hostile)
        assert got is None or acct in got.parents, hostile
    extra = _bytes_extra("wxid_s", {4: "wxid_a\\FileStorage\\x.dat", 3: "wxid_a\\FileStorage\\x_t.dat"})
    assert bytes_extra_paths(extra) == {4: "wxid_a\\FileStorage\\x.dat", 3: "wxid_a\\FileStorage\\x_t.dat"}
    assert bytes_extra_paths(b"\xff\xff") == {}


def test_load_reports_unreadable_and_mismatched_files(tmp_path):
    f = tmp_path / "clip.mp4"
    movie = mp4_like(100, 3)
    f.write_bytes(movie)
    ok = mediafiles.load(f, False, hashlib.md5(movie).hexdigest())
    assert (ok.state, ok.media_type, ok.reason, ok.data) == ("present", "video/mp4", None, movie)
    bad = mediafiles.load(f, False, "0" * 32)
    assert bad.state == "present" and "differs from the 00000000000000000000000000000000" in bad.reason
    gone = mediafiles.load(tmp_path / "nope.mp4", False, None)
    assert gone.state == "failed" and gone.data is None and "nope.mp4: cannot be read" in gone.reason


def _attachments(home: Path) -> dict[str, list[dict]]:
    con = sqlite3.connect(home / "catalog.db")
    con.row_factory = sqlite3.Row
    out: dict[str, list[dict]] = {}
    for r in con.execute("SELECT m.msgid, a.* FROM attachments a JOIN messages m ON m.id = a.message_id"):
        out.setdefault(r["msgid"], []).append(dict(r))
    con.close()
    return out


def _run(answer: dict, home: Path, image_key: bytes | None = None):
    root = Path(answer["device"]).parents[1]
    fmt = answer["format"]
    with Archive.open(home, create=True) as ar, \
            open_reader(fmt, Path(answer["device"]), key=parse_key(fmt, answer["key"]), image_key=image_key) as r:
        res = ingest_wechat(ar, r, load_policy(root / "policy.toml"))
    assert res.status == "ok", res.error
    return res


@pytest.fixture(scope="module")
def v4_device(tmp_path_factory):
    return generate_device(tmp_path_factory.mktemp("v4m") / "dev", "v4")


def _v2_image(answer: dict) -> dict:
    return next(e for e in answer["messages"] if e["kind"] == "image" and e["conversation_id"] == "wxid_client03")


def test_v4_v2_image_without_the_key_is_kept_as_found(v4_device, tmp_path):
    home = tmp_path / "h"
    _run(v4_device, home)
    e = _v2_image(v4_device)
    [a] = _attachments(home)[e["msgid"]]
    assert a["state"] == "present" and a["media_type"] == "application/octet-stream"
    assert "image key was not given" in a["reason"]
    with Archive.open(home, readonly=True) as ar:
        assert ar.blobs.get(a["sha256"]).startswith(b"\x07\x08V2\x08\x07")  # the bytes as found: nothing lost
    home2 = tmp_path / "h2"
    _run(v4_device, home2, image_key=b"0123456789abcdef")
    [a] = _attachments(home2)[e["msgid"]]
    assert "wrong image key" in a["reason"] and a["media_type"] == "application/octet-stream"


def test_v4_file_of_the_same_name_but_other_content_is_not_taken(v4_device, tmp_path):
    dev = tmp_path / "dev"
    shutil.copytree(Path(v4_device["device"]).parents[1], dev)
    answer = dict(v4_device, device=str(dev / Path(v4_device["device"]).relative_to(Path(v4_device["device"]).parents[1])))
    [f] = list(dev.rglob("报价单✅.xlsx"))
    f.write_bytes(b"PK\x03\x04 another spreadsheet of the same name")
    home = tmp_path / "h"
    _run(answer, home, image_key=V4_IMAGE_KEY)
    e = next(x for x in v4_device["messages"] if x["kind"] == "file")
    a = next(a for a in _attachments(home)[e["msgid"]] if a["path"] == "")
    assert a["state"] == "missing" and a["sha256"] is None and "MD5 is not the one the message declares" in a["reason"]


def test_win3_damaged_image_is_archived_with_the_mismatch_said(tmp_path):
    answer = generate_device(tmp_path / "dev", "win3")
    img = next(e for e in answer["messages"] if e["kind"] == "image" and e["attachments"] == ["image:present"]
               and not e.get("media_reason"))
    [dat] = [p for p in (tmp_path / "dev").rglob("*.dat") if "Image" in p.parts and p.stat().st_size > 1000]
    raw = bytearray(dat.read_bytes())
    raw[500] ^= 0xFF  # one flipped byte in the middle of the picture
    dat.write_bytes(bytes(raw))
    home = tmp_path / "h"
    _run(answer, home)
    [a] = _attachments(home)[img["msgid"]]
    assert a["state"] == "present" and a["media_type"] == "image/png"
    assert "differs from the" in a["reason"] and a["sha256"] != img["media_sha256"][0]


def test_media_removed_from_the_copy_is_missing_with_where_it_was_looked_for(tmp_path):
    answer = generate_device(tmp_path / "dev", "android")
    userdir = next((tmp_path / "dev").rglob("EnMicroMsg.db")).parent
    shutil.rmtree(userdir / "image2")
    shutil.rmtree(userdir / "video")
    home = tmp_path / "h"
    with Archive.open(home, create=True) as ar, open_reader("android", Path(answer["device"]), uin=answer["uin"]) as r:
        res = ingest_wechat(ar, r, load_policy(tmp_path / "dev" / "policy.toml"))
    assert res.status == "ok"
    atts = [a for v in _attachments(home).values() for a in v if a["kind"] in ("image", "video")]
    assert atts and all(a["state"] == "missing" and a["sha256"] is None for a in atts)
    assert any("image2/" in a["reason"] for a in atts) and any("video/" in a["reason"] for a in atts)
    files = [a for v in _attachments(home).values() for a in v if a["kind"] == "file" and a["path"] == ""]
    assert files and all("outside the account folder" in a["reason"] for a in files)


def test_a_link_out_of_the_account_folder_is_not_followed(tmp_path):
    answer = generate_device(tmp_path / "dev", "win3")
    outside = tmp_path / "outside-secret.dat"
    outside.write_bytes(dat_3x(png(8, 8, 99), 0x5A))  # would unwrap fine, were it read
    [dat] = [p for p in (tmp_path / "dev").rglob("*.dat") if "Image" in p.parts and p.stat().st_size > 1000]
    dat.unlink()
    dat.symlink_to(outside)
    home = tmp_path / "h"
    _run(answer, home)
    img = next(e for e in answer["messages"] if e["kind"] == "image" and e["attachments"] == ["image:present"]
               and not e.get("media_reason"))
    [a] = _attachments(home)[img["msgid"]]
    # the thumbnail (a real file of the account) is taken instead; the linked file never is
    assert a["sha256"] != hashlib.sha256(png(8, 8, 99)).hexdigest()
    assert a["state"] == "present" and "only the thumbnail" in a["reason"]


def test_media_found_in_a_later_copy_are_archived_then(v4_device, tmp_path):
    """A picture downloaded on the device after its message was archived, and a V2 image whose key
    is given later: the next run archives them; a run that finds nothing new journals nothing."""
    root = Path(v4_device["device"]).parents[1]
    dev = tmp_path / "dev"
    shutil.copytree(root, dev)
    answer = dict(v4_device, device=str(dev / Path(v4_device["device"]).relative_to(root)))
    [full] = [p for p in dev.rglob("*.dat") if not p.name.endswith("_t.dat")
              and p.stat().st_size > 1000 and b"V1" in p.read_bytes()[:6]]
    held = full.read_bytes()
    full.unlink()  # the first copy has only the thumbnail
    home = tmp_path / "h"
    first = _run(answer, home)
    assert first.media_found_later == 0
    e = next(x for x in v4_device["messages"] if x["kind"] == "image" and x["attachments"] == ["image:present"]
             and not x.get("media_reason") and x["conversation_id"] == "wxid_client01")
    [a] = _attachments(home)[e["msgid"]]
    assert "only the thumbnail" in a["reason"]
    v2 = _attachments(home)[_v2_image(v4_device)["msgid"]][0]
    assert "stored as found" in v2["reason"]
    again = _run(answer, home)  # nothing new in the copy: nothing journaled
    assert again.media_found_later == 0 and again.counts["pulled"] == 0
    full.write_bytes(held)  # a newer copy: the full picture was downloaded since
    later = _run(answer, home, image_key=V4_IMAGE_KEY)  # and the image key is known now
    assert later.media_found_later == 2 and later.counts["archived"] == 0
    [a] = _attachments(home)[e["msgid"]]
    assert (a["state"], a["reason"], a["sha256"]) == ("present", None, e["media_sha256"][0])
    [b] = _attachments(home)[_v2_image(v4_device)["msgid"]]
    assert (b["reason"], b["sha256"], b["media_type"]) == (None, _v2_image(v4_device)["media_sha256"][0], "image/png")
    assert _run(answer, home, image_key=V4_IMAGE_KEY).media_found_later == 0
    with Archive.open(home, readonly=True) as ar:  # the earlier outcomes stay in the journal; reindex agrees
        outcomes = [x.meta for x in ar.journal.entries() if x.kind == "media" and x.meta["key"] == e["msgid"]]
    assert len(outcomes) == 2 and outcomes[1]["found_later"]
    from wxarchive.ingest import reindex

    before = _attachments(home)
    with Archive.open(home) as ar:
        reindex(ar)
    assert _attachments(home) == before


def test_damaged_media_never_stop_the_run(tmp_path):
    """An empty .dat, a folder or a pipe where a file should be, an ImgInfo2 table of another
    shape: each attachment says what is wrong, every message is archived, the run ends ok."""
    import os

    answer = generate_device(tmp_path / "w", "win3")
    dats = sorted(p for p in (tmp_path / "w").rglob("*.dat") if "Image" in p.parts)
    dats[0].write_bytes(b"")
    mp4 = next((tmp_path / "w").rglob("*.mp4"))
    mp4.unlink()
    os.mkfifo(mp4)
    home = tmp_path / "hw"
    res = _run(answer, home)
    assert res.counts["archived"] == answer["work"]
    reasons = [a["reason"] or "" for v in _attachments(home).values() for a in v]
    assert any("the file is empty" in r for r in reasons), reasons
    assert any("not a regular file" in r for r in reasons), reasons

    a2 = generate_device(tmp_path / "a", "android")
    import sqlcipher3

    db = next((tmp_path / "a").rglob("EnMicroMsg.db"))
    con = sqlcipher3.connect(str(db))
    con.execute("PRAGMA cipher_default_compatibility = 1")
    con.execute(f"PRAGMA key = '{a2['key']}'")
    con.execute("DROP TABLE ImgInfo2")
    con.execute("CREATE TABLE ImgInfo2 (id INTEGER PRIMARY KEY, bigImgPath TEXT)")
    con.commit()
    con.execute("PRAGMA cipher_default_compatibility = 4")
    con.close()
    home = tmp_path / "ha"
    with Archive.open(home, create=True) as ar, open_reader("android", Path(a2["device"]), uin=a2["uin"]) as r:
        res = ingest_wechat(ar, r, load_policy(tmp_path / "a" / "policy.toml"))
    assert res.status == "ok" and res.counts["archived"] == a2["work"]


def test_a_row_pointing_at_another_chats_folder_gets_nothing_from_it(tmp_path, monkeypatch):
    from wxarchive.capture.wechat import windows
    from wxarchive.simulate import wechat as sim

    answer = generate_device(tmp_path / "dev", "win3")
    acct = Path(answer["device"])
    other = acct / "FileStorage" / "MsgAttach" / hashlib.md5(b"wxid_friend01").hexdigest() / "Image" / "2024-03"
    other.mkdir(parents=True, exist_ok=True)
    (other / "family.dat").write_bytes(dat_3x(png(9, 9, 1), sim.WIN3_XOR))
    hostile = f"wxid_owner01\\FileStorage\\MsgAttach\\{hashlib.md5(b'wxid_friend01').hexdigest()}\\Image\\2024-03\\family.dat"
    real = windows.bytes_extra_paths
    monkeypatch.setattr(windows, "bytes_extra_paths", lambda blob: {**real(blob), 4: hostile} if real(blob) else {})
    home = tmp_path / "h"
    _run(answer, home)
    got = [a for v in _attachments(home).values() for a in v if a["kind"] == "image"]
    assert got and all(a["sha256"] != hashlib.sha256(png(9, 9, 1)).hexdigest() for a in got)
    assert any("another chat's folder" in (a["reason"] or "") for a in got)
