"""The ctypes binding, its load checks, the worker process, and the whole path against
the wire-level simulator (real SDK -> CONNECT proxy -> fake WeCom).

Anything that could crash the interpreter (double DestroySdk, unguarded DecryptData)
runs in a child: an SdkWorker or a ``python -c`` subprocess.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import json
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from wxarchive.capture.wecom import sdk as sdkmod
from wxarchive.capture.wecom.decrypt import KeyRing, RecordError, decrypt_data_py, decrypt_record
from wxarchive.capture.wecom.sdk import (
    POINTER_RETURNING,
    SIGNATURES,
    DecryptError,
    FinanceSdk,
    SdkError,
    SdkLoadError,
    load_library,
)
from wxarchive.capture.wecom.worker import SdkCrashed, SdkTimeout, SdkWorker
from wxarchive.simulate import crypto
from wxarchive.simulate.server import parse_fault_spec, serve

CORP = "wwbinding0123456789"
SECRET = "TOPSECRET-archive-secret-0123456789abcdefXYZ"
MEDIA_SIZES = [0, 16, 524_288, 524_289]


# --------------------------------------------------------------------------- signatures (P1)


def test_every_pointer_returning_function_has_a_pointer_restype() -> None:
    lib = load_library()
    assert set(SIGNATURES) >= POINTER_RETURNING
    for name, (restype, argtypes) in SIGNATURES.items():
        func = getattr(lib.cdll, name)
        assert func.restype is restype and list(func.argtypes) == argtypes, name
        assert func.restype is not ctypes.c_char_p, f"{name}: C-string reads truncate (P2)"
        for arg in func.argtypes:
            assert arg in (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_ulonglong)
    for name in POINTER_RETURNING:
        assert getattr(lib.cdll, name).restype is ctypes.c_void_p, name
    for name in ("Init", "GetChatData", "GetMediaData", "DestroySdk", "FreeSlice", "FreeMediaData"):
        assert SIGNATURES[name][1][0] is ctypes.c_void_p  # handles go in as full pointers


def test_pointers_round_trip_as_full_64_bit_values() -> None:
    lib = load_library()
    slice_ptr = lib.cdll.NewSlice()
    try:
        assert isinstance(slice_ptr, int) and slice_ptr != 0
        assert lib.cdll.GetSliceLen(slice_ptr) == 0
    finally:
        lib.cdll.FreeSlice(slice_ptr)


# --------------------------------------------------------------------------- loading


def test_bundled_library_is_pinned() -> None:
    lib = load_library()
    assert lib.pinned
    assert lib.sha256 == sdkmod.PINNED_SHA256[lib.path.name] == sdkmod.file_sha256(lib.path)
    assert load_library() is lib  # loaded once per process


@pytest.fixture
def tampered_copy(tmp_path: Path) -> Path:
    """The official library plus one trailing byte: loads fine, hash differs."""
    copy = tmp_path / "libWeWorkFinanceSdk_C_x86.so"
    shutil.copyfile(load_library().path, copy)
    with copy.open("ab") as fh:
        fh.write(b"\0")
    return copy


def test_tampered_bundled_library_is_refused(monkeypatch, tampered_copy: Path) -> None:
    monkeypatch.setattr(sdkmod, "bundled_library_path", lambda: tampered_copy)
    with pytest.raises(SdkLoadError, match="expected the pinned") as err:
        load_library()
    assert "\n" not in str(err.value)


def test_customer_library_is_loaded_and_its_hash_reported(tampered_copy: Path) -> None:
    with SdkWorker(CORP, SECRET, lib_path=tampered_copy) as worker:
        info = worker.library_info
    assert info["pinned"] is False
    assert info["sha256"] == hashlib.sha256(tampered_copy.read_bytes()).hexdigest()
    assert info["path"] == str(tampered_copy.resolve())


def test_load_errors_are_one_line(monkeypatch, tmp_path: Path) -> None:
    with pytest.raises(SdkLoadError, match="not found"):
        load_library(tmp_path / "missing.so")
    arm = tmp_path / "arm.so"
    arm.write_bytes(b"\x7fELF" + b"\0" * 14 + (0xB7).to_bytes(2, "little") + b"\0" * 40)
    with pytest.raises(SdkLoadError, match="built for aarch64"):
        load_library(arm)
    text = tmp_path / "text.so"
    text.write_text("not a library")
    with pytest.raises(SdkLoadError, match="not an ELF"):
        load_library(text)
    monkeypatch.setattr(sdkmod.platform, "machine", lambda: "riscv64")
    with pytest.raises(SdkLoadError, match="riscv64"):
        load_library()


def test_musl_is_refused_with_a_clear_message(monkeypatch) -> None:
    def no_glibc(name: str) -> str:
        raise ValueError(name)

    monkeypatch.setattr(sdkmod.os, "confstr", no_glibc)
    with pytest.raises(SdkLoadError, match="musl"):
        load_library()


def test_worker_reports_load_errors(tmp_path: Path) -> None:
    with pytest.raises(SdkLoadError, match="not found"):
        SdkWorker(CORP, SECRET, lib_path=tmp_path / "missing.so")


# --------------------------------------------------------------------------- errors


def test_sdk_error_text_retryability_and_pickling() -> None:
    err = SdkError(10001, "GetChatData")
    assert err.retryable and "network error" in str(err) and "\n" not in str(err)
    assert not SdkError(10008, "DecryptData").retryable
    assert not SdkError(10010, "GetMediaData").retryable
    assert "unknown error code" in str(SdkError(12345, "X"))
    for exc in (err, DecryptError("too short"), SdkCrashed("GetChatData", -6), SdkTimeout("X", -9, 3)):
        again = pickle.loads(pickle.dumps(exc))
        assert (type(again), again.code, again.call, str(again)) == (type(exc), exc.code, exc.call, str(exc))
    assert "SIGABRT" in str(SdkCrashed("GetChatData", -signal.SIGABRT))


def test_in_process_argument_checks() -> None:
    sdk = FinanceSdk(CORP, SECRET)
    try:
        for limit in (0, 1001):
            with pytest.raises(SdkError) as err:
                sdk.get_chat_data(0, limit)
            assert err.value.code == 10000
        with pytest.raises(SdkError, match="NUL"):
            sdk.get_media_chunk("", "abc\0def")
        with pytest.raises(SdkError) as err:
            sdk.get_chat_data(-1, 10)
        assert err.value.code == 10000
    finally:
        sdk.close()
    sdk.close()  # second close: no second DestroySdk
    with pytest.raises(SdkError, match="closed"):
        sdk.get_chat_data(0, 10)


def _run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_destroy_exactly_once_even_with_recreate_and_gc() -> None:
    """DestroySdk twice would SIGSEGV (P15): exercise every path in a child process."""
    result = _run_child(
        """
        import gc
        from wxarchive.capture.wecom.sdk import FinanceSdk
        sdk = FinanceSdk("wwcorp", "secret")
        sdk.recreate(); sdk.recreate()
        sdk.close(); sdk.close()
        with FinanceSdk("wwcorp", "secret") as other:
            other.recreate()
        dropped = FinanceSdk("wwcorp", "secret")
        del dropped; gc.collect()
        print("survived")
        """
    )
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.strip() == "survived"


# --------------------------------------------------------------------------- the worker


@pytest.fixture
def worker() -> Iterator[SdkWorker]:
    with SdkWorker(CORP, SECRET) as w:
        yield w


def test_short_message_guard_raises_instead_of_aborting(worker: SdkWorker) -> None:
    pid = worker.pid
    for msg in ("", "A" * 12, "A" * 44):
        with pytest.raises(DecryptError) as err:
            worker.decrypt_data(b"QUJD" * 11, msg)
        assert f"({len(msg)} chars)" in str(err.value)
    assert worker.pid == pid and worker.restarts == 0  # the child never died
    with pytest.raises(DecryptError):
        sdkmod.decrypt_data(load_library(), b"QUJD" * 11, "A" * 5)  # and in-process too


def test_worker_child_has_no_core_dumps_and_no_stdout(worker: SdkWorker) -> None:
    limits = Path(f"/proc/{worker.pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"]
    assert Path(f"/proc/{worker.pid}/fd/1").resolve() == Path("/dev/null")
    cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{worker.pid}/environ").read_bytes()
    assert SECRET.encode() not in cmdline + environ  # the secret travels over the socket only


def test_worker_survives_a_real_sdk_abort_and_restarts(worker: SdkWorker) -> None:
    first = worker.pid
    with pytest.raises(SdkCrashed) as err:
        worker._debug_unguarded_decrypt(b"QUJD" * 11, b"short")  # the SDK's own abort (P14)
    assert err.value.signal == signal.SIGABRT and "SIGABRT" in str(err.value)
    assert err.value.retryable
    with pytest.raises(SdkError) as err2:
        worker.decrypt_data(b"QUJD" * 11, "A" * 50)  # transparently a fresh child
    assert err2.value.code == 10008
    assert worker.pid != first and worker.restarts == 1
    with pytest.raises(SdkCrashed, match="SIGABRT"):
        worker._debug_abort()
    worker.recreate()
    assert worker.restarts == 2


def test_hung_worker_is_killed_after_the_deadline(worker: SdkWorker) -> None:
    started = time.monotonic()
    with pytest.raises(SdkTimeout) as err:
        worker._debug_hang(60, deadline=1.0)
    assert time.monotonic() - started < 10
    assert err.value.code == 10001 and err.value.retryable
    assert err.value.signal == signal.SIGKILL
    worker.recreate()  # works again


def test_closed_worker_refuses_calls() -> None:
    w = SdkWorker(CORP, SECRET)
    pid = w.pid
    w.close()
    w.close()
    with pytest.raises(SdkError, match="closed"):
        w.recreate()
    assert pid is not None and w.pid is None


# --------------------------------------------------------------------------- against the simulator


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _media_bytes(size: int) -> bytes:
    rng = random.Random(size)
    return bytes(rng.choice((0, 0, rng.randrange(256))) for _ in range(size))


@pytest.fixture(scope="module")
def tenant(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Key rotation at seq 6 (v1 PKCS#1 -> v2 PKCS#8), one record for a key we lack,
    one truncated record, media of the sizes that break naive chunk loops."""
    root = tmp_path_factory.mktemp("tenant")
    (root / "media").mkdir()
    (root / "keys").mkdir()
    keys = {v: rsa.generate_private_key(public_exponent=65537, key_size=2048) for v in (1, 2, 3)}
    formats = {1: serialization.PrivateFormat.TraditionalOpenSSL, 2: serialization.PrivateFormat.PKCS8}
    for ver, fmt in formats.items():
        (root / "keys" / f"private_v{ver}.pem").write_bytes(
            keys[ver].private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
        )
    (root / "tenant.json").write_text(json.dumps({"corp_id": CORP, "key_versions": [1, 2]}))
    (root / "secret").write_text(SECRET + "\n")
    rng = random.Random(11)
    records, plains = [], {}
    for seq in range(1, 13):
        ver = 3 if seq == 9 else (1 if seq < 6 else 2)
        plain = {"msgid": f"m{seq}", "action": "send", "msgtype": "text", "text": {"content": f"第{seq}条 🎉\u0000"}}
        k, m = crypto.encrypt_message(json.dumps(plain, ensure_ascii=False).encode(), keys[ver].public_key(), rng)
        if seq == 10:
            m = m[:20]
        records.append(
            {"seq": seq, "msgid": f"m{seq}", "publickey_ver": ver, "encrypt_random_key": k, "encrypt_chat_msg": m}
        )
        plains[f"m{seq}"] = plain
    _write_jsonl(root / "chatdata.jsonl", records)
    media, index = {}, []
    for size in MEDIA_SIZES:
        fileid, aeskey = f"f{size}", rng.randbytes(16).hex()
        authkey = base64.b64encode(f"47_{size}_1710054000".encode()).decode()
        plain = _media_bytes(size)
        cipher = crypto.encrypt_media(plain, aeskey)
        (root / "media" / f"{fileid}.enc").write_bytes(cipher)
        index.append({"fileid": fileid, "authkey": authkey, "path": f"media/{fileid}.enc",
                      "cipher_size": len(cipher), "plain_size": len(plain), "expired": False})
        media[size] = {"sdkfileid": crypto.make_sdkfileid(fileid, authkey, aeskey), "plain": plain}
    _write_jsonl(root / "media" / "index.jsonl", index)
    return {"dir": root, "plains": plains, "media": media}


