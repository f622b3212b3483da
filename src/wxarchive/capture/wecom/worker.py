"""Run the official SDK in a child process, so its crashes and prints cannot hurt us.

The library aborts the process on some inputs (P14), double frees crash it (P15), it
exports its own OpenSSL/curl/libstdc++ (P9) and it ``printf``s token-error bodies to
stdout (§1.5). :class:`SdkWorker` keeps one :class:`~.sdk.FinanceSdk` in a child and
exposes the same API; a dead child becomes :class:`SdkCrashed` and the next call
starts a fresh one.

IPC design. The child is a fresh interpreter started with ``subprocess.Popen``
(``python -m wxarchive.capture.wecom.worker FD``), not ``multiprocessing``:

* nothing of the parent is inherited or re-imported (``spawn`` re-imports the
  parent's ``__main__``, which breaks CLIs and test runners that lack a main guard;
  ``fork`` would copy locks and the parent's OpenSSL state into a process that then
  loads a second OpenSSL);
* stdin, stdout and stderr are /dev/null from the first instruction, so no
  ``WeWorkFinanceSdk:access:…`` line can reach our stdout or logs;
* requests and replies are pickled tuples over one private ``socketpair`` end passed
  as an inherited file descriptor (``multiprocessing.connection.Connection`` framing).
  The secret travels over that socket, never in argv or the environment (both are
  readable in ``/proc``);
* the parent waits with ``poll(timeout)``: a hung child is killed after the call's
  SDK timeout plus a margin; EOF on the socket means the child died, and its exit
  status (``-SIGABRT`` …) names the cause.

Calls on one worker are serialised (one SDK handle, one request in flight), which is
also what §1.4 asks for a handle.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from wxarchive.capture.wecom.sdk import (
    FinanceSdk,
    MediaChunk,
    SdkError,
    SdkLoadError,
    _native_decrypt,
    decrypt_data,
)

log = logging.getLogger(__name__)

#: Extra seconds granted beyond the SDK's own network timeouts before a call is
#: declared hung. GetChatData/GetMediaData may do gettoken + the request, each with
#: ``timeout`` as connect and total limit, hence ``2 * timeout + CALL_MARGIN_S``.
CALL_MARGIN_S = 5.0
START_TIMEOUT_S = 30.0
LOCAL_CALL_TIMEOUT_S = 30.0


class SdkCrashed(SdkError):
    """The SDK worker process died during a call (signal or exit); code 10003.

    Retryable: the next call on the same :class:`SdkWorker` starts a fresh child.
    """

    def __init__(self, call: str, returncode: int | None, detail: str | None = None) -> None:
        self.returncode = returncode
        self.signal = -returncode if returncode is not None and returncode < 0 else None
        super().__init__(10003, call, detail or f"SDK worker process {_describe_exit(returncode)}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.call, self.returncode, self.detail))


class SdkTimeout(SdkCrashed):
    """The SDK worker did not answer in time and was killed; code 10001 (network)."""

    def __init__(self, call: str, returncode: int | None, seconds: float) -> None:
        super().__init__(call, returncode, f"no answer from the SDK worker within {seconds:g} s; killed")
        self.code = 10001
        self.seconds = seconds

    def __reduce__(self) -> tuple:
        return (type(self), (self.call, self.returncode, self.seconds))


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def _child_env() -> dict[str, str]:
    """The parent's environment, plus our package on PYTHONPATH for source checkouts.

    The environment is kept on purpose: with ``proxy=""`` the SDK honours
    ``https_proxy`` like the in-process library would (§1).
    """
    env = dict(os.environ)
    src_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
    return env


class SdkWorker:
    """:class:`FinanceSdk` in a child process, with the same methods.

    ``SdkLoadError`` from the child (missing library, wrong hash…) is raised by the
    constructor. After :class:`SdkCrashed` the worker restarts on the next call.
    """

    def __init__(
        self,
        corp_id: str,
        secret: str,
        lib_path: str | os.PathLike[str] | None = None,
        *,
        start_timeout: float = START_TIMEOUT_S,
        call_margin: float = CALL_MARGIN_S,
    ) -> None:
        self._init_args = (corp_id, secret, None if lib_path is None else str(lib_path))
        self._start_timeout = start_timeout
        self._call_margin = call_margin
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._closed = False
        self.library_info: dict[str, Any] = {}
        self.restarts = 0
        self._start()

    # ---- lifecycle -------------------------------------------------------------------

    def _start(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "wxarchive.capture.wecom.worker", str(child_sock.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(child_sock.fileno(),),
                env=_child_env(),
            )
        except OSError as exc:
            parent_sock.close()
            raise SdkLoadError(f"cannot start the SDK worker process: {exc.strerror}") from None
        finally:
            child_sock.close()
        self._conn = Connection(parent_sock.detach())
        try:
            self.library_info = self._request("Init", "init", self._init_args, self._start_timeout)
        except SdkCrashed as exc:
            raise SdkLoadError(f"SDK worker failed to start: {exc.detail}") from None

    def _ensure_started(self) -> None:
        if self._closed:
            raise SdkError(10000, "SdkWorker", "the worker is closed")
        if self._proc is None:
            self.restarts += 1
            log.info("starting a fresh SDK worker (restart %d)", self.restarts)
            self._start()

    def _discard_child(self, kill: bool) -> int | None:
        """Close our end and reap the child; returns its exit status."""
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        if kill and proc.poll() is None:
            proc.kill()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    # ---- request / reply -------------------------------------------------------------

    def _request(self, call: str, op: str, args: tuple[Any, ...], timeout: float) -> Any:
        """Send one request and wait for its reply, turning child death into SdkCrashed."""
        conn = self._conn
        assert conn is not None
        try:
            conn.send((op, args))
            if not conn.poll(timeout):
                returncode = self._discard_child(kill=True)
                raise SdkTimeout(call, returncode, timeout)
            status, payload = conn.recv()
        except (EOFError, OSError):
            returncode = self._discard_child(kill=True)
            raise SdkCrashed(call, returncode) from None
        if status == "ok":
            return payload
        if op == "init":
            self._discard_child(kill=True)
        raise payload

    def _call(self, call: str, op: str, args: tuple[Any, ...], timeout: float) -> Any:
        with self._lock:
            self._ensure_started()
            return self._request(call, op, args, timeout)

    def _network_deadline(self, timeout: int) -> float:
        return 2 * max(int(timeout), 1) + self._call_margin

    # ---- the FinanceSdk API ----------------------------------------------------------

    def get_chat_data(
        self, seq: int, limit: int, proxy: str = "", passwd: str = "", timeout: int = 10
    ) -> bytes:
        """See :meth:`FinanceSdk.get_chat_data`; runs in the child."""
        args = (seq, limit, proxy, passwd, timeout)
        return self._call("GetChatData", "get_chat_data", args, self._network_deadline(timeout))

    def get_media_chunk(
        self,
        indexbuf: str,
        sdkfileid: str,
        proxy: str = "",
        passwd: str = "",
        timeout: int = 10,
    ) -> MediaChunk:
        """See :meth:`FinanceSdk.get_media_chunk`; runs in the child."""
        args = (indexbuf, sdkfileid, proxy, passwd, timeout)
        return self._call("GetMediaData", "get_media_chunk", args, self._network_deadline(timeout))

    def decrypt_data(self, encrypt_key: bytes, encrypt_msg: str) -> bytes:
        """The official DecryptData (guarded, see :func:`.sdk.decrypt_data`) in the child."""
        return self._call("DecryptData", "decrypt", (encrypt_key, encrypt_msg), LOCAL_CALL_TIMEOUT_S)

    def recreate(self) -> None:
        """DestroySdk + NewSdk + Init in the child (drops a stale token, P16)."""
        self._call("recreate", "recreate", (), LOCAL_CALL_TIMEOUT_S)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        """Ask the child to destroy its handle and exit; kill it if it does not."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._conn is not None:
                try:
                    self._conn.send(("close", ()))
                    self._conn.poll(5)
                except OSError:
                    pass
            proc = self._proc
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self._discard_child(kill=True)

    def __enter__(self) -> SdkWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- test hooks: make the child die the ways the real SDK can --------------------

    def _debug_abort(self) -> None:
        """Test hook: the child calls ``os.abort()`` (what an SDK abort looks like)."""
        self._call("debug", "abort", (), LOCAL_CALL_TIMEOUT_S)

    def _debug_unguarded_decrypt(self, encrypt_key: bytes, encrypt_msg: bytes) -> tuple[int, bytes]:
        """Test hook: native DecryptData WITHOUT the guards; returns (rc, output).

        Used to prove that inputs the guards refuse really crash the library.
        """
        return self._call("DecryptData", "unguarded_decrypt", (encrypt_key, encrypt_msg), LOCAL_CALL_TIMEOUT_S)

    def _debug_hang(self, seconds: float, deadline: float) -> None:
        """Test hook: the child sleeps ``seconds``; the parent gives up after ``deadline``."""
        self._call("debug", "hang", (seconds,), deadline)


