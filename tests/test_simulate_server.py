"""The wire-level WeCom simulator, driven by the REAL official SDK (in a worker process).

Every SDK-facing assertion here goes through ``libWeWorkFinanceSdk_C_x86.so`` and its
``proxy`` argument, so the simulator is checked against the actual client rather than
against our reading of the protocol. A few checks use a raw TLS client to pin down wire
details (header spelling, certificate name) the SDK only reveals indirectly.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st
from sdkhelper import SdkWorker

from wxarchive.simulate import crypto
from wxarchive.simulate.server import (
    EndpointFaults,
    FaultPlan,
    FaultSpecError,
    encrypt_sign,
    parse_fault_spec,
    serve,
    serve_forever,
)

CORP = "wwsim0123456789ab"
SECRET = "Zm9vYmFy-secret_value-0123456789abcdefghijk"
MEDIA_SIZES = [0, 5, 16, 524_287, 524_288, 524_289, 1_048_576, 1_300_000]
# record seqs with gaps: a gap is not loss (K5)
SEQS = list(range(1, 21)) + [25, 26, 40, 41, 42, 100]

# SDK return codes (fact sheet §1.2)
NETWORK_ERROR = 10001
ILLEGAL_IP = 10009
EXPIRED = 10010


# --------------------------------------------------------------------------- fixtures


def _media_bytes(size: int) -> bytes:
    """Binary content full of NULs, so any C-string handling would truncate it."""
    rng = random.Random(size)
    return bytes(rng.choice((0, 0, 0, rng.randrange(256))) for _ in range(size))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def tenant(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small tenant per docs/simulator.md, built with simulate/crypto.py."""
    root = tmp_path_factory.mktemp("tenant")
    (root / "media").mkdir()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (root / "tenant.json").write_text(json.dumps({"corp_id": CORP, "key_versions": [1]}))
    (root / "secret").write_text(SECRET + "\n")
    rng = random.Random(7)
    records, plains = [], {}
    for seq in SEQS:
        plain = {"msgid": f"msg{seq}", "action": "send", "msgtype": "text", "text": {"content": f"你好 {seq} 🎉"}}
        k, m = crypto.encrypt_message(json.dumps(plain, ensure_ascii=False).encode(), key.public_key(), rng)
        records.append({"seq": seq, "msgid": f"msg{seq}", "publickey_ver": 1, "encrypt_random_key": k, "encrypt_chat_msg": m})
        plains[seq] = plain
    _write_jsonl(root / "chatdata.jsonl", records)
    media: dict[str, dict[str, Any]] = {}
    index = []
    for size in MEDIA_SIZES + ["gone"]:
        fileid = f"file{size}"
        authkey = base64.b64encode(f"47_{size}_1710054000".encode()).decode()
        aeskey = rng.randbytes(16).hex()
        plain = _media_bytes(size if isinstance(size, int) else 100)
        cipher = crypto.encrypt_media(plain, aeskey)
        (root / "media" / f"{fileid}.enc").write_bytes(cipher)
        index.append(
            {"fileid": fileid, "authkey": authkey, "path": f"media/{fileid}.enc", "cipher_size": len(cipher),
             "plain_size": len(plain), "expired": size == "gone"}
        )
        media[str(size)] = {"fileid": fileid, "sdkfileid": crypto.make_sdkfileid(fileid, authkey, aeskey), "plain": plain}
    _write_jsonl(root / "media" / "index.jsonl", index)
    return {"dir": root, "records": records, "plains": plains, "media": media, "key": key}


@pytest.fixture(scope="module")
def sdk() -> Iterator[SdkWorker]:
    with SdkWorker() as worker:
        yield worker


def _records(body: str) -> list[dict[str, Any]]:
    obj = json.loads(body)
    assert obj["errcode"] == 0, obj
    return obj["chatdata"]


# --------------------------------------------------------------------------- getchatdata


