"""ctypes binding over the official WeCom archive library (``libWeWorkFinanceSdk_C``).

Facts this module relies on are in ``shared/docs/wecom-archive-api.md`` §1 and the
pitfalls P1, P2, P9, P14, P15, P16 there:

* every pointer-returning function gets ``restype = c_void_p`` (P1), outputs are read
  with ``ctypes.string_at(ptr, len)`` and never as C strings (P2);
* one ``NewSlice``/``NewMediaData`` per call, freed in ``finally`` (P15: the SDK leaks
  when an output struct is reused), ``DestroySdk`` exactly once (double free = SIGSEGV);
* the library is loaded ``RTLD_LOCAL`` because it exports its own OpenSSL/curl (P9);
* ``DecryptData`` aborts the process on short input (P14), so it is only ever called
  after the guards in :func:`decrypt_data`.

The library is located inside the installed ``pyweworkfinance`` wheel *without
importing it*: its ``__init__`` installs a stdout logger and its wrapper logs secrets.
Even in this process the library can print ``WeWorkFinanceSdk:access:<body>`` to
stdout on token failures; production code therefore runs it in
:class:`wxarchive.capture.wecom.worker.SdkWorker`, whose child has fd 1 on /dev/null.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: sha256 of the v3.0 library shipped in pyweworkfinance 1.1.0, by file name.
PINNED_SHA256 = {
    "libWeWorkFinanceSdk_C_x86.so": "79ced4de6b18d5e96a21cd06f325794dc8957f8925120538d56d4ce827d3dfd0",
    "libWeWorkFinanceSdk_C_arm.so": "5d6bbea2cec395fdd17edc912fb08b9d13e010de879bbfa1256c204d3d7fc3cb",
}
_LIB_BY_MACHINE = {
    "x86_64": "libWeWorkFinanceSdk_C_x86.so",
    "amd64": "libWeWorkFinanceSdk_C_x86.so",
    "aarch64": "libWeWorkFinanceSdk_C_arm.so",
    "arm64": "libWeWorkFinanceSdk_C_arm.so",
}
#: ELF e_machine values, to refuse a library built for another CPU with a clear message.
_ELF_MACHINE = {"libWeWorkFinanceSdk_C_x86.so": 0x3E, "libWeWorkFinanceSdk_C_arm.so": 0xB7}
_ELF_MACHINE_NAMES = {0x3E: "x86_64", 0xB7: "aarch64", 0x03: "i386", 0x28: "arm"}

#: Shortest ``encrypt_chat_msg`` we ever hand to the native DecryptData. The SDK reads
#: a 32-char key at offset 13 and aborts the whole process (uncaught out_of_range) on
#: inputs shorter than 13; below 45 the message cannot be valid anyway (§2.2).
MIN_ENCRYPT_MSG_LEN = 45
#: Local code for inputs refused before they reach the native code (same number as
#: the SDK's own "parameter error"; DecryptData itself never returns it for non-NULL
#: arguments, so it cannot be confused with a native result).
LOCAL_REFUSED = 10000
#: ``GetChatData`` accepts 1..1000 records per call (§1.3).
MAX_LIMIT = 1000

ERROR_MEANINGS: dict[int, str] = {
    10000: "parameter error",
    10001: "network error (also any gettoken failure: wrong secret, untrusted IP, timeout)",
    10002: "data parse failure",
    10003: "system failure",
    10004: "key error, encryption failed (deprecated)",
    10005: "fileid error, or malformed key info inside the message",
    10006: "decryption failed",
    10007: "no private key for the message's key version (deprecated)",
    10008: "error parsing encrypt_key: wrong or garbled RSA output, or wrong publickey_ver key",
    10009: "illegal IP: server egress IP is not in the archive's trusted IP list",
    10010: "data expired",
    10011: "certificate error",
}
RETRYABLE_CODES = frozenset({10001, 10002, 10003})


class SdkLoadError(RuntimeError):
    """The native library cannot be used here (missing, tampered, musl, wrong CPU)."""


class SdkError(Exception):
    """A non-zero return code from the SDK, or a call refused before reaching it.

    ``str()`` is one line with the official meaning; it never contains the secret,
    an sdkfileid, keys or message text.
    """

    def __init__(self, code: int, call: str, detail: str | None = None) -> None:
        self.code = code
        self.call = call
        self.detail = detail
        super().__init__(code, call, detail)

    @property
    def retryable(self) -> bool:
        """10001–10003 are transient (network, parse, system); the rest are not."""
        return self.code in RETRYABLE_CODES

    @property
    def meaning(self) -> str:
        return ERROR_MEANINGS.get(self.code, "unknown error code")

    def __str__(self) -> str:
        text = f"{self.call} failed: SDK error {self.code} ({self.meaning})"
        return f"{text}: {self.detail}" if self.detail else text

    def __reduce__(self) -> tuple:
        return (type(self), (self.code, self.call, self.detail))


class DecryptError(SdkError):
    """DecryptData input refused locally because the native code would abort on it.

    Raised identically by the native wrapper and the pure-Python reimplementation,
    always with code :data:`LOCAL_REFUSED`.
    """

    def __init__(self, detail: str, call: str = "DecryptData", code: int = LOCAL_REFUSED) -> None:
        super().__init__(code, call, detail)

    def __reduce__(self) -> tuple:
        return (type(self), (self.detail, self.call, self.code))


@dataclass(frozen=True)
class MediaChunk:
    """One ``GetMediaData`` result: already-decrypted bytes and the next index."""

    outindexbuf: str
    data: bytes
    is_finish: bool


_P = ctypes.c_void_p
_S = ctypes.c_char_p
_I = ctypes.c_int
#: name -> (restype, argtypes). Pointers are c_void_p, never c_char_p (P1, P2).
SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "NewSdk": (_P, []),
    "Init": (_I, [_P, _S, _S]),
    "GetChatData": (_I, [_P, ctypes.c_ulonglong, ctypes.c_uint, _S, _S, _I, _P]),
    "DecryptData": (_I, [_S, _S, _P]),
    "GetMediaData": (_I, [_P, _S, _S, _S, _S, _I, _P]),
    "DestroySdk": (None, [_P]),
    "NewSlice": (_P, []),
    "FreeSlice": (None, [_P]),
    "GetContentFromSlice": (_P, [_P]),
    "GetSliceLen": (_I, [_P]),
    "NewMediaData": (_P, []),
    "FreeMediaData": (None, [_P]),
    "GetOutIndexBuf": (_P, [_P]),
    "GetData": (_P, [_P]),
    "GetIndexLen": (_I, [_P]),
    "GetDataLen": (_I, [_P]),
    "IsMediaDataFinish": (_I, [_P]),
}
POINTER_RETURNING = frozenset(
    {"NewSdk", "NewSlice", "NewMediaData", "GetContentFromSlice", "GetOutIndexBuf", "GetData"}
)


@dataclass(frozen=True)
class SdkLibrary:
    """A loaded, signature-configured library and where it came from."""

    cdll: ctypes.CDLL
    path: Path
    sha256: str
    pinned: bool  # True when the hash matched our pinned release


def bundled_library_path() -> Path:
    """Path of the library inside the installed pyweworkfinance wheel (not imported)."""
    name = _library_name_for_machine()
    spec = importlib.util.find_spec("pyweworkfinance")
    if spec is None or not spec.submodule_search_locations:
        raise SdkLoadError(
            "WeCom SDK library not found: the pyweworkfinance package is not installed"
        )
    return Path(spec.submodule_search_locations[0]) / "libs" / "linux" / name


def _library_name_for_machine() -> str:
    machine = platform.machine().lower()
    name = _LIB_BY_MACHINE.get(machine)
    if name is None:
        raise SdkLoadError(
            f"WeCom SDK has no Linux build for CPU {machine!r} (only x86_64 and aarch64)"
        )
    return name


def _check_platform() -> None:
    """The official .so needs Linux with glibc >= 2.17 (P8: musl/Alpine cannot load it)."""
    if not sys.platform.startswith("linux"):
        raise SdkLoadError(
            f"WeCom SDK binding supports Linux only (this is {sys.platform}); "
            "run the archiver on a glibc Linux host"
        )
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        glibc = ""
    if not glibc.startswith("glibc"):
        raise SdkLoadError(
            "WeCom SDK needs glibc >= 2.17; this system's C library is not glibc "
            "(musl/Alpine?): use a Debian/Ubuntu/RHEL based image"
        )
    version = tuple(int(p) for p in glibc.split()[1].split(".")[:2] if p.isdigit())
    if version < (2, 17):
        raise SdkLoadError(f"WeCom SDK needs glibc >= 2.17, this system has {glibc}")


def _check_elf_machine(path: Path, expected_name: str) -> None:
    with path.open("rb") as fh:
        header = fh.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise SdkLoadError(f"WeCom SDK library {path} is not an ELF shared object")
    machine = int.from_bytes(header[18:20], "little")
    wanted = _ELF_MACHINE[expected_name]
    if machine != wanted:
        got = _ELF_MACHINE_NAMES.get(machine, hex(machine))
        raise SdkLoadError(
            f"WeCom SDK library {path} is built for {got}, this CPU is {platform.machine()}"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _configure(cdll: ctypes.CDLL) -> None:
    for name, (restype, argtypes) in SIGNATURES.items():
        func = getattr(cdll, name)
        func.restype = restype
        func.argtypes = argtypes


_LOADED: dict[Path, SdkLibrary] = {}
_LOAD_LOCK = threading.Lock()


def load_library(lib_path: str | os.PathLike[str] | None = None) -> SdkLibrary:
    """Load (once per process and path) and configure the official library.

    Without ``lib_path`` the bundled copy is used and must match the pinned sha256.
    A customer-supplied copy is loaded as given; its sha256 is logged and returned so
    it can be recorded, because an SDK update may change the wire format.
    """
    _check_platform()
    expected_name = _library_name_for_machine()
    path = Path(lib_path) if lib_path is not None else bundled_library_path()
    path = path.resolve()
    with _LOAD_LOCK:
        if path in _LOADED:
            return _LOADED[path]
        if not path.is_file():
            raise SdkLoadError(f"WeCom SDK library not found at {path}")
        _check_elf_machine(path, expected_name)
        digest = file_sha256(path)
        pinned = digest == PINNED_SHA256[expected_name]
        if lib_path is None and not pinned:
            raise SdkLoadError(
                f"WeCom SDK library {path} has sha256 {digest}, expected the pinned "
                f"{PINNED_SHA256[expected_name]}: reinstall pyweworkfinance==1.1.0"
            )
        if not pinned:
            log.warning("using customer WeCom SDK library %s (sha256 %s, not pinned)", path, digest)
        try:
            cdll = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
            _configure(cdll)
        except (OSError, AttributeError) as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SdkLoadError(f"cannot load WeCom SDK library {path}: {first_line}") from None
        lib = SdkLibrary(cdll=cdll, path=path, sha256=digest, pinned=pinned)
        _warm_up(lib)
        _LOADED[path] = lib
        log.info("loaded WeCom SDK library %s sha256 %s", path, digest)
        return lib


def _warm_up(lib: SdkLibrary) -> None:
    """Run DecryptData once before any threads use it.

    Its base64 lookup table is initialised lazily without a lock (§1.4). The input
    is safe (long enough, decodes to 33 bytes) and must come back as 10008.
    """
    rc, _ = _native_decrypt(lib, b"QUJD" * 11, b"A" * MIN_ENCRYPT_MSG_LEN)
    if rc != 10008:
        raise SdkLoadError(
            f"WeCom SDK library {lib.path} misbehaves: DecryptData self-test returned {rc}, "
            "expected 10008"
        )


def _read_slice(lib: SdkLibrary, slice_ptr: int) -> bytes:
    ptr = lib.cdll.GetContentFromSlice(slice_ptr)
    length = lib.cdll.GetSliceLen(slice_ptr)
    if not ptr or length <= 0:
        return b""
    return ctypes.string_at(ptr, length)


def _new(lib: SdkLibrary, constructor: str, call: str) -> int:
    ptr = getattr(lib.cdll, constructor)()
    if not ptr:
        raise SdkError(10003, call, f"{constructor} returned NULL")
    return ptr


def _native_decrypt(lib: SdkLibrary, key: bytes, msg: bytes) -> tuple[int, bytes]:
    """Raw DecryptData with a fresh slice. Callers must have guarded ``msg`` (P14)."""
    slice_ptr = _new(lib, "NewSlice", "DecryptData")
    try:
        rc = lib.cdll.DecryptData(key, msg, slice_ptr)
        return rc, (_read_slice(lib, slice_ptr) if rc == 0 else b"")
    finally:
        lib.cdll.FreeSlice(slice_ptr)


def guard_encrypt_msg(encrypt_msg: str) -> bytes:
    """Refuse messages the native DecryptData would abort on or cannot accept.

    Returns the ASCII bytes to pass on. Raises :class:`DecryptError` (never logs or
    echoes the message itself).
    """
    if not isinstance(encrypt_msg, str):
        raise DecryptError(f"encrypt_msg must be str, not {type(encrypt_msg).__name__}")
    if len(encrypt_msg) < MIN_ENCRYPT_MSG_LEN:
        raise DecryptError(f"encrypt_chat_msg too short ({len(encrypt_msg)} chars)")
    if not encrypt_msg.isascii():
        raise DecryptError("encrypt_chat_msg contains non-ASCII characters")
    if "\0" in encrypt_msg:
        raise DecryptError("encrypt_chat_msg contains a NUL character")
    return encrypt_msg.encode("ascii")


@functools.cache
def _abort_predictor() -> Callable[[bytes, str], str | None]:
    """The pure-Python model's abort check; imported late because decrypt.py imports us."""
    from wxarchive.capture.wecom.decrypt import native_abort_reason

    return native_abort_reason