# --------------------------------------------------------------------------------------
# Child side
# --------------------------------------------------------------------------------------


def _isolate_child() -> None:
    """No core dumps (they would hold the secret and keys); fds 0–2 on /dev/null; a Ctrl-C at the
    terminal (sent to the whole process group) is the parent's to act on, which stops cleanly."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


class _ChildState:
    def __init__(self) -> None:
        self.sdk: FinanceSdk | None = None

    def handle(self, op: str, args: tuple[Any, ...]) -> Any:
        if op == "init":
            corp_id, secret, lib_path = args
            self.sdk = FinanceSdk(corp_id, secret, lib_path)
            lib = self.sdk.lib
            return {"path": str(lib.path), "sha256": lib.sha256, "pinned": lib.pinned}
        sdk = self.sdk
        if sdk is None:
            raise SdkError(10000, op, "worker not initialised")
        if op == "get_chat_data":
            return sdk.get_chat_data(*args)
        if op == "get_media_chunk":
            return sdk.get_media_chunk(*args)
        if op == "decrypt":
            return decrypt_data(sdk.lib, *args)
        if op == "recreate":
            return sdk.recreate()
        if op == "unguarded_decrypt":
            return _native_decrypt(sdk.lib, *args)
        if op == "abort":
            os.abort()
        if op == "hang":
            threading.Event().wait(args[0])
            return None
        raise SdkError(10000, op, "unknown worker operation")


def _safe_error(op: str, exc: BaseException) -> BaseException:
    """Errors we send back: ours as they are, anything else without its text."""
    if isinstance(exc, (SdkError, SdkLoadError)):
        return exc
    return SdkError(10003, op, f"worker error {type(exc).__name__}")


def child_main(fd: int) -> None:
    """Serve requests until the parent closes the socket or says ``close``."""
    _isolate_child()
    conn = Connection(fd)
    state = _ChildState()
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            break
        if op == "close":
            break
        try:
            reply: tuple[str, Any] = ("ok", state.handle(op, args))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back as a reply
            reply = ("err", _safe_error(op, exc))
        try:
            conn.send(reply)
        except OSError:
            break
    if state.sdk is not None:
        state.sdk.close()


if __name__ == "__main__":
    child_main(int(sys.argv[1]))
