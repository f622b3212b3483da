"""A wire-faithful fake of the three WeCom endpoints the official archive SDK calls.

The real ``libWeWorkFinanceSdk_C`` reaches it through its ``proxy`` argument: a local
TLS-terminating CONNECT proxy (:mod:`wxarchive.simulate.proxy`) presents a self-signed
certificate for ``qyapi.weixin.qq.com`` and hands the tunnel to the handler below, which
serves a tenant directory as described in ``docs/simulator.md``. Wire details follow
the fact sheet ``wecom-archive-api.md`` §1.5 and §2.3:

* ``GET /cgi-bin/gettoken?corpid=&corpsecret=`` — corp id and the tenant's ``secret``
  file are checked (40013 / 40001 with HTTP 200 otherwise; the SDK turns both into
  rc 10001); a random token with ``expires_in`` 7200 is issued.
* ``POST /cgi-bin/message/getchatdata?access_token=`` — body
  ``{"seq","limit","version","encrypt_sign"}``; unknown, expired or invalidated tokens
  get 42001, a wrong ``encrypt_sign`` 40001; the answer holds the records with
  seq **strictly greater** than ``seq``, at most ``limit``, verbatim from chatdata.jsonl.
* ``POST /cgi-bin/message/getchatmediadata?access_token=`` — body
  ``{"fileid","authkey","version"}`` plus a ``Range: bytes=a-b`` header; the answer is
  ``{"errcode":0,"errmsg":"ok","content":"<base64 of that ciphertext range>"}`` with the
  response header spelled exactly ``CONTENT-RANGE: BYTES a-b/total`` (the SDK matches it
  case-sensitively). Expired media gets 301048 (SDK rc 10010); an unknown fileid or a
  wrong authkey gets 40007 (SDK rc 10002).

Nothing here logs the secret, tokens, fileids or request bodies.

Fault injection
---------------
A :class:`FaultPlan` (built directly or by :func:`parse_fault_spec`) injects faults by
the N-th call (1-based, counting every request that reached the endpoint, faulted or
not) of an endpoint. Endpoints are ``token`` (gettoken), ``chat`` (getchatdata) and
``media`` (getchatmediadata, all files together). Spec syntax::

    spec    := clause (";" clause)*          blanks around tokens are ignored
    clause  := ENDPOINT "500"  "=" calls     answer HTTP 500              (SDK: 10001)
             | ENDPOINT "drop" "=" calls     close the connection, no reply (SDK: 10001)
             | ENDPOINT "slow" "=" timed     sleep SECONDS, then answer normally
             | ENDPOINT "err"  "=" coded     HTTP 200 with {"errcode": CODE, ...}
             | "tokenexpire"  "=" calls      at these chat calls, invalidate every token
                                             issued so far: 42001 until a new gettoken
             | "mediacorrupt" "=" target ("," target)*
                                             flip a byte of the first chunk of that file,
                                             the first time it is served only
             | "mediaexpired" "=" fileid ("," fileid)*
                                             serve 301048 for that file    (SDK: 10010)
    ENDPOINT := "token" | "chat" | "media"
    calls   := call ("," call)*              call := N | N "-" M  (inclusive range)
    timed   := call ":" SECONDS ("," call ":" SECONDS)*
    coded   := call ":" CODE    ("," call ":" CODE)*
    target  := fileid | "first"              "first": whichever file is fetched first

Example: ``chat500=2,5;chatdrop=3;chatslow=4:2.5;chaterr=6:301042;tokenexpire=7;
media500=1;mediacorrupt=first;mediaexpired=f00d``. Repeated clauses merge.

Useful error codes for ``err``: 301042 (trusted-IP mismatch; on chat it comes back
with rc 0, on media the SDK maps it to 10009), 42001 (token expired, without actually
invalidating the token), 40001/40013 on ``token`` (gettoken failure → 10001).

Corrupting a chunk XORs its first byte, which garbles only the first 16-byte AES-ECB
block of plaintext: the SDK returns rc 0 with wrong bytes (P10). For a file under
16 bytes the first block is also the padding block, so the SDK usually reports 10006.
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
import mmap
import re
import secrets
import socket
import ssl
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

from wxarchive.simulate.proxy import (
    TunnelProxy,
    make_certificate,
    require_loopback,
    server_tls_context,
)

log = logging.getLogger("wxarchive.simulate")

ENDPOINTS = ("token", "chat", "media")
TOKEN_LIFETIME_S = 7200
MAX_LIMIT = 1000
_MASK64 = (1 << 64) - 1
_STREAM_PIECE = 256 * 1024
_MAX_BODY = 1 << 20


# --------------------------------------------------------------------------- faults


class FaultSpecError(ValueError):
    """A fault spec string that does not follow the documented syntax."""


@dataclass
class EndpointFaults:
    """Faults of one endpoint, keyed by its 1-based call number."""

    http500: frozenset[int] = frozenset()
    drop: frozenset[int] = frozenset()
    slow: Mapping[int, float] = field(default_factory=dict)
    errcode: Mapping[int, int] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.http500 or self.drop or self.slow or self.errcode)


@dataclass
class FaultPlan:
    """Every fault the simulator injects; the default plan injects none."""

    token: EndpointFaults = field(default_factory=EndpointFaults)
    chat: EndpointFaults = field(default_factory=EndpointFaults)
    media: EndpointFaults = field(default_factory=EndpointFaults)
    token_expire: frozenset[int] = frozenset()
    media_corrupt: frozenset[str] = frozenset()
    media_corrupt_first: bool = False
    media_expired: frozenset[str] = frozenset()

    def endpoint(self, name: str) -> EndpointFaults:
        """The per-call faults of endpoint ``token``, ``chat`` or ``media``."""
        return {"token": self.token, "chat": self.chat, "media": self.media}[name]

    def is_empty(self) -> bool:
        return (
            all(self.endpoint(e).is_empty() for e in ENDPOINTS)
            and not self.token_expire
            and not self.media_corrupt
            and not self.media_corrupt_first
            and not self.media_expired
        )

    def to_spec(self) -> str:
        """The spec string that parses back to this plan (for the CLI and for logs)."""
        clauses: list[str] = []
        for name in ENDPOINTS:
            ep = self.endpoint(name)
            if ep.http500:
                clauses.append(f"{name}500={_join_calls(ep.http500)}")
            if ep.drop:
                clauses.append(f"{name}drop={_join_calls(ep.drop)}")
            if ep.slow:
                clauses.append(f"{name}slow=" + ",".join(f"{n}:{s!r}" for n, s in sorted(ep.slow.items())))
            if ep.errcode:
                clauses.append(f"{name}err=" + ",".join(f"{n}:{c}" for n, c in sorted(ep.errcode.items())))
        if self.token_expire:
            clauses.append(f"tokenexpire={_join_calls(self.token_expire)}")
        targets = sorted(self.media_corrupt) + (["first"] if self.media_corrupt_first else [])
        if targets:
            clauses.append("mediacorrupt=" + ",".join(targets))
        if self.media_expired:
            clauses.append("mediaexpired=" + ",".join(sorted(self.media_expired)))
        return ";".join(clauses)


def _join_calls(calls: frozenset[int]) -> str:
    return ",".join(str(n) for n in sorted(calls))


def _parse_calls(text: str) -> frozenset[int]:
    """``2,5,7-9`` → {2, 5, 7, 8, 9}; call numbers are 1-based."""
    calls: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo_s, dash, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if dash else lo
        except ValueError as exc:
            raise FaultSpecError(f"bad call number or range {part!r}") from exc
        if lo < 1 or hi < lo:
            raise FaultSpecError(f"call numbers are 1-based ranges N-M with N<=M, got {part!r}")
        if hi - lo > 1_000_000:
            raise FaultSpecError(f"call range {part!r} is too large")
        calls.update(range(lo, hi + 1))
    if not calls:
        raise FaultSpecError("empty call list")
    return frozenset(calls)


def _parse_keyed(text: str, convert: type[int] | type[float]) -> dict[int, float | int]:
    """``4:2.5,6-7:1`` → {4: 2.5, 6: 1, 7: 1}."""
    out: dict[int, float | int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        calls_s, colon, value_s = part.rpartition(":")
        if not colon:
            raise FaultSpecError(f"expected CALL:VALUE, got {part!r}")
        try:
            value = convert(value_s.strip())
        except ValueError as exc:
            raise FaultSpecError(f"bad value in {part!r}") from exc
        if value < 0:
            raise FaultSpecError(f"negative value in {part!r}")
        for n in _parse_calls(calls_s):
            out[n] = value
    if not out:
        raise FaultSpecError("empty CALL:VALUE list")
    return out


def _parse_names(text: str) -> frozenset[str]:
    names = frozenset(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise FaultSpecError("empty file id list")
    return names


_CLAUSE = re.compile(r"^(token|chat|media)(500|drop|slow|err)$")


def parse_fault_spec(spec: str) -> FaultPlan:
    """Parse the CLI fault syntax documented in this module's docstring."""
    plan = FaultPlan()
    for clause in spec.split(";"):
        clause = clause.strip()
        if not clause:
            continue
        key, eq, value = clause.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not value:
            raise FaultSpecError(f"expected KEY=VALUE, got {clause!r}")
        plan = _apply_clause(plan, key, value)
    return plan


