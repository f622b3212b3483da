"""Opening WeChat's encrypted SQLite databases, read-only, without a plaintext copy on disk.

Three cipher profiles (facts: ``shared/docs/wechat-databases.md`` §1.2, §2.2, §3.2):

========  =====  ============================  ======  =======
profile   page   KDF                           HMAC    reserve
========  =====  ============================  ======  =======
android   1024   PBKDF2-HMAC-SHA1, 4,000       none    16
win3      4096   PBKDF2-HMAC-SHA1, 64,000      SHA1    48
v4        4096   PBKDF2-HMAC-SHA512, 256,000   SHA512  80
========  =====  ============================  ======  =======

Before SQLCipher is asked anything, :func:`check` reads page 1 and decides with
``cryptography`` alone whether the file is whole, encrypted, and opened by this key (the
HMAC of page 1 for win3/v4; the decrypted header's fixed bytes for android). That gives one
clear line for a wrong key, a truncated file or a plain SQLite file, instead of SQLCipher's
"file is not a database" halfway through a run.

:func:`open_db` then copies the *encrypted* file and its ``-wal`` into a private temporary
folder (the evidence on the device copy is never written to: SQLite would checkpoint or
create ``-shm`` beside it) and opens the copy with the ``sqlcipher3`` wheel using the key
derived here (``x'<key><salt>'``, so the KDF runs once). Pages are decrypted in SQLCipher's
page cache; temporary tables live in memory. The folder is removed on close.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wxarchive.archive.files import pid_alive as _alive

SQLITE_MAGIC = b"SQLite format 3\x00"


class WeChatDbError(Exception):
    """A database cannot be read; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class Profile:
    name: str
    page_size: int
    kdf_hash: str
    kdf_iter: int
    hmac_hash: str | None
    reserve: int
    compatibility: int  # SQLCipher's cipher_compatibility with these parameters

    @property
    def hmac_size(self) -> int:
        return hashlib.new(self.hmac_hash).digest_size if self.hmac_hash else 0


ANDROID = Profile("android", 1024, "sha1", 4000, None, 16, 1)
WIN3 = Profile("win3", 4096, "sha1", 64000, "sha1", 48, 3)
V4 = Profile("v4", 4096, "sha512", 256000, "sha512", 80, 4)
PROFILES = {p.name: p for p in (ANDROID, WIN3, V4)}


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def derive(profile: Profile, password: bytes, salt: bytes) -> bytes:
    """The AES key SQLCipher derives from ``password`` for a file with this salt."""
    return hashlib.pbkdf2_hmac(profile.kdf_hash, password, salt, profile.kdf_iter, 32)


def _mac_key(profile: Profile, enc_key: bytes, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac(profile.hmac_hash, enc_key, bytes(b ^ 0x3A for b in salt), 2, 32)


def _decrypt_page1(profile: Profile, page: bytes, enc_key: bytes) -> bytes:
    iv = page[profile.page_size - profile.reserve: profile.page_size - profile.reserve + 16]
    d = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).decryptor()
    return d.update(page[16: profile.page_size - profile.reserve]) + d.finalize()


@dataclass(frozen=True)
class Opened:
    """What :func:`check` learnt: the derived key, the salt, the page count in the header, and
    what is wrong with the ``-wal`` (the run goes on without what SQLite cannot use of it)."""

    enc_key: bytes
    salt: bytes
    pages_in_header: int
    warnings: tuple[str, ...] = ()


@dataclass
class WalInfo:
    committed_pages: set[int]  # pages of the frames SQLite will use (up to the last valid commit)
    db_pages: int | None  # the database size in pages after that commit
    problem: str | None  # frames of the current WAL that SQLite will ignore, and why


_WAL_MAGIC = (0x377F0682, 0x377F0683)