def decrypt_data(lib: SdkLibrary, encrypt_key: bytes, encrypt_msg: str) -> bytes:
    """Official ``DecryptData``: RSA-unwrapped key + ``encrypt_chat_msg`` -> JSON bytes.

    Inputs on which the native code would abort the process are refused first with
    :class:`DecryptError`: short/non-ASCII messages (P14) and key info whose lengths
    make the SDK index out of range (found with the pure-Python model in
    :mod:`.decrypt`). Any other failure is the SDK's own code as :class:`SdkError`.
    """
    if not isinstance(encrypt_key, bytes):
        raise DecryptError(f"encrypt_key must be bytes, not {type(encrypt_key).__name__}")
    msg = guard_encrypt_msg(encrypt_msg)
    reason = _abort_predictor()(encrypt_key, encrypt_msg)
    if reason is not None:
        raise DecryptError(reason)
    rc, out = _native_decrypt(lib, encrypt_key, msg)
    if rc != 0:
        raise SdkError(rc, "DecryptData")
    return out


def _encode_arg(value: str, what: str, call: str) -> bytes:
    """UTF-8 for a C string argument; a NUL would silently truncate it in C."""
    if not isinstance(value, str):
        raise SdkError(10000, call, f"{what} must be str, not {type(value).__name__}")
    if "\0" in value:
        raise SdkError(10000, call, f"{what} contains a NUL character")
    return value.encode("utf-8")