def _apply_clause(plan: FaultPlan, key: str, value: str) -> FaultPlan:
    """Merge one parsed clause into the plan (plans are treated as values)."""
    if key == "tokenexpire":
        return replace(plan, token_expire=plan.token_expire | _parse_calls(value))
    if key == "mediaexpired":
        return replace(plan, media_expired=plan.media_expired | _parse_names(value))
    if key == "mediacorrupt":
        names = _parse_names(value)
        return replace(
            plan,
            media_corrupt=plan.media_corrupt | (names - {"first"}),
            media_corrupt_first=plan.media_corrupt_first or "first" in names,
        )
    m = _CLAUSE.match(key)
    if not m:
        raise FaultSpecError(f"unknown fault {key!r}")
    endpoint, kind = m.groups()
    ep = plan.endpoint(endpoint)
    if kind == "500":
        ep = replace(ep, http500=ep.http500 | _parse_calls(value))
    elif kind == "drop":
        ep = replace(ep, drop=ep.drop | _parse_calls(value))
    elif kind == "slow":
        ep = replace(ep, slow={**ep.slow, **_parse_keyed(value, float)})
    else:
        ep = replace(ep, errcode={**ep.errcode, **_parse_keyed(value, int)})
    return replace(plan, **{endpoint: ep})


