"""Test-only driver of the official WeCom SDK, isolated in a worker subprocess.

The real ``libWeWorkFinanceSdk_C_x86.so`` can abort or segfault the process that loads
it, and it printf()s gettoken failures to stdout, so it runs in a child process that
speaks JSON lines: commands on its stdin, answers on a duplicate of the original stdout
(fd 1 itself is pointed at stderr before the library is loaded). The ctypes binding is
deliberately minimal but pointer-correct: ``c_void_p`` restypes for every pointer, one
NewSlice/NewMediaData per call, Free* in ``finally``, ``string_at(ptr, len)`` reads.

Run as a script it is the worker; imported it offers :class:`SdkWorker`.
"""

from __future__ import annotations

import base64
import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def library_path() -> Path:
    """The x86_64 SDK shipped in the pyweworkfinance wheel (found without importing it)."""
    spec = importlib.util.find_spec("pyweworkfinance")
    if spec is None or spec.origin is None:
        raise RuntimeError("pyweworkfinance is not installed")
    return Path(spec.origin).parent / "libs" / "linux" / "libWeWorkFinanceSdk_C_x86.so"


# ------------------------------------------------------------------ worker side


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "NewSdk": (vp, []),
        "Init": (i, [vp, cp, cp]),
        "DestroySdk": (None, [vp]),
        "GetChatData": (i, [vp, ctypes.c_ulonglong, ctypes.c_uint, cp, cp, i, vp]),
        "DecryptData": (i, [cp, cp, vp]),
        "GetMediaData": (i, [vp, cp, cp, cp, cp, i, vp]),
        "NewSlice": (vp, []),
        "FreeSlice": (None, [vp]),
        "GetContentFromSlice": (vp, [vp]),
        "GetSliceLen": (i, [vp]),
        "NewMediaData": (vp, []),
        "FreeMediaData": (None, [vp]),
        "GetOutIndexBuf": (vp, [vp]),
        "GetData": (vp, [vp]),
        "GetIndexLen": (i, [vp]),
        "GetDataLen": (i, [vp]),
        "IsMediaDataFinish": (i, [vp]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def _read(ptr: int | None, length: int) -> bytes:
    return ctypes.string_at(ptr, length) if ptr and length > 0 else b""


class _Worker:
    """Executes commands against the library; handles are numbered for the parent."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.handles: dict[int, int] = {}
        self.next_id = 1

    def op_new(self, corpid: str, secret: str) -> dict[str, Any]:
        sdk = self.lib.NewSdk()
        rc = self.lib.Init(sdk, corpid.encode(), secret.encode())
        hid, self.next_id = self.next_id, self.next_id + 1
        self.handles[hid] = sdk
        return {"handle": hid, "rc": rc}

    def op_destroy(self, handle: int) -> dict[str, Any]:
        self.lib.DestroySdk(self.handles.pop(handle))
        return {}

    def op_chat(self, handle: int, seq: int, limit: int, proxy: str, passwd: str, timeout: int) -> dict[str, Any]:
        sl = self.lib.NewSlice()
        try:
            rc = self.lib.GetChatData(
                self.handles[handle], seq, limit, proxy.encode(), passwd.encode(), timeout, sl
            )
            body = _read(self.lib.GetContentFromSlice(sl), self.lib.GetSliceLen(sl)) if rc == 0 else b""
        finally:
            self.lib.FreeSlice(sl)
        return {"rc": rc, "body": body.decode("utf-8")}

    def op_decrypt(self, key_b64: str, msg: str) -> dict[str, Any]:
        sl = self.lib.NewSlice()
        try:
            rc = self.lib.DecryptData(base64.b64decode(key_b64), msg.encode(), sl)
            body = _read(self.lib.GetContentFromSlice(sl), self.lib.GetSliceLen(sl)) if rc == 0 else b""
        finally:
            self.lib.FreeSlice(sl)
        return {"rc": rc, "body": body.decode("utf-8")}

    def op_media(
        self, handle: int, sdkfileid: str, proxy: str, passwd: str, timeout: int, max_calls: int = 1000
    ) -> dict[str, Any]:
        """The chunk loop: follow outindexbuf until is_finish, stop on the first error."""
        data = bytearray()
        chunks: list[int] = []
        indexbuf = b""
        rc = 0
        for _ in range(max_calls):
            md = self.lib.NewMediaData()
            try:
                rc = self.lib.GetMediaData(
                    self.handles[handle], indexbuf, sdkfileid.encode(), proxy.encode(), passwd.encode(), timeout, md
                )
                if rc != 0:
                    break
                chunk = _read(self.lib.GetData(md), self.lib.GetDataLen(md))
                indexbuf = _read(self.lib.GetOutIndexBuf(md), self.lib.GetIndexLen(md))
                finished = self.lib.IsMediaDataFinish(md)
            finally:
                self.lib.FreeMediaData(md)
            data += chunk
            chunks.append(len(chunk))
            if finished:
                break
        return {"rc": rc, "data": base64.b64encode(bytes(data)).decode(), "chunks": chunks}


def _worker_main() -> None:
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # the SDK printf()s gettoken failures: keep them off the protocol pipe
    worker = _Worker(_bind(library_path()))
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        result = getattr(worker, f"op_{op}")(**cmd)
        out.write(json.dumps(result) + "\n")
        out.flush()


# ------------------------------------------------------------------ parent side


class SdkCrashed(RuntimeError):
    """The worker process died (abort/segfault) while running a command."""


class SdkWorker:
    """A child process holding real SDK handles; every call is one JSON round trip."""

    def __init__(self) -> None:
        # stderr goes to a file: the SDK's printf()s must never fill a pipe and block it
        self.errfile = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errfile,
            text=True,
        )

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise SdkCrashed(self._stderr()) from exc
        line = self.proc.stdout.readline()
        if not line:
            raise SdkCrashed(f"worker exited with {self.proc.wait()}: {self._stderr()}")
        return json.loads(line)

    def _stderr(self) -> str:
        self.proc.wait(timeout=10)
        return self.stderr_text()

    def stderr_text(self) -> str:
        """Everything the worker (and the SDK's printf) wrote so far."""
        self.errfile.seek(0)
        return self.errfile.read().decode("utf-8", "replace")

    def new(self, corpid: str, secret: str) -> int:
        return int(self.call("new", corpid=corpid, secret=secret)["handle"])

    def destroy(self, handle: int) -> None:
        self.call("destroy", handle=handle)

    def chat(
        self, handle: int, seq: int, limit: int, proxy: str, passwd: str = "", timeout: int = 10
    ) -> tuple[int, str]:
        r = self.call("chat", handle=handle, seq=seq, limit=limit, proxy=proxy, passwd=passwd, timeout=timeout)
        return r["rc"], r["body"]

    def decrypt(self, rsa_output: bytes, msg: str) -> tuple[int, str]:
        r = self.call("decrypt", key_b64=base64.b64encode(rsa_output).decode(), msg=msg)
        return r["rc"], r["body"]

    def media(
        self, handle: int, sdkfileid: str, proxy: str, passwd: str = "", timeout: int = 10
    ) -> tuple[int, bytes, list[int]]:
        r = self.call("media", handle=handle, sdkfileid=sdkfileid, proxy=proxy, passwd=passwd, timeout=timeout)
        return r["rc"], base64.b64decode(r["data"]), r["chunks"]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.errfile.close()

    def __enter__(self) -> SdkWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    _worker_main()