def _wal_sum(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def wal_info(wal: Path, page_size: int) -> WalInfo | None:
    """Read a ``-wal`` file's frame headers and checksums (both plaintext under SQLCipher) the way
    SQLite will: which committed frames it will apply, and whether frames of the current WAL
    are damaged or cut off (then the newest messages would be missing without a word)."""
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        return WalInfo(set(), None, f"cannot be read ({e.strerror or e.__class__.__name__})")
    if len(data) <= 32:
        return WalInfo(set(), None, None if not data else f"{len(data)} bytes: not even a WAL header")
    magic, _version, psize, _seq, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:32])
    frames = (len(data) - 32) // (24 + page_size)
    if magic not in _WAL_MAGIC or psize != page_size:
        return WalInfo(set(), None, f"damaged header (magic {magic:#x}, page size {psize}): all {frames} frames ignored")
    big = magic & 1
    s0, s1 = _wal_sum(data[:24], 0, 0, big)
    if (s0, s1) != (c1, c2):
        return WalInfo(set(), None, f"header checksum mismatch: all {frames} frames ignored")
    pages: set[int] = set()
    pending: set[int] = set()
    committed, db_pages, valid, problem = set(), None, 0, None
    pos = 32
    while pos + 24 + page_size <= len(data):
        pgno, commit, f1, f2, k1, k2 = struct.unpack(">6I", data[pos: pos + 24])
        if (f1, f2) != (salt1, salt2):
            break  # a frame of an earlier WAL generation: SQLite ignores it, rightly
        s0, s1 = _wal_sum(data[pos: pos + 8] + data[pos + 24: pos + 24 + page_size], s0, s1, big)
        if (s0, s1) != (k1, k2):
            problem = f"frame {valid + 1} of {frames} fails its checksum: it and the {frames - valid - 1} after it are ignored"
            break
        valid += 1
        pending.add(pgno)
        if commit:
            pages |= pending
            committed, db_pages, pending = set(pages), commit, set()
        pos += 24 + page_size
    else:
        rest = len(data) - pos
        if rest:
            problem = f"ends with an incomplete frame ({rest} bytes): cut short while being copied or written"
    if problem is None and pending:
        problem = (f"its last {len(pending)} page(s) belong to no committed transaction (a write in progress when "
                   "copied, or a copy cut short): they are ignored")
    return WalInfo(committed, db_pages, problem)