# --------------------------------------------------------------------------- tenant data


def encrypt_sign(token: str) -> str:
    """The SDK's request signature: decimal lo32(h) XOR hi32(h), h = h*1313 + byte (u64)."""
    h = 0
    for byte in token.encode("utf-8"):
        h = (h * 1313 + byte) & _MASK64
    return str((h & 0xFFFFFFFF) ^ (h >> 32))


_SEQ_RE = re.compile(rb'"seq"\s*:\s*(\d+)')


class ChatLog:
    """chatdata.jsonl, memory-mapped, with the byte span of every record indexed by seq.

    Indexing once at start-up keeps each getchatdata call at a bisect plus a copy of a
    contiguous run of lines, so the server never becomes the bottleneck of a pull.
    """

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 (kept open for the mmap's lifetime)
        size = path.stat().st_size
        self._data: mmap.mmap | bytes = (
            mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        )
        self.seqs = array("Q")
        self._starts = array("Q")
        self._ends = array("Q")
        try:
            self._index()
        except BaseException:
            self.close()
            raise

    def _index(self) -> None:
        """Record (seq, start, end) of every non-blank line; ends exclude the newline."""
        rows: list[tuple[int, int, int]] = []
        pos = 0
        self._file.seek(0)
        for raw in self._file:
            line = raw.strip()
            if line:
                start = pos + len(raw) - len(raw.lstrip())
                rows.append((self._seq_of(line), start, start + len(line)))
            pos += len(raw)
        if any(rows[i][0] >= rows[i + 1][0] for i in range(len(rows) - 1)):
            rows.sort()  # the contract says ascending; tolerate a sloppy generator
        for seq, start, end in rows:
            self.seqs.append(seq)
            self._starts.append(start)
            self._ends.append(end)

    @staticmethod
    def _seq_of(line: bytes) -> int:
        m = _SEQ_RE.search(line)
        if m:
            return int(m.group(1))
        return int(json.loads(line)["seq"])

    def __len__(self) -> int:
        return len(self.seqs)

    def select(self, after_seq: int, limit: int) -> range:
        """Indices of the records with seq > after_seq, at most limit of them."""
        lo = bisect.bisect_right(self.seqs, after_seq)
        return range(lo, min(lo + limit, len(self.seqs)))

    def records_length(self, rows: range) -> int:
        """Bytes of the records in rows joined by commas."""
        if not rows:
            return 0
        total = sum(self._ends[i] - self._starts[i] for i in rows)
        return total + len(rows) - 1

    def iter_records(self, rows: range) -> Iterator[bytes]:
        """The records in rows joined by commas, in pieces of about 256 KiB."""
        buf = bytearray()
        for i in rows:
            if i != rows.start:
                buf += b","
            buf += self._data[self._starts[i] : self._ends[i]]
            if len(buf) >= _STREAM_PIECE:
                yield bytes(buf)
                buf.clear()
        if buf:
            yield bytes(buf)

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            self._data.close()
        self._file.close()


@dataclass(frozen=True)
class MediaItem:
    """One entry of media/index.jsonl."""

    fileid: str
    authkey: str
    path: Path
    expired: bool


def load_media_index(tenant_dir: Path) -> dict[str, MediaItem]:
    """media/index.jsonl as a fileid → item map (empty when the tenant has no media)."""
    index = tenant_dir / "media" / "index.jsonl"
    items: dict[str, MediaItem] = {}
    if not index.exists():
        return items
    with open(index, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            fileid = str(row["fileid"])
            rel = row.get("path") or f"media/{fileid}.enc"
            items[fileid] = MediaItem(
                fileid=fileid,
                authkey=str(row.get("authkey", "")),
                path=tenant_dir / rel,
                expired=bool(row.get("expired", False)),
            )
    return items


class TokenStore:
    """Access tokens the fake has issued, with expiry and server-side invalidation."""

    def __init__(self, lifetime_s: int = TOKEN_LIFETIME_S) -> None:
        self._lifetime = lifetime_s
        self._expiry: dict[str, float] = {}
        self._signs: dict[str, str] = {}
        self._lock = threading.Lock()

    def issue(self) -> str:
        token = secrets.token_urlsafe(96)
        sign = encrypt_sign(token)
        with self._lock:
            self._expiry[token] = time.monotonic() + self._lifetime
            self._signs[token] = sign
        return token

    def sign_of(self, token: str) -> str | None:
        """The expected encrypt_sign of a live token; None if unknown/expired/revoked."""
        with self._lock:
            expiry = self._expiry.get(token)
            if expiry is None:
                return None
            if time.monotonic() >= expiry:
                del self._expiry[token], self._signs[token]
                return None
            return self._signs[token]

    def invalidate_all(self) -> int:
        """Revoke every token issued so far (what a server-side 42001 storm looks like)."""
        with self._lock:
            n = len(self._expiry)
            self._expiry.clear()
            self._signs.clear()
        return n


# --------------------------------------------------------------------------- statistics


@dataclass
class ServerStats:
    """What the simulator has done, for tests and for the ``serve`` console."""

    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENDPOINTS, 0))
    tokens_issued: int = 0
    records_served: int = 0
    max_seq_served: int = 0
    chunks_served: int = 0
    media_bytes_served: int = 0
    tunnels: int = 0
    proxy_auth_failures: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)

    def copy(self) -> ServerStats:
        return replace(self, calls=dict(self.calls), faults=dict(self.faults), rejected=dict(self.rejected))