def test_chat_returns_records_after_seq_verbatim(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    with serve(tenant["dir"]) as sim:
        h = sdk.new(CORP, SECRET)
        rc, body = sdk.chat(h, 0, 1000, sim.proxy_url)
        assert rc == 0
        assert _records(body) == tenant["records"]
        for after in (0, 5, 20, 21, 25, 41, 99):
            rc, body = sdk.chat(h, after, 1000, sim.proxy_url)
            assert rc == 0
            assert [r["seq"] for r in _records(body)] == [s for s in SEQS if s > after]
        rc, body = sdk.chat(h, 100, 1000, sim.proxy_url)
        assert (rc, _records(body)) == (0, [])
        sdk.destroy(h)
        stats = sim.stats
        assert stats.tokens_issued == 1  # the handle caches its token
        assert stats.calls["chat"] == 9
        assert stats.max_seq_served == 100
        assert stats.rejected == {}  # in particular: our encrypt_sign matches the SDK's


def test_chat_respects_limit_and_pages_without_skipping(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    with serve(tenant["dir"]) as sim:
        h = sdk.new(CORP, SECRET)
        seen, cursor = [], 0
        while True:
            rc, body = sdk.chat(h, cursor, 7, sim.proxy_url)
            batch = _records(body)
            assert rc == 0 and len(batch) <= 7
            if not batch:
                break
            seen += [r["seq"] for r in batch]
            cursor = batch[-1]["seq"]
        assert seen == SEQS
        rc, body = sdk.chat(h, 0, 1, sim.proxy_url)
        assert [r["seq"] for r in _records(body)] == [1]
        sdk.destroy(h)


def test_served_records_decrypt_with_the_official_sdk(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    with serve(tenant["dir"]) as sim:
        h = sdk.new(CORP, SECRET)
        rc, body = sdk.chat(h, 10, 3, sim.proxy_url)
        sdk.destroy(h)
    for rec in _records(body):
        random_key = tenant["key"].decrypt(base64.b64decode(rec["encrypt_random_key"]), padding.PKCS1v15())
        rc, plain = sdk.decrypt(random_key, rec["encrypt_chat_msg"])
        assert rc == 0
        assert json.loads(plain) == tenant["plains"][rec["seq"]]


def test_wrong_secret_or_corp_is_network_error(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    with serve(tenant["dir"]) as sim:
        for corp, secret in ((CORP, SECRET + "x"), ("wwother", SECRET), (CORP, "")):
            h = sdk.new(corp, secret)
            rc, _ = sdk.chat(h, 0, 10, sim.proxy_url)
            assert rc == NETWORK_ERROR
            sdk.destroy(h)
        assert sim.stats.tokens_issued == 0
        # Init(corp, "") fails with 10000 and leaves the handle blank: it asks with corpid=""
        assert sim.stats.rejected == {"secret": 1, "corpid": 2}
    assert SECRET not in sdk.stderr_text()  # the SDK printf()s the error body


# --------------------------------------------------------------------------- media


@pytest.mark.parametrize("size", MEDIA_SIZES)
def test_media_byte_exact_through_chunk_loop(tenant: dict[str, Any], sdk: SdkWorker, size: int) -> None:
    item = tenant["media"][str(size)]
    with serve(tenant["dir"]) as sim:
        h = sdk.new(CORP, SECRET)
        rc, data, chunks = sdk.media(h, item["sdkfileid"], sim.proxy_url)
        sdk.destroy(h)
    assert rc == 0
    assert hashlib.md5(data).hexdigest() == hashlib.md5(item["plain"]).hexdigest()
    assert data == item["plain"]
    cipher_size = size + 16 - size % 16
    assert len(chunks) == max(1, -(-cipher_size // 524_288))
    if size and size % 524_288 == 0:
        assert chunks[-1] == 0  # the SDK's final empty chunk (A3)


def test_media_expired_is_10010(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    present = tenant["media"]["16"]
    plan = FaultPlan(media_expired=frozenset({present["fileid"]}))
    with serve(tenant["dir"], faults=plan) as sim:
        h = sdk.new(CORP, SECRET)
        assert sdk.media(h, tenant["media"]["gone"]["sdkfileid"], sim.proxy_url)[0] == EXPIRED
        assert sdk.media(h, present["sdkfileid"], sim.proxy_url)[0] == EXPIRED
        rc, data, _ = sdk.media(h, tenant["media"]["5"]["sdkfileid"], sim.proxy_url)
        assert (rc, data) == (0, tenant["media"]["5"]["plain"])
        sdk.destroy(h)


def test_media_unknown_fileid_is_a_parse_error(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    bogus = crypto.make_sdkfileid("nosuchfile", "ak", "00" * 16)
    with serve(tenant["dir"]) as sim:
        h = sdk.new(CORP, SECRET)
        assert sdk.media(h, bogus, sim.proxy_url)[0] == 10002
        sdk.destroy(h)
        assert sim.stats.rejected == {"media": 1}


# --------------------------------------------------------------------------- faults


def test_chat_http500_and_drop_are_10001_then_recover(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    plan = parse_fault_spec("chat500=2,3;chatdrop=5")
    with serve(tenant["dir"], faults=plan) as sim:
        h = sdk.new(CORP, SECRET)
        rcs = [sdk.chat(h, 0, 5, sim.proxy_url)[0] for _ in range(6)]
        assert rcs == [0, NETWORK_ERROR, NETWORK_ERROR, 0, NETWORK_ERROR, 0]
        sdk.destroy(h)
        assert sim.stats.faults == {"chat500": 2, "chatdrop": 1}
        assert sim.stats.tokens_issued == 1


def test_chat_slow_times_out_or_succeeds(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    plan = parse_fault_spec("chatslow=1:2.5,2:0.3")
    with serve(tenant["dir"], faults=plan) as sim:
        h = sdk.new(CORP, SECRET)
        started = time.monotonic()
        assert sdk.chat(h, 0, 5, sim.proxy_url, timeout=1)[0] == NETWORK_ERROR
        assert time.monotonic() - started < 2.4
        rc, body = sdk.chat(h, 0, 5, sim.proxy_url, timeout=10)
        assert rc == 0 and len(_records(body)) == 5
        sdk.destroy(h)


def test_chat_errcode_301042_comes_back_with_rc_0(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    with serve(tenant["dir"], faults=parse_fault_spec("chaterr=1:301042")) as sim:
        h = sdk.new(CORP, SECRET)
        rc, body = sdk.chat(h, 0, 5, sim.proxy_url)
        assert rc == 0  # K2: never "no new messages"
        obj = json.loads(body)
        assert obj["errcode"] == 301042 and "whiteip not match" in obj["errmsg"]
        assert "chatdata" not in obj
        assert len(_records(sdk.chat(h, 0, 5, sim.proxy_url)[1])) == 5
        sdk.destroy(h)


def test_tokenexpire_persists_on_handle_until_recreated(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    with serve(tenant["dir"], faults=parse_fault_spec("tokenexpire=2")) as sim:
        h = sdk.new(CORP, SECRET)
        assert sdk.chat(h, 0, 5, sim.proxy_url)[0] == 0
        for _ in range(3):  # P16 / K3: the SDK keeps its stale token
            rc, body = sdk.chat(h, 0, 5, sim.proxy_url)
            assert rc == 0 and json.loads(body)["errcode"] == 42001
        sdk.destroy(h)
        h = sdk.new(CORP, SECRET)
        rc, body = sdk.chat(h, 0, 5, sim.proxy_url)
        assert rc == 0 and len(_records(body)) == 5
        sdk.destroy(h)
        assert sim.stats.tokens_issued == 2


def test_token_endpoint_faults_are_10001(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    with serve(tenant["dir"], faults=parse_fault_spec("token500=1;tokendrop=2;tokenerr=3:40001")) as sim:
        h = sdk.new(CORP, SECRET)
        assert [sdk.chat(h, 0, 5, sim.proxy_url)[0] for _ in range(4)] == [NETWORK_ERROR] * 3 + [0]
        sdk.destroy(h)
        assert sim.stats.calls["token"] == 4 and sim.stats.calls["chat"] == 1


def test_media_faults_map_to_sdk_codes(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    item = tenant["media"]["524289"]
    with serve(tenant["dir"], faults=parse_fault_spec("media500=1;mediaerr=2:301042;mediadrop=3")) as sim:
        h = sdk.new(CORP, SECRET)
        assert sdk.media(h, item["sdkfileid"], sim.proxy_url)[0] == NETWORK_ERROR
        assert sdk.media(h, item["sdkfileid"], sim.proxy_url)[0] == ILLEGAL_IP
        assert sdk.media(h, item["sdkfileid"], sim.proxy_url)[0] == NETWORK_ERROR
        rc, data, _ = sdk.media(h, item["sdkfileid"], sim.proxy_url)
        assert (rc, data) == (0, item["plain"])
        sdk.destroy(h)


@pytest.mark.parametrize("target", ["first", "byid"])
def test_media_corrupt_chunk_differs_the_first_time_only(tenant: dict[str, Any], sdk: SdkWorker, target: str) -> None:
    item = tenant["media"]["1300000"]
    spec = "mediacorrupt=first" if target == "first" else f"mediacorrupt={item['fileid']}"
    with serve(tenant["dir"], faults=parse_fault_spec(spec)) as sim:
        h = sdk.new(CORP, SECRET)
        rc, first, _ = sdk.media(h, item["sdkfileid"], sim.proxy_url)
        assert rc == 0  # P10: the SDK cannot tell; only the md5 check can
        assert len(first) == len(item["plain"]) and first != item["plain"]
        assert hashlib.md5(first).digest() != hashlib.md5(item["plain"]).digest()
        for _ in range(2):
            rc, again, _ = sdk.media(h, item["sdkfileid"], sim.proxy_url)
            assert (rc, again) == (0, item["plain"])
        other = tenant["media"]["16"]
        assert sdk.media(h, other["sdkfileid"], sim.proxy_url)[1] == other["plain"]
        sdk.destroy(h)
        assert sim.stats.faults == {"mediacorrupt": 1}


# --------------------------------------------------------------------------- proxy


def test_proxy_auth(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    with serve(tenant["dir"], proxy_auth="archiver:pa55:word") as sim:
        h = sdk.new(CORP, SECRET)
        assert sdk.chat(h, 0, 5, sim.proxy_url, passwd="archiver:pa55:word")[0] == 0
        assert sdk.chat(h, 0, 5, sim.proxy_url, passwd="archiver:wrong")[0] == NETWORK_ERROR
        assert sdk.chat(h, 0, 5, sim.proxy_url)[0] == NETWORK_ERROR
        sdk.destroy(h)
        assert sim.stats.proxy_auth_failures == 2


def test_concurrent_clients(tenant: dict[str, Any]) -> None:
    item = tenant["media"]["1300000"]
    errors: list[str] = []

    def client(sim_url: str) -> None:
        with SdkWorker() as w:
            h = w.new(CORP, SECRET)
            for after in range(0, 20):
                rc, body = w.chat(h, after, 3, sim_url)
                if rc != 0 or [r["seq"] for r in _records(body)] != [s for s in SEQS if s > after][:3]:
                    errors.append(f"chat after {after}: rc {rc}")
            rc, data, _ = w.media(h, item["sdkfileid"], sim_url)
            if (rc, data) != (0, item["plain"]):
                errors.append(f"media rc {rc}")
            w.destroy(h)

    with serve(tenant["dir"]) as sim:
        threads = [threading.Thread(target=client, args=(sim.proxy_url,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        assert sim.stats.calls["chat"] == 80 and sim.stats.tokens_issued == 4


def test_many_sequential_connections_leak_nothing(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    with serve(tenant["dir"]) as sim:
        h = sdk.new(CORP, SECRET)
        assert sdk.chat(h, 0, 1, sim.proxy_url)[0] == 0
        fds_before = len(os.listdir("/proc/self/fd"))
        threads_before = threading.active_count()
        for i in range(300):
            assert sdk.chat(h, i % 20, 1, sim.proxy_url)[0] == 0
        time.sleep(0.2)
        assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
        assert threading.active_count() <= threads_before + 2
        assert sim.open_tunnels == 0
        assert sim.stats.tunnels == 302
        sdk.destroy(h)


def _tls_client(sim_url: str, cert_pem: bytes, auth: str | None = None) -> ssl.SSLSocket:
    """CONNECT through the proxy and verify the certificate like a strict client would."""
    host, port = sim_url.removeprefix("http://").split(":")
    raw = socket.create_connection((host, int(port)), timeout=10)
    headers = "CONNECT qyapi.weixin.qq.com:443 HTTP/1.1\r\nHost: qyapi.weixin.qq.com:443\r\n"
    if auth:
        headers += f"Proxy-Authorization: Basic {base64.b64encode(auth.encode()).decode()}\r\n"
    raw.sendall((headers + "\r\n").encode())
    reply = b""
    while not reply.endswith(b"\r\n\r\n"):
        reply += raw.recv(1)
    assert reply.startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cadata=cert_pem.decode())
    return ctx.wrap_socket(raw, server_hostname="qyapi.weixin.qq.com")


def _raw_request(tls: ssl.SSLSocket, method: str, target: str, body: bytes = b"", extra: str = "") -> tuple[bytes, bytes]:
    """Send one HTTP/1.1 request on a kept-alive tunnel; return (raw header block, body)."""
    tls.sendall(
        f"{method} {target} HTTP/1.1\r\nHost: qyapi.weixin.qq.com\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += tls.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = int(next(l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")).split(b":")[1])
    while len(rest) < length:
        rest += tls.recv(65536)
    return head, rest


def test_wire_details_with_a_strict_tls_client(tenant: dict[str, Any]) -> None:
    """Certificate name, keep-alive, encrypt_sign check and the CONTENT-RANGE spelling."""
    item = tenant["media"]["524289"]
    with serve(tenant["dir"]) as sim:
        tls = _tls_client(sim.proxy_url, sim.cert_pem)
        _, body = _raw_request(tls, "GET", f"/cgi-bin/gettoken?corpid={CORP}&corpsecret={SECRET}")
        token = json.loads(body)["access_token"]
        assert json.loads(body)["expires_in"] == 7200
        chat = f"/cgi-bin/message/getchatdata?access_token={token}"
        payload = {"seq": 0, "limit": 2, "version": 3, "encrypt_sign": encrypt_sign(token)}
        _, body = _raw_request(tls, "POST", chat, json.dumps(payload).encode())
        assert [r["seq"] for r in json.loads(body)["chatdata"]] == [1, 2]
        _, body = _raw_request(tls, "POST", chat, json.dumps({**payload, "encrypt_sign": "1"}).encode())
        assert json.loads(body)["errcode"] == 40001
        media = f"/cgi-bin/message/getchatmediadata?access_token={token}"
        ask = json.dumps({"fileid": item["fileid"], "authkey": _authkey(tenant, item["fileid"]), "version": 3}).encode()
        head, body = _raw_request(tls, "POST", media, ask, "Range: bytes=524288-1048575\r\n")
        assert b"\r\nCONTENT-RANGE: BYTES 524288-524303/524304" in head
        assert len(base64.b64decode(json.loads(body)["content"])) == 16
        _, body = _raw_request(tls, "POST", "/cgi-bin/message/getchatdata?access_token=nope", json.dumps(payload).encode())
        assert json.loads(body)["errcode"] == 42001
        tls.close()
        assert sim.stats.tunnels == 1  # everything above went over one kept-alive tunnel


def _authkey(tenant: dict[str, Any], fileid: str) -> str:
    rows = (json.loads(l) for l in (tenant["dir"] / "media" / "index.jsonl").read_text().splitlines())
    return next(r["authkey"] for r in rows if r["fileid"] == fileid)


def test_proxy_refuses_other_hosts_and_plain_requests(tenant: dict[str, Any]) -> None:
    with serve(tenant["dir"]) as sim:
        host, port = sim.address
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("CONNECT", "example.com:443")
        assert conn.getresponse().status == 403
        conn.close()
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "http://qyapi.weixin.qq.com/cgi-bin/gettoken")
        assert conn.getresponse().status == 501
        conn.close()


def test_listens_on_loopback_only(tenant: dict[str, Any]) -> None:
    for host in ("0.0.0.0", "192.0.2.1", "localhost", "::1"):
        with pytest.raises(ValueError):
            serve(tenant["dir"], host=host)


def test_serve_forever_announces_url_without_secrets(tenant: dict[str, Any], sdk: SdkWorker) -> None:
    lines: list[str] = []
    stop = threading.Event()
    runner = threading.Thread(target=serve_forever, args=(tenant["dir"],), kwargs={"stop": stop, "announce": lines.append})
    runner.start()
    try:
        for _ in range(100):
            if lines:
                break
            time.sleep(0.05)
        assert len(lines) == 1 and "http://127.0.0.1:" in lines[0] and SECRET not in lines[0]
        url = lines[0].split("proxy ")[1].split()[0]
        h = sdk.new(CORP, SECRET)
        assert sdk.chat(h, 0, 5, url)[0] == 0
        sdk.destroy(h)
    finally:
        stop.set()
        runner.join(timeout=10)
    assert not runner.is_alive()


# --------------------------------------------------------------------------- throughput


def test_100k_records_in_100_calls_is_fast(tmp_path: Path, sdk: SdkWorker) -> None:
    """The server must not be the bottleneck of a full pull (index once, stream the batch)."""
    (tmp_path / "tenant.json").write_text(json.dumps({"corp_id": CORP}))
    (tmp_path / "secret").write_text(SECRET)
    filler_key = "K" * 344
    with open(tmp_path / "chatdata.jsonl", "w") as f:
        for seq in range(1, 100_001):
            f.write(
                f'{{"seq":{seq},"msgid":"m{seq}","publickey_ver":1,"encrypt_random_key":"{filler_key}",'
                f'"encrypt_chat_msg":"{"M" * (300 + seq % 200)}"}}\n'
            )
    started = time.monotonic()
    with serve(tmp_path) as sim:
        index_s = time.monotonic() - started
        h = sdk.new(CORP, SECRET)
        cursor, total = 0, 0
        pulled = time.monotonic()
        for _ in range(100):
            rc, body = sdk.chat(h, cursor, 1000, sim.proxy_url)
            batch = _records(body)
            assert rc == 0 and len(batch) == 1000 and batch[0]["seq"] == cursor + 1
            cursor, total = batch[-1]["seq"], total + len(batch)
        pull_s = time.monotonic() - pulled
        sdk.destroy(h)
    assert total == 100_000 and cursor == 100_000
    assert index_s < 5, index_s
    assert pull_s < 30, pull_s


# --------------------------------------------------------------------------- fault spec


def test_parse_fault_spec_example() -> None:
    plan = parse_fault_spec(
        "chat500=2,5; chatdrop=3;chatslow=4:2.5;chaterr=6:301042;tokenexpire=7;"
        "media500=1;mediacorrupt=abc,first;mediaexpired=f00d;chat500=9-11"
    )
    assert plan.chat == EndpointFaults(
        http500=frozenset({2, 5, 9, 10, 11}), drop=frozenset({3}), slow={4: 2.5}, errcode={6: 301042}
    )
    assert plan.media.http500 == {1} and plan.token.is_empty()
    assert plan.token_expire == {7}
    assert plan.media_corrupt == {"abc"} and plan.media_corrupt_first
    assert plan.media_expired == {"f00d"}
    assert parse_fault_spec("") == FaultPlan() and FaultPlan().is_empty()


@pytest.mark.parametrize(
    "spec",
    ["chat500", "chat404=1", "chat500=0", "chat500=x", "chat500=5-2", "chatslow=3", "chaterr=1:abc",
     "chatslow=1:-2", "mediaexpired=", "bogus=1", "mediaexpired= , "],
)
def test_parse_fault_spec_rejects(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        parse_fault_spec(spec)


_calls = st.frozensets(st.integers(1, 50), max_size=4)
_endpoint = st.builds(
    EndpointFaults,
    http500=_calls,
    drop=_calls,
    slow=st.dictionaries(st.integers(1, 50), st.floats(0, 10, allow_nan=False), max_size=3),
    errcode=st.dictionaries(st.integers(1, 50), st.sampled_from([301042, 42001, 40001, 301048]), max_size=3),
)
_names = st.frozensets(st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True).filter(lambda s: s != "first"), max_size=3)


@given(
    st.builds(
        FaultPlan,
        token=_endpoint,
        chat=_endpoint,
        media=_endpoint,
        token_expire=_calls,
        media_corrupt=_names,
        media_corrupt_first=st.booleans(),
        media_expired=_names,
    )
)
def test_fault_spec_round_trips(plan: FaultPlan) -> None:
    assert parse_fault_spec(plan.to_spec()) == plan


# --------------------------------------------------------------------------- product binding


def _product_download(worker: Any, sdkfileid: str, proxy: str) -> bytes:
    data, indexbuf = b"", ""
    while True:
        chunk = worker.get_media_chunk(indexbuf, sdkfileid, proxy=proxy)
        data += chunk.data
        if chunk.is_finish:
            return data
        indexbuf = chunk.outindexbuf


def test_product_sdk_worker_against_the_simulator(tenant: dict[str, Any]) -> None:
    """wxarchive.capture.wecom's own worker interoperates with the simulator end to end."""
    from wxarchive.capture.wecom.sdk import SdkError
    from wxarchive.capture.wecom.worker import SdkWorker as ProductSdkWorker

    with serve(tenant["dir"], faults=parse_fault_spec("chat500=2;tokenexpire=4")) as sim:
        with ProductSdkWorker(CORP, SECRET) as worker:
            assert _records(worker.get_chat_data(0, 1000, proxy=sim.proxy_url).decode()) == tenant["records"]
            with pytest.raises(SdkError) as err:
                worker.get_chat_data(0, 1000, proxy=sim.proxy_url)
            assert err.value.code == NETWORK_ERROR and err.value.retryable
            assert len(_records(worker.get_chat_data(20, 2, proxy=sim.proxy_url).decode())) == 2
            for _ in range(2):
                assert json.loads(worker.get_chat_data(0, 5, proxy=sim.proxy_url))["errcode"] == 42001
            worker.recreate()
            assert len(_records(worker.get_chat_data(0, 5, proxy=sim.proxy_url).decode())) == 5
            for size in ("0", "524288", "1300000"):
                item = tenant["media"][size]
                assert _product_download(worker, item["sdkfileid"], sim.proxy_url) == item["plain"]
            with pytest.raises(SdkError) as err:
                _product_download(worker, tenant["media"]["gone"]["sdkfileid"], sim.proxy_url)
            assert err.value.code == EXPIRED
        assert sim.stats.tokens_issued == 2


# --------------------------------------------------------------------------- generated tenant


def _sdkfileids(node: Any) -> Iterator[dict[str, Any]]:
    """Every object holding an sdkfileid, also inside JSON-string item contents (C4)."""
    if isinstance(node, dict):
        if isinstance(node.get("sdkfileid"), str):
            yield node
        for value in node.values():
            yield from _sdkfileids(value)
    elif isinstance(node, list):
        for value in node:
            yield from _sdkfileids(value)
    elif isinstance(node, str) and node.startswith("{"):
        try:
            yield from _sdkfileids(json.loads(node))
        except ValueError:
            return


def test_generated_tenant_pulls_and_downloads(tmp_path: Path, sdk: SdkWorker) -> None:
    """The contract of docs/simulator.md end to end: generator output served to the SDK."""
    tenant_mod = pytest.importorskip("wxarchive.simulate.tenant")
    root = tmp_path / "gen"
    tenant_mod.generate_tenant(root, messages=150, seed=11)
    meta = json.loads((root / "tenant.json").read_text())
    secret = (root / "secret").read_text().strip()
    expected = [json.loads(line) for line in (root / "chatdata.jsonl").read_text().splitlines()]
    index = {r["fileid"]: r for r in map(json.loads, (root / "media" / "index.jsonl").read_text().splitlines())}
    answers = [json.loads(line) for line in (root / "answer" / "messages.jsonl").read_text().splitlines()]
    answer_md5 = {r["md5"] for r in map(json.loads, (root / "answer" / "media.jsonl").read_text().splitlines())}
    with serve(root) as sim:
        h = sdk.new(meta["corp_id"], secret)
        pulled, cursor = [], 0
        while batch := _records(sdk.chat(h, cursor, 40, sim.proxy_url)[1]):
            pulled += batch
            cursor = batch[-1]["seq"]
        assert pulled == expected
        holders = [o for a in answers if a["plaintext"] for o in _sdkfileids(a["plaintext"])]
        assert holders, "the generated tenant has media"
        for holder in holders:
            fileid = crypto.parse_sdkfileid(holder["sdkfileid"])[0]
            rc, data, _ = sdk.media(h, holder["sdkfileid"], sim.proxy_url)
            if index[fileid]["expired"]:
                assert rc == EXPIRED
                continue
            assert rc == 0 and len(data) == index[fileid]["plain_size"]
            assert hashlib.md5(data).hexdigest() in answer_md5
            if holder.get("md5sum"):
                assert hashlib.md5(data).hexdigest() == holder["md5sum"]
        sdk.destroy(h)