def check(path: Path, profile: Profile, password: bytes) -> Opened:
    """Whether ``path`` is a whole database of this profile that ``password`` opens.

    Raises :class:`WeChatDbError` naming the file: missing, empty, plain SQLite, a size that
    is no whole number of pages, page 1 not opened by the key, or fewer pages than the header
    says (truncated; pages still in the ``-wal`` count)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            page = f.read(profile.page_size)
    except FileNotFoundError:
        raise WeChatDbError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeChatDbError(f"{path}: is a folder, not a database file") from None
    except OSError as e:
        raise WeChatDbError(f"{path}: cannot read ({e.strerror or e.__class__.__name__})") from None
    if size == 0:
        raise WeChatDbError(f"{path}: empty file")
    if page.startswith(SQLITE_MAGIC):
        raise WeChatDbError(f"{path}: a plain (unencrypted) SQLite file, not an encrypted WeChat database; "
                            "give the database as it is on the device")
    if len(page) < profile.page_size:
        raise WeChatDbError(f"{path}: {size} bytes, less than one {profile.page_size}-byte page of a "
                            f"{profile.name} database (truncated, or another format)")
    salt = page[:16]
    enc_key = derive(profile, password, salt)
    if profile.hmac_hash:
        end = profile.page_size - profile.reserve + 16
        want = hmac.new(_mac_key(profile, enc_key, salt), page[16:end] + struct.pack("<I", 1),
                        profile.hmac_hash).digest()
        if not hmac.compare_digest(want, page[end: end + profile.hmac_size]):
            raise WeChatDbError(f"{path}: the key does not open this database (page 1 fails its HMAC: "
                                f"wrong key, or not {_article(profile.name)} database)")
    plain = _decrypt_page1(profile, page, enc_key)
    # Offsets 16.. of the SQLite header: page size (big-endian; 1 means 65536), versions,
    # reserved bytes, and the fixed payload fractions 64/32/32.
    page_size = struct.unpack(">H", plain[0:2])[0]
    if (page_size != profile.page_size or plain[2] not in (1, 2) or plain[3] not in (1, 2)
            or plain[5:8] != b"\x40\x20\x20"):
        if profile.hmac_hash:  # the HMAC matched, so the key is right but the contents are not SQLite
            raise WeChatDbError(f"{path}: decrypts, but not to an SQLite database of the {profile.name} layout")
        raise WeChatDbError(f"{path}: the key does not open this database (wrong key, or not "
                            f"{_article(profile.name)} database)")
    if plain[4] != profile.reserve:
        raise WeChatDbError(f"{path}: reserve of {plain[4]} bytes per page, expected {profile.reserve} for "
                            f"{profile.name} (another WeChat generation? try another --format)")
    pages_in_header = struct.unpack(">I", plain[12:16])[0]
    change_counter, valid_for = struct.unpack(">I", plain[8:12])[0], struct.unpack(">I", plain[76:80])[0]
    if size % profile.page_size:
        raise WeChatDbError(f"{path}: {size} bytes is not a whole number of {profile.page_size}-byte pages "
                            "(truncated or damaged copy)")
    wal = wal_info(Path(str(path) + "-wal"), profile.page_size)
    have = size // profile.page_size
    need = wal.db_pages if wal and wal.db_pages else pages_in_header if change_counter == valid_for else have
    missing = [n for n in range(have + 1, need + 1) if not (wal and n in wal.committed_pages)]
    if missing:
        raise WeChatDbError(f"{path}: truncated: the database has {need} pages, the file {have}"
                            + (f" and its -wal holds not all of the rest ({len(missing)} missing)" if wal else ""))
    warnings = (f"{path}-wal: {wal.problem}; the newest messages may be missing: take the copy again",) \
        if wal and wal.problem else ()
    return Opened(enc_key, salt, pages_in_header, warnings)


TMP_PREFIX = "wxarchive-wechat-"


def _sweep(base: Path) -> None:
    """Remove the private copies of readers that died without closing (kill -9): each folder
    names its process; only folders of this user whose process is gone are removed."""
    try:
        entries = list(base.glob(TMP_PREFIX + "*"))
    except OSError:
        return
    for d in entries:
        try:
            if d.stat().st_uid != os.getuid():
                continue
            pid = int((d / "pid").read_text())
        except (OSError, ValueError):
            continue
        if not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _private_dir() -> Path:
    base = Path(os.environ.get("WXARCHIVE_TMP") or tempfile.gettempdir())
    _sweep(base)
    d = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=base))  # mode 0700
    (d / "pid").write_text(str(os.getpid()))
    return d


@contextmanager
def open_db(path: Path, profile: Profile, password: bytes) -> Iterator:
    """A read-only ``sqlcipher3`` connection on an encrypted copy of ``path`` (and its WAL).

    Text columns come back as ``bytes`` (WeChat content is not always valid UTF-8: the
    readers decide how to decode)."""
    opened = check(path, profile, password)
    try:
        import sqlcipher3
    except ImportError:  # pragma: no cover - the wheel is a dependency
        raise WeChatDbError("reading WeChat databases needs the sqlcipher3 wheel (pip install sqlcipher3-binary)") from None
    tmp = _private_dir()
    conn = None
    try:
        copy = tmp / "db"
        try:
            shutil.copyfile(path, copy)
            wal = Path(str(path) + "-wal")
            if wal.exists():
                shutil.copyfile(wal, tmp / "db-wal")
        except OSError as e:
            raise WeChatDbError(f"{path}: cannot copy for reading ({e.strerror or e.__class__.__name__})") from None
        conn = sqlcipher3.connect(str(copy), check_same_thread=False)
        conn.execute("PRAGMA cipher_log_level = NONE")  # its errors reach the operator as ours, one line each
        conn.text_factory = bytes
        conn.execute(f"PRAGMA key = \"x'{opened.enc_key.hex()}{opened.salt.hex()}'\"")
        conn.execute(f"PRAGMA cipher_compatibility = {profile.compatibility}")
        conn.execute(f"PRAGMA cipher_page_size = {profile.page_size}")
        conn.execute("PRAGMA temp_store = MEMORY")
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher3.DatabaseError as e:
            raise WeChatDbError(f"{path}: cannot be read: {e} (the key is right: damaged or incomplete copy?)") from None
        conn.execute("PRAGMA query_only = 1")
        yield ReadConnection(conn, path, opened.warnings)
    finally:
        if conn is not None:
            conn.close()
        shutil.rmtree(tmp, ignore_errors=True)


class ReadConnection:
    """A read-only connection whose failures (a damaged page, a missing table) are
    :class:`WeChatDbError` naming the database file, wherever in a run they happen."""

    def __init__(self, conn, path: Path, warnings: tuple[str, ...] = ()):
        import sqlcipher3

        self._conn, self.path, self._errors, self.warnings = conn, path, (sqlcipher3.Error,), list(warnings)

    @property
    def text_factory(self):
        return self._conn.text_factory

    @text_factory.setter
    def text_factory(self, f) -> None:
        self._conn.text_factory = f

    def _error(self, e: BaseException) -> WeChatDbError:
        return WeChatDbError(f"{self.path}: cannot be read: {e} (damaged or incomplete copy?)")

    def execute(self, sql: str, params: tuple = ()) -> "Rows":
        try:
            return Rows(self._conn.execute(sql, params), self)
        except self._errors as e:
            raise self._error(e) from None

    def close(self) -> None:
        self._conn.close()


class Rows:
    def __init__(self, cur, conn: ReadConnection):
        self._cur, self._conn = cur, conn

    @property
    def description(self):
        return self._cur.description

    def __iter__(self):
        try:
            yield from self._cur
        except self._conn._errors as e:
            raise self._conn._error(e) from None

    def fetchone(self):
        try:
            return self._cur.fetchone()
        except self._conn._errors as e:
            raise self._conn._error(e) from None

    def fetchall(self):
        try:
            return self._cur.fetchall()
        except self._conn._errors as e:
            raise self._conn._error(e) from None


def database_error_types() -> tuple[type[BaseException], ...]:
    """The exception types a read on an open connection can raise (for the readers to wrap)."""
    import sqlcipher3

    return (sqlcipher3.DatabaseError,)


def quote(name: str) -> str:
    """An identifier for SQL text, whatever characters the database gave it."""
    return '"' + name.replace('"', '""') + '"'


def has_table(conn, table: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone() is not None


def columns(conn, table: str) -> set[str]:
    return {r[1] if isinstance(r[1], str) else bytes(r[1]).decode("utf-8", "backslashreplace")
            for r in conn.execute(f"PRAGMA table_info({quote(table)})")}


def select_list(cols: set[str], wanted: tuple[str, ...]) -> str:
    """The wanted columns, NULL for those this version's table lacks."""
    return ", ".join(quote(c) if c in cols else "NULL" for c in wanted)


def schema_error(path, conn, table: str, missing: set[str]) -> WeChatDbError:
    ver = conn.execute("PRAGMA user_version").fetchone()[0]
    return WeChatDbError(f"{path}: table {table} lacks {', '.join(sorted(missing))} (schema version {ver}): "
                         "written by a WeChat version this importer does not know")


class OpenDatabases:
    """The databases one reader has open (private encrypted copies), closed and removed together.
    Readers subclass it; ``__init__`` failures must call ``close()`` before raising."""

    profile: Profile
    image_key: bytes | None = None  # 4.x V2 image .dat AES key (the account's own), when given

    def __init__(self) -> None:
        self._stack = ExitStack()
        self.warnings: list[str] = []  # problems that do not stop the run, said to the operator and journaled

    def open(self, f: Path, key: bytes):
        from wxarchive.capture.wechat.records import text_factory

        conn = self._stack.enter_context(open_db(f, self.profile, key))
        conn.text_factory = text_factory
        self.warnings.extend(conn.warnings)
        return conn

    def close(self) -> None:
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