@pytest.fixture(scope="module")
def sim(tenant: dict[str, Any]) -> Iterator[Any]:
    with serve(tenant["dir"]) as server:
        yield server


def test_pull_and_decrypt_every_record_through_the_worker(tenant, sim) -> None:
    ring = KeyRing.from_pem_files({v: tenant["dir"] / "keys" / f"private_v{v}.pem" for v in (1, 2)})
    with SdkWorker(CORP, SECRET) as worker:
        body = json.loads(worker.get_chat_data(0, 1000, proxy=sim.proxy_url, timeout=5))
        assert body["errcode"] == 0 and [r["seq"] for r in body["chatdata"]] == list(range(1, 13))
        done, quarantined = {}, {}
        for item in body["chatdata"]:
            try:
                plain = decrypt_record(item, ring, worker.decrypt_data)
            except RecordError as exc:
                quarantined[item["msgid"]] = exc.reason
                continue
            assert decrypt_record(item, ring, decrypt_data_py) == plain
            done[item["msgid"]] = json.loads(plain)
    assert quarantined == {"m9": "no private key for publickey_ver 3",
                           "m10": "encrypt_chat_msg too short (20 chars)"}
    assert done == {k: v for k, v in tenant["plains"].items() if k not in quarantined}
    assert done["m1"]["text"]["content"].endswith("\u0000")  # escaped NUL survives