def _destroy(cdll: ctypes.CDLL, handle: int) -> None:
    cdll.DestroySdk(handle)


class FinanceSdk:
    """One SDK handle: ``NewSdk`` + ``Init`` for one corp, used by one thread at a time.

    Calls on a handle are serialised with a lock (§1.4: concurrent use can race on the
    token refresh). ``close`` destroys the handle exactly once; a finalizer does it if
    the object is dropped unclosed.
    """

    def __init__(
        self, corp_id: str, secret: str, lib_path: str | os.PathLike[str] | None = None
    ) -> None:
        self.lib = load_library(lib_path)
        self._corp_id = _encode_arg(corp_id, "corp_id", "Init")
        self._secret = _encode_arg(secret, "secret", "Init")
        self._lock = threading.Lock()
        self._handle: int | None = None
        self._finalizer: weakref.finalize | None = None
        self._open_handle()

    def _open_handle(self) -> None:
        handle = _new(self.lib, "NewSdk", "NewSdk")
        rc = self.lib.cdll.Init(handle, self._corp_id, self._secret)
        if rc != 0:
            self.lib.cdll.DestroySdk(handle)
            raise SdkError(rc, "Init")
        self._handle = handle
        self._finalizer = weakref.finalize(self, _destroy, self.lib.cdll, handle)

    def _close_handle(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs DestroySdk at most once
        self._finalizer = None
        self._handle = None

    def _require_handle(self, call: str) -> int:
        if self._handle is None:
            raise SdkError(10000, call, "the SDK handle is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    def get_chat_data(
        self, seq: int, limit: int, proxy: str = "", passwd: str = "", timeout: int = 10
    ) -> bytes:
        """Records with server seq > ``seq``: the server's JSON bytes verbatim.

        rc 0 does not mean success: the JSON may carry an ``errcode`` (301042, 42001…)
        which the caller must check (P12, P16).
        """
        call = "GetChatData"
        if not 1 <= limit <= MAX_LIMIT:
            raise SdkError(10000, call, f"limit must be 1..{MAX_LIMIT}, got {limit}")
        if not 0 <= seq < 1 << 64:
            raise SdkError(10000, call, "seq must be an unsigned 64-bit integer")
        args = (_encode_arg(proxy, "proxy", call), _encode_arg(passwd, "passwd", call))
        with self._lock:
            handle = self._require_handle(call)
            slice_ptr = _new(self.lib, "NewSlice", call)
            try:
                rc = self.lib.cdll.GetChatData(handle, seq, limit, *args, int(timeout), slice_ptr)
                if rc != 0:
                    raise SdkError(rc, call)
                return _read_slice(self.lib, slice_ptr)
            finally:
                self.lib.cdll.FreeSlice(slice_ptr)

    def get_media_chunk(
        self,
        indexbuf: str,
        sdkfileid: str,
        proxy: str = "",
        passwd: str = "",
        timeout: int = 10,
    ) -> MediaChunk:
        """One ≤512 KiB chunk of decrypted media; pass ``outindexbuf`` back until finished.

        The sdkfileid holds the media key: it never appears in errors or logs.
        """
        call = "GetMediaData"
        args = (
            _encode_arg(indexbuf, "indexbuf", call),
            _encode_arg(sdkfileid, "sdkfileid", call),
            _encode_arg(proxy, "proxy", call),
            _encode_arg(passwd, "passwd", call),
        )
        with self._lock:
            handle = self._require_handle(call)
            media = _new(self.lib, "NewMediaData", call)
            try:
                rc = self.lib.cdll.GetMediaData(handle, *args, int(timeout), media)
                if rc != 0:
                    raise SdkError(rc, call)
                return self._read_media(media)
            finally:
                self.lib.cdll.FreeMediaData(media)

    def _read_media(self, media: int) -> MediaChunk:
        cdll = self.lib.cdll
        index_ptr, index_len = cdll.GetOutIndexBuf(media), cdll.GetIndexLen(media)
        data_ptr, data_len = cdll.GetData(media), cdll.GetDataLen(media)
        index = ctypes.string_at(index_ptr, index_len) if index_ptr and index_len > 0 else b""
        data = ctypes.string_at(data_ptr, data_len) if data_ptr and data_len > 0 else b""
        return MediaChunk(
            outindexbuf=index.decode("latin-1"),
            data=data,
            is_finish=bool(cdll.IsMediaDataFinish(media)),
        )

    def recreate(self) -> None:
        """DestroySdk + NewSdk + Init: drops the cached access token (P16, K3)."""
        with self._lock:
            self._close_handle()
            self._open_handle()

    def close(self) -> None:
        """Destroy the handle; safe to call any number of times."""
        with self._lock:
            self._close_handle()

    def __enter__(self) -> FinanceSdk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<FinanceSdk {state} lib={self.lib.path.name}>"