# --------------------------------------------------------------------------- replies


@dataclass
class Reply:
    """One HTTP answer, or an instruction to cut the connection without one."""

    status: int = 200
    parts: Iterator[bytes] | tuple[bytes, ...] = ()
    length: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False


def json_reply(obj: Mapping[str, object], status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Reply(status=status, parts=(body,), length=len(body), headers=headers)


def error_reply(code: int, message: str) -> Reply:
    """WeCom reports API errors as HTTP 200 with a JSON errcode, plus a lookup hint."""
    hint = f", more info at https://open.work.weixin.qq.com/devtool/query?e={code}"
    return json_reply({"errcode": code, "errmsg": message + hint})


def http500_reply() -> Reply:
    body = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
    return Reply(status=500, parts=(body,), length=len(body), headers=(("Content-Type", "text/html"),))


_ERRMSG = {
    40001: "invalid credential",
    40007: "invalid media_id",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40058: "invalid Request Parameter",
    42001: "access_token expired",
    47001: "data format error",
    301048: "mediadata expired",
}


def errmsg_for(code: int, endpoint: str, client_ip: str) -> str:
    """A realistic errmsg for an injected errcode."""
    if code == 301042:
        what = {"chat": "get chatdata", "media": "get mediadata"}.get(endpoint, "gettoken")
        return f"{what} whiteip not match, hint: [sim], from ip: {client_ip}"
    return _ERRMSG.get(code, "simulated error")


# --------------------------------------------------------------------------- the fake service


@dataclass
class Request:
    """The parts of an HTTP request the endpoints look at."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes
    range_header: str | None
    client_ip: str


def parse_query(raw: str) -> dict[str, str]:
    """Split a query string without '+' → ' ' rewriting: the SDK does not URL-encode."""
    out: dict[str, str] = {}
    for pair in raw.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            out.setdefault(key, value)
    return out


_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d+)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class WeComService:
    """The three endpoints over one tenant directory, with fault injection and stats."""

    def __init__(self, tenant_dir: Path, faults: FaultPlan | None = None) -> None:
        tenant_dir = Path(tenant_dir)
        meta = json.loads((tenant_dir / "tenant.json").read_text(encoding="utf-8"))
        self.corp_id = str(meta["corp_id"])
        self._secret = (tenant_dir / "secret").read_text(encoding="utf-8").strip()
        self.chatlog = ChatLog(tenant_dir / "chatdata.jsonl")
        self.media = load_media_index(tenant_dir)
        self.tokens = TokenStore()
        self.faults = faults or FaultPlan()
        self._stats = ServerStats()
        self._lock = threading.Lock()
        self._corrupted: set[str] = set()
        self._first_corrupt_taken = False
        self.closed = False
        from wxarchive.simulate.directory_api import DirectoryApi

        self._directory = DirectoryApi(tenant_dir, json_reply, error_reply).routes()

    # ---- bookkeeping

    def stats(self) -> ServerStats:
        with self._lock:
            return self._stats.copy()

    def count(self, name: str) -> None:
        """Proxy-level events (tunnels, auth failures) arrive here."""
        with self._lock:
            setattr(self._stats, name, getattr(self._stats, name) + 1)

    def _bump(self, bucket: str, key: str) -> None:
        with self._lock:
            counts: dict[str, int] = getattr(self._stats, bucket)
            counts[key] = counts.get(key, 0) + 1

    def _next_call(self, endpoint: str) -> int:
        with self._lock:
            self._stats.calls[endpoint] += 1
            return self._stats.calls[endpoint]

    # ---- dispatch

    def handle(self, req: Request) -> Reply:
        """Route one request; unknown paths get 404 like any web server."""
        route = {
            ("GET", "/cgi-bin/gettoken"): ("token", self._gettoken),
            ("POST", "/cgi-bin/message/getchatdata"): ("chat", self._getchatdata),
            ("POST", "/cgi-bin/message/getchatmediadata"): ("media", self._getmediadata),
        }.get((req.method, req.path))
        if self.closed:
            return Reply(drop=True)
        if route is None and (req.method, req.path) in self._directory:
            if self._token_sign(req) is None:
                return error_reply(42001, "access_token expired")
            return self._directory[(req.method, req.path)](req)
        if route is None:
            return Reply(status=404, parts=(b"not found",), length=9)
        endpoint, func = route
        n = self._next_call(endpoint)
        if endpoint == "chat" and n in self.faults.token_expire:
            self.tokens.invalidate_all()
            self._bump("faults", "tokenexpire")
        injected = self._injected(endpoint, n, req.client_ip)
        return injected if injected is not None else func(req)

    def _injected(self, endpoint: str, n: int, client_ip: str) -> Reply | None:
        """Apply the per-call faults of call n; slow faults sleep and fall through."""
        ep = self.faults.endpoint(endpoint)
        delay = ep.slow.get(n)
        if delay:
            self._bump("faults", f"{endpoint}slow")
            time.sleep(delay)
            if self.closed:  # the simulator shut down while this call was held back
                return Reply(drop=True)
        if n in ep.drop:
            self._bump("faults", f"{endpoint}drop")
            return Reply(drop=True)
        if n in ep.http500:
            self._bump("faults", f"{endpoint}500")
            return http500_reply()
        code = ep.errcode.get(n)
        if code is not None:
            self._bump("faults", f"{endpoint}err")
            return json_reply({"errcode": code, "errmsg": errmsg_for(code, endpoint, client_ip)})
        return None

    # ---- gettoken

    def _gettoken(self, req: Request) -> Reply:
        corpid = req.query.get("corpid", "")
        secret = req.query.get("corpsecret", "")
        if corpid != self.corp_id and unquote(corpid) != self.corp_id:
            self._bump("rejected", "corpid")
            return error_reply(40013, "invalid corpid")
        if not (_same(secret, self._secret) or _same(unquote(secret), self._secret)):
            self._bump("rejected", "secret")
            return error_reply(40001, "invalid credential")
        token = self.tokens.issue()
        with self._lock:
            self._stats.tokens_issued += 1
        return json_reply({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": TOKEN_LIFETIME_S})

    def _token_sign(self, req: Request) -> str | None:
        sign = self.tokens.sign_of(req.query.get("access_token", ""))
        if sign is None:
            self._bump("rejected", "token")
        return sign

    @staticmethod
    def _json_body(req: Request) -> dict[str, object] | None:
        try:
            obj = json.loads(req.body)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None

    # ---- getchatdata

    def _getchatdata(self, req: Request) -> Reply:
        sign = self._token_sign(req)
        if sign is None:
            return error_reply(42001, "access_token expired")
        body = self._json_body(req)
        if body is None:
            self._bump("rejected", "body")
            return error_reply(47001, "data format error")
        if str(body.get("encrypt_sign", "")) != sign:
            self._bump("rejected", "encrypt_sign")
            return error_reply(40001, "invalid credential, encrypt_sign mismatch")
        seq, limit = body.get("seq"), body.get("limit")
        if not _is_int(seq) or not _is_int(limit) or seq < 0 or not 1 <= limit <= MAX_LIMIT:
            self._bump("rejected", "params")
            return error_reply(40058, "invalid Request Parameter, seq/limit")
        return self._chat_reply(seq, limit)

    def _chat_reply(self, seq: int, limit: int) -> Reply:
        """Stream the selected records inside the JSON envelope with an exact length."""
        rows = self.chatlog.select(seq, limit)
        head = b'{"errcode":0,"errmsg":"ok","chatdata":['
        tail = b"]}"
        if rows:
            with self._lock:
                self._stats.records_served += len(rows)
                self._stats.max_seq_served = max(self._stats.max_seq_served, self.chatlog.seqs[rows[-1]])

        def parts() -> Iterator[bytes]:
            yield head
            yield from self.chatlog.iter_records(rows)
            yield tail

        length = len(head) + self.chatlog.records_length(rows) + len(tail)
        return Reply(parts=parts(), length=length, headers=(("Content-Type", "application/json; charset=UTF-8"),))

    # ---- getchatmediadata

    def _getmediadata(self, req: Request) -> Reply:
        if self._token_sign(req) is None:
            return error_reply(42001, "access_token expired")
        body = self._json_body(req)
        if body is None:
            self._bump("rejected", "body")
            return error_reply(47001, "data format error")
        item = self.media.get(str(body.get("fileid", "")))
        if item is None or not _same(str(body.get("authkey", "")), item.authkey):
            self._bump("rejected", "media")
            return error_reply(40007, "invalid media_id")
        if item.expired or item.fileid in self.faults.media_expired:
            return error_reply(301048, "mediadata expired")
        return self._media_chunk(item, req.range_header)

    def _media_chunk(self, item: MediaItem, range_header: str | None) -> Reply:
        """Serve one ciphertext byte range as base64 with the SDK's exact header spelling."""
        total = item.path.stat().st_size
        start, end = 0, total - 1
        if range_header is not None:
            m = _RANGE_RE.match(range_header)
            if not m:
                return Reply(status=416, parts=(b"bad range",), length=9)
            start = int(m.group(1))
            end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
        if start >= total or end < start:
            return Reply(status=416, parts=(b"range not satisfiable",), length=21, headers=(("CONTENT-RANGE", f"BYTES */{total}"),))
        with open(item.path, "rb") as f:
            f.seek(start)
            chunk = f.read(end - start + 1)
        if start == 0 and self._should_corrupt(item.fileid):
            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
        with self._lock:
            self._stats.chunks_served += 1
            self._stats.media_bytes_served += len(chunk)
        content = base64.b64encode(chunk).decode("ascii")
        return json_reply(
            {"errcode": 0, "errmsg": "ok", "content": content},
            headers=(("CONTENT-RANGE", f"BYTES {start}-{end}/{total}"),),
        )

    def _should_corrupt(self, fileid: str) -> bool:
        """True exactly once per targeted file: the first time its first chunk is served."""
        with self._lock:
            if fileid in self._corrupted:
                return False
            targeted = fileid in self.faults.media_corrupt
            if not targeted and self.faults.media_corrupt_first and not self._first_corrupt_taken:
                self._first_corrupt_taken = targeted = True
            if targeted:
                self._corrupted.add(fileid)
                counts = self._stats.faults
                counts["mediacorrupt"] = counts.get("mediacorrupt", 0) + 1
            return targeted

    def close(self) -> None:
        """Refuse further requests, then release chatdata.jsonl."""
        self.closed = True
        self.chatlog.close()


def _same(given: str, expected: str) -> bool:
    """Constant-time string equality that also copes with non-ASCII input."""
    return secrets.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- HTTP layer


class _WeComHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive) front of WeComService for one decrypted tunnel."""

    protocol_version = "HTTP/1.1"
    server_version = "wxarchive-sim"
    timeout = 60
    server: WeComService  # type: ignore[assignment]  (the service stands in for a server)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silence the access log: query strings carry the secret and tokens."""

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.send_error(413)
            return
        body = self.rfile.read(length) if length else b""
        req = Request(
            method=method,
            path=split.path,
            query=parse_query(split.query),
            body=body,
            range_header=self.headers.get("Range"),
            client_ip=self.client_address[0],
        )
        self._send(self.server.handle(req))

    def _send(self, reply: Reply) -> None:
        if reply.drop:
            self.close_connection = True
            try:
                socket.socket.shutdown(self.connection, socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if not any(name.lower() == "content-type" for name, _ in reply.headers):
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(reply.length))
        self.end_headers()
        try:
            for part in reply.parts:
                self.wfile.write(part)
        except ValueError:  # chatdata.jsonl was unmapped: the simulator is closing
            if not self.server.closed:
                raise
            self.close_connection = True