@pytest.mark.parametrize("size", MEDIA_SIZES)
def test_media_chunks_are_byte_exact(tenant, sim, size: int) -> None:
    item = tenant["media"][size]
    chunks: list[int] = []
    data, indexbuf = b"", ""
    with SdkWorker(CORP, SECRET) as worker:
        while True:
            chunk = worker.get_media_chunk(indexbuf, item["sdkfileid"], proxy=sim.proxy_url, timeout=5)
            data += chunk.data
            chunks.append(len(chunk.data))
            if chunk.is_finish:
                break
            assert chunk.outindexbuf.startswith("Range:bytes=")
            indexbuf = chunk.outindexbuf
    assert hashlib.md5(data).digest() == hashlib.md5(item["plain"]).digest()
    if size and size % 524_288 == 0:
        assert chunks[-1] == 0  # the SDK's final empty chunk (A3)


def test_token_failure_never_reaches_our_stdout_or_errors(tenant, sim, capfd) -> None:
    with SdkWorker(CORP, SECRET + "-wrong") as worker:
        with pytest.raises(SdkError) as err:
            worker.get_chat_data(0, 10, proxy=sim.proxy_url, timeout=5)
        with pytest.raises(SdkError) as media_err:
            worker.get_media_chunk("", tenant["media"][16]["sdkfileid"], proxy=sim.proxy_url, timeout=5)
    assert err.value.code == 10001 and err.value.retryable
    out, errtext = capfd.readouterr()
    assert "WeWorkFinanceSdk" not in out + errtext  # the SDK's printf went to /dev/null
    for text in (str(err.value), repr(err.value), str(media_err.value), out, errtext):
        assert SECRET not in text and tenant["media"][16]["sdkfileid"] not in text


