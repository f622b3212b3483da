"""The simulated tenant (docs/simulator.md): contract, determinism, and a full round trip.

Every chatdata record is decrypted with the *official* DecryptData (loaded via ctypes)
and must equal the answer key; every media file is decrypted and must match the answer
key's size, md5 and sha256 and start with the magic number of its type.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import io
import json
import stat
import time
import zipfile
from collections import Counter
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding as asympadding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wxarchive.model import MessageKind
from wxarchive.simulate.contents import KIND_BY_MSGTYPE, UNKNOWN_MSGTYPES
from wxarchive.simulate.crypto import parse_sdkfileid
from wxarchive.simulate.localdecrypt import DecryptDataError, decrypt_data
from wxarchive.simulate.scenarios import minimum_messages
from wxarchive.simulate.tenant import DST_INSTANT_MS, generate_tenant

N = 300
SEED = 7
SDK_MIN_MSG = 45  # shorter encrypt_chat_msg can abort the official library


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tenant(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tenant")
    generate_tenant(d, messages=N, seed=SEED)
    return d


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def answer(tenant) -> list[dict[str, Any]]:
    return _lines(tenant / "answer" / "messages.jsonl")


@pytest.fixture(scope="module")
def chatdata(tenant) -> list[dict[str, Any]]:
    return _lines(tenant / "chatdata.jsonl")


@pytest.fixture(scope="module")
def plaintexts(answer) -> list[dict[str, Any]]:
    return [a["plaintext"] for a in answer if a["plaintext"]]


@pytest.fixture(scope="module")
def private_keys(tenant) -> dict[int, Any]:
    return {
        int(p.stem.split("_v")[1]): serialization.load_pem_private_key(p.read_bytes(), None)
        for p in (tenant / "keys").glob("private_v*.pem")
    }


class OfficialDecrypt:
    """DecryptData of the official library, in process (never fed < 45 characters)."""

    def __init__(self) -> None:
        loc = Path(find_spec("pyweworkfinance").submodule_search_locations[0])
        lib = ctypes.CDLL(str(loc / "libs/linux/libWeWorkFinanceSdk_C_x86.so"))
        lib.NewSlice.restype = ctypes.c_void_p
        lib.FreeSlice.argtypes = [ctypes.c_void_p]
        lib.GetContentFromSlice.restype = ctypes.c_void_p
        lib.GetContentFromSlice.argtypes = [ctypes.c_void_p]
        lib.GetSliceLen.argtypes = [ctypes.c_void_p]
        lib.DecryptData.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        self.lib = lib

    def __call__(self, random_key: bytes, msg: str) -> tuple[int, bytes]:
        assert len(msg) >= SDK_MIN_MSG
        s = self.lib.NewSlice()
        try:
            rc = self.lib.DecryptData(random_key, msg.encode("ascii"), s)
            out = ctypes.string_at(self.lib.GetContentFromSlice(s), self.lib.GetSliceLen(s))
        finally:
            self.lib.FreeSlice(s)
        return rc, out


@pytest.fixture(scope="module")
def official() -> OfficialDecrypt:
    return OfficialDecrypt()


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_tenant(tmp_path, tenant):
    again = tmp_path / "again"
    generate_tenant(again, messages=N, seed=SEED)
    assert _tree_bytes(again) == _tree_bytes(tenant)


def test_other_seed_gives_other_tenant(tmp_path, tenant):
    other = tmp_path / "other"
    generate_tenant(other, messages=N, seed=SEED + 1)
    assert (other / "chatdata.jsonl").read_bytes() != (tenant / "chatdata.jsonl").read_bytes()
    assert (
        json.loads((other / "tenant.json").read_text())["corp_id"]
        != json.loads((tenant / "tenant.json").read_text())["corp_id"]
    )


def test_regenerating_in_place_leaves_no_stale_files(tmp_path):
    d = tmp_path / "t"
    generate_tenant(d, messages=200, seed=SEED + 1)
    summary = generate_tenant(d, messages=150, seed=SEED)
    index = _lines(d / "media" / "index.jsonl")
    assert len(list((d / "media").glob("*.enc"))) == len(index) == summary.media_items
    assert len(_lines(d / "chatdata.jsonl")) == 150


def test_too_few_messages_is_refused(tmp_path):
    with pytest.raises(ValueError):
        generate_tenant(tmp_path / "t", messages=minimum_messages() - 1)


def test_progress_is_reported_up_to_the_total(tmp_path):
    seen: list[int] = []
    generate_tenant(tmp_path / "t", messages=1100, seed=SEED, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1100 and len(seen) >= 3


# --------------------------------------------------------------------------- contract files


def test_tenant_json_and_directory(tenant, plaintexts):
    meta = json.loads((tenant / "tenant.json").read_text(encoding="utf-8"))
    assert meta["corp_id"].startswith("ww") and meta["seed"] == SEED and meta["messages"] == N
    assert meta["key_versions"] == [1, 2]
    assert 35 <= len(meta["users"]) <= 45
    for u in meta["users"]:
        assert set(u) == {"userid", "name", "english_name", "mobile", "email", "department", "position"}
        assert u["mobile"].startswith("+86 13") and "@" in u["email"]
    names = {u["name"] for u in meta["users"]}
    assert {"王小明", "Zoë 👩‍👩‍👧", "David Chen"} <= names
    assert {"Wealth Management", "Compliance", "Trading", "财富管理部", "合规部"} & {
        u["department"] for u in meta["users"]
    }
    ext = meta["externals"]
    assert any(e["external_userid"].startswith("wm") and e["type"] == 1 for e in ext)
    assert any(e["external_userid"].startswith("wo") and e["type"] == 2 and e["corp_name"] for e in ext)
    assert len(meta["robots"]) == 2 and all(r["robot_id"].startswith("wb") for r in meta["robots"])
    groups = meta["groups"]
    assert all(g["roomid"].startswith("wr") for g in groups)
    assert {g["kind"] for g in groups} == {"internal", "customer"}
    assert any(g["name"] == "客户群🎉💼" for g in groups)
    projects = [g for g in groups if g["name"] == "项目组"]
    assert len(projects) == 2 and projects[0]["roomid"] != projects[1]["roomid"]
    assert projects[0]["members"] != projects[1]["members"]
    present = {p.get("msgtype", "switch") for p in plaintexts}
    assert meta["msgtypes"] == sorted(present)


def test_keys_and_secret_files(tenant, private_keys):
    keys = tenant / "keys"
    assert (keys / "private_v1.pem").read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert (keys / "private_v2.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    for v in (1, 2):
        public = serialization.load_pem_public_key((keys / f"public_v{v}.pem").read_bytes())
        assert public.public_numbers() == private_keys[v].public_key().public_numbers()
        assert private_keys[v].key_size == 2048
    assert private_keys[1].public_key().public_numbers() != private_keys[2].public_key().public_numbers()
    assert stat.S_IMODE((tenant / "secret").stat().st_mode) == 0o600
    assert len((tenant / "secret").read_text().strip()) >= 32


def test_chatdata_records_match_the_answer_key_line_by_line(chatdata, answer):
    assert len(chatdata) == len(answer) == N
    for rec, a in zip(chatdata, answer):
        assert list(rec) == ["seq", "msgid", "publickey_ver", "encrypt_random_key", "encrypt_chat_msg"]
        assert (rec["seq"], rec["msgid"], rec["publickey_ver"]) == (a["seq"], a["msgid"], a["publickey_ver"])
        assert a["expected"] in ("archived", "quarantined")
        if a["expected"] == "archived":
            assert a["plaintext"]["msgid"] == a["msgid"] and a["reason"] is None
            assert MessageKind(a["kind"])
        else:
            assert a["reason"] and a["kind"] is None and a["plaintext"] is None


# --------------------------------------------------------------------------- decryption round trip


def test_every_archived_record_decrypts_with_the_official_sdk(tenant, chatdata, answer, private_keys, official):
    raw_lines = (tenant / "answer" / "messages.jsonl").read_bytes().splitlines()
    checked = 0
    for rec, a in zip(chatdata, answer):
        if a["expected"] != "archived":
            continue
        rk = private_keys[rec["publickey_ver"]].decrypt(
            base64.b64decode(rec["encrypt_random_key"]), asympadding.PKCS1v15()
        )
        rc, out = official(rk, rec["encrypt_chat_msg"])
        assert rc == 0, a["msgid"]
        assert json.loads(out) == a["plaintext"]
        assert decrypt_data(rk, rec["encrypt_chat_msg"]) == out  # the local model agrees
        checked += 1
    assert checked == N - 4
    assert any(b"\\ud83d" in line for line in raw_lines)


def test_quarantine_cases_fail_for_the_stated_reason(chatdata, answer, private_keys, official):
    bad = {a["msgid"]: (rec, a) for rec, a in zip(chatdata, answer) if a["expected"] == "quarantined"}
    assert len(bad) == 4
    reasons = Counter()
    for rec, a in bad.values():
        ver, msg = rec["publickey_ver"], rec["encrypt_chat_msg"]
        if ver not in private_keys:
            assert ver == 3 and "3" in a["reason"] and "key" in a["reason"].lower()
            reasons["missing_key"] += 1
            continue
        if len(msg) < 13:
            assert "short" in a["reason"]
            reasons["short"] += 1
            continue
        rk = private_keys[ver].decrypt(base64.b64decode(rec["encrypt_random_key"]), asympadding.PKCS1v15())
        rc, out = official(rk, msg)
        if rc != 0:
            assert rc == 10006 and "DecryptData" in a["reason"]
            with pytest.raises(DecryptDataError):
                decrypt_data(rk, msg)
            reasons["corrupt"] += 1
        else:
            with pytest.raises(ValueError):
                json.loads(out)
            assert "JSON" in a["reason"]
            reasons["not_json"] += 1
    assert reasons == Counter(missing_key=1, short=1, corrupt=1, not_json=1)


def test_key_rotation_mid_stream_with_late_version_one(tenant, answer):
    rotation = json.loads((tenant / "tenant.json").read_text())["rotation_seq"]
    seqs = [a["seq"] for a in answer]
    assert seqs[0] < rotation < seqs[-1]
    ok = [a for a in answer if a["publickey_ver"] in (1, 2)]
    assert all(a["publickey_ver"] == 1 for a in ok if a["seq"] < rotation)
    after = [a["publickey_ver"] for a in ok if a["seq"] >= rotation]
    assert after.count(2) > 0.8 * len(after)
    assert any(a["publickey_ver"] == 1 and a["seq"] > rotation and a["expected"] == "archived" for a in answer)
    assert [a["publickey_ver"] for a in answer].count(3) == 1


# --------------------------------------------------------------------------- message content


def test_every_msgtype_of_the_mapping_is_present(plaintexts, answer):
    present = Counter(p.get("msgtype", "switch") for p in plaintexts)
    expected = set(KIND_BY_MSGTYPE) | set(UNKNOWN_MSGTYPES) | {"switch"}
    assert expected <= set(present), expected - set(present)
    kinds = {a["kind"] for a in answer if a["kind"]}
    assert kinds == {k.value for k in MessageKind}
    by_type = {a["plaintext"].get("msgtype", "switch"): a["kind"] for a in answer if a["plaintext"]}
    assert by_type["markdown"] == "text" and by_type["news"] == "link" and by_type["docmsg"] == "document"
    assert by_type["collect"] == by_type["solitaire"] == "form" and by_type["external_redpacket"] == "red_packet"
    assert by_type["hologram"] == by_type["smart_sheet"] == "other" and by_type["switch"] == "system"
    assert by_type["meeting_voice_call"] == by_type["voiptext"] == "call"


def test_large_tenant_is_mostly_text(tmp_path):
    generate_tenant(tmp_path / "t", messages=3000, seed=SEED)
    kinds = Counter(a["kind"] for a in _lines(tmp_path / "t" / "answer" / "messages.jsonl"))
    assert 0.6 < kinds["text"] / 3000 < 0.8


def test_irregular_shapes_of_the_fact_sheet(plaintexts):
    by_type: dict[str, list[dict[str, Any]]] = {}
    for p in plaintexts:
        by_type.setdefault(p.get("msgtype", "switch"), []).append(p)
    for key, types in {
        "info": ("markdown", "news", "voiptext", "qydiskfile", "meeting_notification", "solitaire", "note"),
        "doc": ("docmsg",),
        "redpacket": ("external_redpacket",),
    }.items():
        for t in types:
            assert all(key in p and t not in p for p in by_type[t]), t
    call = by_type["meeting_voice_call"][0]
    assert "roomid" not in call and call["voiceid"] and call["meeting_voice_call"]["sdkfileid"]
    share = by_type["voip_doc_share"][0]
    assert "roomid" not in share and share["voipid"] and share["voip_doc_share"]["filename"]
    switch = by_type["switch"][0]
    assert set(switch) == {"msgid", "action", "time", "user"} and switch["action"] == "switch"
    for c in by_type["collect"]:
        assert time.strptime(c["collect"]["create_time"], "%Y-%m-%d %H:%M:%S")
    for r in by_type["revoke"]:
        assert r["action"] == "recall" and r["revoke"]["pre_msgid"]
    assert all(p["agree"]["userid"] == p["from"] and p["from"].startswith(("wm", "wo")) for p in by_type["agree"])


def test_nested_chat_record_and_mixed_items(plaintexts):
    records = [p for p in plaintexts if p.get("msgtype") == "chatrecord"]
    full = [
        r
        for r in records
        if [i["type"] for i in r["chatrecord"]["item"]][:3] == ["ChatRecordText", "ChatRecordImage", "ChatRecordFile"]
    ]
    assert full
    for item in full[0]["chatrecord"]["item"]:
        assert isinstance(item["content"], str) and item["msgtime"] < 10**10  # seconds, not ms
        content = json.loads(item["content"])
        if item["type"] in ("ChatRecordImage", "ChatRecordFile"):
            assert content["sdkfileid"] and content["md5sum"]
    files = [json.loads(i["content"]) for i in full[0]["chatrecord"]["item"] if i["type"] == "ChatRecordFile"]
    assert files[0]["filename"]
    mixed = [p for p in plaintexts if p.get("msgtype") == "mixed"]
    assert any(
        i["type"] == "image" and "sdkfileid" in json.loads(i["content"]) for m in mixed for i in m["mixed"]["item"]
    )


def test_special_texts(plaintexts):
    texts = [p["text"]["content"] for p in plaintexts if p.get("msgtype") == "text"]
    assert any(len(t) == 60_000 for t in texts)
    assert any(any("\u0600" <= ch <= "\u06ff" for ch in t) and "报价" in t and "quote" in t for t in texts)
    assert any("\ud83d" in t for t in texts)
    assert any("👩‍👩‍👧" in t for t in texts)
    assert any(len(t) == 1 for t in texts) and any(len(t) == 2 for t in texts)
    quotes = [t for t in texts if t.startswith("这是一条引用/回复消息：")]
    assert quotes and all("------" in q for q in quotes)
    assert any(t.startswith("=") for t in texts) and any("<img" in t for t in texts)
    assert any(p["link"]["link_url"].startswith("javascript:") for p in plaintexts if p.get("msgtype") == "link")


def test_ids_times_and_sequence(answer, plaintexts):
    msgids = [a["msgid"] for a in answer]
    assert len(set(msgids)) == len(msgids)
    assert any(m.endswith("_external") for m in msgids)
    assert sum(m.endswith("_updown_stream") for m in msgids) >= 2
    assert sum(m.startswith("CAQQ") and m.endswith("=") for m in msgids) >= 2
    assert any(m.isdigit() for m in msgids)  # switch records
    seqs = [a["seq"] for a in answer]
    assert all(a < b for a, b in zip(seqs, seqs[1:]))
    assert any(b - a > 1 for a, b in zip(seqs, seqs[1:]))  # K5 gaps
    times = [p.get("msgtime", p.get("time")) for p in plaintexts]
    assert all(1_709_251_200_000 <= t < 1_711_929_600_000 for t in times)  # March 2024, ms
    assert sum(a == b for a, b in zip(times, times[1:])) >= 1
    assert sum(a > b for a, b in zip(times, times[1:])) <= 3  # mostly increasing
    assert DST_INSTANT_MS in times and DST_INSTANT_MS - 60_000 in times
    for p in plaintexts:
        if "_" in p["msgid"] and not p["msgid"].startswith("CAQQ"):
            assert p["msgid"].endswith("_external") == (p["msgid"].count("_") == 2 and "_external" in p["msgid"])


def test_recalls_before_and_after_their_originals(answer):
    seq_of = {a["msgid"]: a["seq"] for a in answer}
    recalls = [a for a in answer if a["kind"] == "recall"]
    later = [r for r in recalls if seq_of.get(r["plaintext"]["revoke"]["pre_msgid"], 0) > r["seq"]]
    earlier = [r for r in recalls if 0 < seq_of.get(r["plaintext"]["revoke"]["pre_msgid"], 0) < r["seq"]]
    assert later and earlier
    for r in recalls:
        original = next(a for a in answer if a["msgid"] == r["plaintext"]["revoke"]["pre_msgid"])
        assert original["plaintext"]["from"] == r["plaintext"]["from"]


def test_named_conversations_and_files(plaintexts, tenant):
    groups = {g["name"]: g for g in json.loads((tenant / "tenant.json").read_text())["groups"]}
    rooms = {p.get("roomid") for p in plaintexts}
    assert groups["客户群🎉💼"]["roomid"] in rooms
    assert all(
        g["roomid"] in rooms
        for g in json.loads((tenant / "tenant.json").read_text())["groups"]
        if g["name"] == "项目组"
    )
    contracts: dict[Any, list[str]] = {}
    for p in plaintexts:
        if p.get("msgtype") == "file" and p["file"]["filename"] == "合同.pdf":
            where = p["roomid"] or frozenset([p["from"], *p["tolist"]])
            contracts.setdefault(where, []).append(p["file"]["md5sum"])
    assert any(len(set(md5s)) >= 2 for md5s in contracts.values())  # A1: same name, other bytes, one chat
    assert any(p["file"]["filename"] == "报价单✅.xlsx" for p in plaintexts if p.get("msgtype") == "file")


# --------------------------------------------------------------------------- media


def _sdkfileids(plaintext: dict[str, Any]) -> dict[str, str]:
    """path → sdkfileid for a message (top level and nested items)."""
    out: dict[str, str] = {}
    for key in ("image", "voice", "video", "file", "emotion", "meeting_voice_call", "voip_doc_share"):
        if key in plaintext and plaintext.get("msgtype") == key:
            out[""] = plaintext[key]["sdkfileid"]
    for key in ("chatrecord", "mixed"):
        if plaintext.get("msgtype") == key:
            for n, item in enumerate(plaintext[key]["item"]):
                content = json.loads(item["content"])
                if "sdkfileid" in content:
                    out[f"item.{n}"] = content["sdkfileid"]
    return out


def _decrypt_media(cipher: bytes, aeskey_hex: str) -> bytes:
    dec = Cipher(algorithms.AES(bytes.fromhex(aeskey_hex)), modes.ECB()).decryptor()
    padded = dec.update(cipher) + dec.finalize()
    unpadder = sympadding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


MAGIC = {
    "image": (b"\xff\xd8\xff",),
    "voice": (b"#!AMR\n",),
    "call_audio": (b"#!AMR\n",),
    "emotion": (b"GIF89a", b"\x89PNG\r\n\x1a\n"),
}
FILE_MAGIC = {"pdf": b"%PDF-", "docx": b"PK\x03\x04", "xlsx": b"PK\x03\x04"}


def _check_magic(kind: str, name: str | None, data: bytes) -> None:
    if kind == "video":
        assert data[4:8] == b"ftyp" and b"mdat" in data[:4096]
    elif kind in MAGIC:
        assert data.startswith(MAGIC[kind]), kind
    else:
        ext = (name or "").rsplit(".", 1)[-1]
        if ext in FILE_MAGIC:
            assert data.startswith(FILE_MAGIC[ext]), name
        if ext in ("docx", "xlsx"):
            assert "[Content_Types].xml" in zipfile.ZipFile(io.BytesIO(data)).namelist()
        if ext == "pdf":
            assert data.rstrip().endswith(b"%%EOF") and b"startxref" in data
        if ext == "txt":
            data.decode("utf-8")


def test_media_round_trip_sizes_checksums_and_magic(tenant, plaintexts):
    index = {row["fileid"]: row for row in _lines(tenant / "media" / "index.jsonl")}
    media_answer = _lines(tenant / "answer" / "media.jsonl")
    by_msgid = {p["msgid"]: p for p in plaintexts}
    assert len(index) == len(media_answer) > 0
    sizes, nul = [], 0
    for m in media_answer:
        sdkfileid = _sdkfileids(by_msgid[m["msgid"]])[m["path"]]
        fileid, authkey, aeskey = parse_sdkfileid(sdkfileid)
        row = index.pop(fileid)
        assert row["authkey"] == authkey and base64.b64decode(authkey).startswith(b"47_")
        assert row["path"] == f"media/{fileid}.enc" and row["expired"] == (m["state"] == "expired")
        cipher = (tenant / row["path"]).read_bytes()
        assert len(cipher) == row["cipher_size"] == (m["size"] // 16 + 1) * 16
        data = _decrypt_media(cipher, aeskey)
        assert len(data) == m["size"] == row["plain_size"]
        assert hashlib.md5(data).hexdigest() == m["md5"]
        assert hashlib.sha256(data).hexdigest() == m["sha256"]
        _check_magic(m["kind"], m["file_name"], data)
        sizes.append(len(data))
        nul += b"\0" in data
    assert index == {}
    assert {0, 16, 524_288, 524_289} <= set(sizes) and max(sizes) > 1 << 20
    assert nul > 0.8 * len(sizes)
    assert [m["state"] for m in media_answer].count("expired") == 2


def test_media_answer_matches_declarations(plaintexts, tenant):
    by_msgid = {p["msgid"]: p for p in plaintexts}
    kinds = Counter()
    for m in _lines(tenant / "answer" / "media.jsonl"):
        p = by_msgid[m["msgid"]]
        kinds[m["kind"]] += 1
        if m["path"] == "":
            body = p[p["msgtype"]]
            if "md5sum" in body:
                assert body["md5sum"] == m["md5"]
            if p["msgtype"] in ("file", "voip_doc_share"):
                assert body["filename"] == m["file_name"]
            else:
                assert m["file_name"] is None
        else:
            assert p["msgtype"] in ("chatrecord", "mixed") and m["path"].startswith("item.")
    assert {"image", "voice", "video", "file", "emotion", "call_audio"} <= set(kinds)


# --------------------------------------------------------------------------- performance


@pytest.mark.stress
def test_twenty_thousand_messages_under_thirty_seconds(tmp_path):
    started = time.perf_counter()
    summary = generate_tenant(tmp_path / "t", messages=20_000, seed=7)
    assert time.perf_counter() - started < 30
    assert 30e6 < summary.media_bytes < 70e6