# --------------------------------------------------------------------------- public API


class SimServer:
    """A running simulator: the CONNECT proxy in a background thread over one tenant."""

    def __init__(
        self,
        tenant_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        proxy_auth: str | None = None,
    ) -> None:
        require_loopback(host)
        self.service = WeComService(Path(tenant_dir), faults)
        self.cert_pem, key_pem = make_certificate()
        try:
            self._proxy = TunnelProxy(
                (host, port),
                server_tls_context(self.cert_pem, key_pem),
                self._serve_tunnel,
                proxy_auth=proxy_auth,
                counter=self.service.count,
            )
        except BaseException:
            self.service.close()
            raise
        self._closed = False
        self._thread = threading.Thread(
            target=self._proxy.serve_forever, kwargs={"poll_interval": 0.05}, name="wxarchive-sim", daemon=True
        )
        self._thread.start()

    def _serve_tunnel(self, tls: ssl.SSLSocket, client: tuple[str, int]) -> None:
        _WeComHandler(tls, client, self.service)  # type: ignore[arg-type]

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._proxy.server_address[:2]
        return str(host), int(port)

    @property
    def proxy_url(self) -> str:
        """What to pass as the SDK's ``proxy`` argument."""
        host, port = self.address
        return f"http://{host}:{port}"

    @property
    def stats(self) -> ServerStats:
        """A snapshot of the counters (safe to keep; later calls do not change it)."""
        return self.service.stats()

    @property
    def open_tunnels(self) -> int:
        return self._proxy.open_tunnels()

    def close(self) -> None:
        """Stop accepting, cut open tunnels and release the tenant files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._proxy.shutdown()
        self._proxy.close_tunnels()
        self._proxy.server_close()
        self._thread.join(timeout=5)
        self.service.close()

    def __enter__(self) -> SimServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve(
    tenant_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: FaultPlan | None = None,
    proxy_auth: str | None = None,
) -> SimServer:
    """Start the simulator in background threads and return at once."""
    return SimServer(tenant_dir, host=host, port=port, faults=faults, proxy_auth=proxy_auth)


def serve_forever(
    tenant_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: FaultPlan | None = None,
    proxy_auth: str | None = None,
    stop: threading.Event | None = None,
    announce: Callable[[str], None] | None = print,
) -> None:
    """Serve until Ctrl-C (or until ``stop`` is set); announce one line with the proxy URL.

    The line names the proxy and the corp id only: the secret, tokens and file ids
    never leave the process.
    """
    stop = stop or threading.Event()
    with serve(tenant_dir, host=host, port=port, faults=faults, proxy_auth=proxy_auth) as sim:
        # the certificate clients other than the SDK must trust (directory sync --ca-file)
        (Path(tenant_dir) / "simulator-ca.pem").write_bytes(sim.cert_pem)
        auth = " (proxy auth required)" if proxy_auth else ""
        faulted = "" if (faults is None or faults.is_empty()) else " with fault injection"
        line = (
            f"wxarchive simulator: corp {sim.service.corp_id}, {len(sim.service.chatlog)} records, "
            f"proxy {sim.proxy_url}{auth}{faulted}"
        )
        if announce is not None:
            announce(line)
        log.info("%s", line)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