def test_stale_token_needs_recreate(tenant) -> None:
    """K3 / P16: after a server-side 42001 the SDK keeps its token until recreated."""
    with serve(tenant["dir"], faults=parse_fault_spec("tokenexpire=2")) as server:
        with SdkWorker(CORP, SECRET) as worker:
            assert json.loads(worker.get_chat_data(0, 3, proxy=server.proxy_url))["errcode"] == 0
            for _ in range(2):
                assert json.loads(worker.get_chat_data(0, 3, proxy=server.proxy_url))["errcode"] == 42001
            worker.recreate()
            assert json.loads(worker.get_chat_data(0, 3, proxy=server.proxy_url))["errcode"] == 0


def test_worker_timeout_guard_on_a_slow_server(tenant) -> None:
    """A server slower than the SDK timeout: the SDK itself gives up with 10001."""
    with serve(tenant["dir"], faults=parse_fault_spec("chatslow=1:4")) as server:
        with SdkWorker(CORP, SECRET) as worker:
            started = time.monotonic()
            with pytest.raises(SdkError) as err:
                worker.get_chat_data(0, 3, proxy=server.proxy_url, timeout=1)
            assert err.value.code == 10001 and time.monotonic() - started < 2 * 1 + 5
            assert json.loads(worker.get_chat_data(0, 3, proxy=server.proxy_url, timeout=5))["errcode"] == 0
