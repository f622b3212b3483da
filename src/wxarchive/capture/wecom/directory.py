"""The WeCom directory: who the archive's ids are, from the corp's HTTPS APIs.

``sync`` asks, for every participant and group the catalog knows of one source, the API
that describes it (``user/get`` + ``department/list`` for employees, ``externalcontact/get``
for external contacts, ``msgaudit/get_robot_info`` for robots, ``msgaudit/groupchat/get``
for groups, ``msgaudit/check_single_agree`` / ``check_room_agree`` for consent). Each answer
is journaled as it came (kind ``wecom.directory``) before the catalog reads it (``parse``),
so a rebuilt catalog has the same directory, and a later sync that finds a different name
or department adds history (the catalog keeps who was called what, when).

Since 2022 ``user/get`` no longer returns mobile numbers or e-mail addresses to new apps:
those come from an HR import (capture/hr.py). The secret (of an app with directory and
customer-contact access) is read from a file or the environment, never logged.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from wxarchive.model import mobile_digits, participant_kind

log = logging.getLogger(__name__)
API = "https://qyapi.weixin.qq.com"


class DirectoryError(Exception):
    """The directory APIs cannot be used (bad credentials, no network); names what failed."""


@dataclass
class DirectoryOptions:
    corp_id: str
    secret: str = field(repr=False)
    proxy: str = ""  # http://host:port, as for the SDK
    ca_pem: bytes | None = None  # also trust this certificate (the simulator's)
    timeout: float = 10.0
    base: str = API


@dataclass
class SyncResult:
    asked: int = 0
    answered: int = 0
    not_found: int = 0
    errors: list[str] = field(default_factory=list)


class Client:
    def __init__(self, opts: DirectoryOptions):
        self.opts = opts
        ctx = ssl.create_default_context()
        if opts.ca_pem:
            try:
                ctx.load_verify_locations(cadata=opts.ca_pem.decode("ascii", "replace"))
            except ssl.SSLError:
                raise DirectoryError("the CA file holds no PEM certificate") from None
        if opts.proxy:
            parts = urllib.parse.urlsplit(opts.proxy)
            if parts.scheme != "http" or not parts.hostname or any(c.isspace() for c in opts.proxy):
                raise DirectoryError(f"proxy {opts.proxy!r}: give http://HOST:PORT (an HTTP CONNECT proxy)")
            try:
                parts.port
            except ValueError:
                raise DirectoryError(f"proxy {opts.proxy!r}: the port is not a number from 1 to 65535") from None
        handlers: list[Any] = [urllib.request.HTTPSHandler(context=ctx)]
        if opts.proxy:
            handlers.append(urllib.request.ProxyHandler({"https": opts.proxy}))
        else:
            handlers.append(urllib.request.ProxyHandler({}))
        self.opener = urllib.request.build_opener(*handlers)
        self.token: str | None = None

    def _call(self, method: str, path: str, query: dict[str, str], body: dict[str, Any] | None) -> bytes:
        url = f"{self.opts.base}{path}?{urllib.parse.urlencode(query)}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with self.opener.open(req, timeout=self.opts.timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise DirectoryError(f"{path}: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: http.client.InvalidURL
            reason = getattr(e, "reason", e)
            raise DirectoryError(f"{path}: cannot reach {self.opts.base} ({reason})") from None

    def _token(self) -> str:
        if self.token is None:
            raw = self._call("GET", "/cgi-bin/gettoken", {"corpid": self.opts.corp_id, "corpsecret": self.opts.secret},
                             None)
            ans = _json(raw, "/cgi-bin/gettoken")
            if ans.get("errcode") != 0 or not ans.get("access_token"):
                raise DirectoryError(f"gettoken: errcode {ans.get('errcode')} ({ans.get('errmsg', '')[:80]}): "
                                     "check the corp id and the directory app's secret")
            self.token = str(ans["access_token"])
        return self.token

    def call(self, method: str, path: str, query: dict[str, str] | None = None,
             body: dict[str, Any] | None = None) -> bytes:
        """The raw answer (bytes, as journaled); a fresh token once if the old one expired."""
        for attempt in (1, 2):
            raw = self._call(method, path, {"access_token": self._token(), **(query or {})}, body)
            if _json(raw, path).get("errcode") in (40014, 42001) and attempt == 1:
                self.token = None
                continue
            return raw
        return raw


def _json(raw: bytes, path: str) -> dict[str, Any]:
    try:
        ans = json.loads(raw)
    except ValueError:
        raise DirectoryError(f"{path}: the answer is not JSON") from None
    if not isinstance(ans, dict):
        raise DirectoryError(f"{path}: the answer is not a JSON object")
    return ans


# ---- what the catalog reads from a journaled answer ------------------------------------------


def parse(meta: dict[str, Any], data: bytes, departments: dict[int, str] | None = None) -> list[tuple]:
    """Observations in one journaled answer: ("person", id, fields) / ("group", roomid, title)
    / ("consent", external_id, scope, status, changed_at_ms) / ("departments", {id: name})."""
    try:
        ans = json.loads(data)
    except ValueError:
        return []
    if not isinstance(ans, dict) or ans.get("errcode") not in (0, None):
        return []
    endpoint = meta.get("endpoint")
    if endpoint == "department/list":
        return [("departments", {int(d["id"]): str(d.get("name", "")) for d in ans.get("department", [])
                                 if isinstance(d, dict) and "id" in d})]
    if endpoint == "user/get":
        deps = departments or {}
        main = ans.get("main_department") or (ans.get("department") or [None])[0]
        return [("person", str(ans.get("userid") or meta["id"]), {
            "kind": "employee", "name": ans.get("name"), "alias": ans.get("alias") or None,
            "department": deps.get(main) if isinstance(main, int) else None,
            "position": ans.get("position") or None,
            "mobile": ans.get("mobile") or None, "mobile_digits": mobile_digits(ans.get("mobile")),
            "email": (ans.get("email") or "").lower() or None})]
    if endpoint == "externalcontact/get":
        c = ans.get("external_contact") or {}
        return [("person", str(c.get("external_userid") or meta["id"]), {
            "kind": "external", "name": c.get("name"), "organisation": c.get("corp_name") or None})]
    if endpoint == "msgaudit/get_robot_info":
        d = ans.get("data") or {}
        return [("person", str(d.get("robot_id") or meta["id"]), {"kind": "robot", "name": d.get("name")})]
    if endpoint == "msgaudit/groupchat/get":
        return [("group", str(meta["id"]), ans.get("roomname") or None)]
    if endpoint in ("msgaudit/check_single_agree", "msgaudit/check_room_agree"):
        out = []
        for a in ans.get("agreeinfo") or []:
            if isinstance(a, dict) and a.get("exteranalopenid"):
                scope = str(a.get("userid") or meta["id"])
                at = a.get("status_change_time")
                out.append(("consent", str(a["exteranalopenid"]), scope, str(a.get("agree_status")),
                            int(at) * 1000 if isinstance(at, int) and at > 0 else None))
        return out
    return []


# ---- sync -------------------------------------------------------------------------------------


def plan(people: set[str], groups: set[str], pairs: list[tuple[str, str]]) -> list[tuple]:
    """The calls that describe these participants, groups and 1:1 (employee, external) pairs:
    (method, endpoint, id, query, body)."""
    out: list[tuple] = [("GET", "department/list", "", {}, None)]
    for pid in sorted(people):
        k = participant_kind(pid)
        if k == "employee":
            out.append(("GET", "user/get", pid, {"userid": pid}, None))
        elif k == "external":
            out.append(("GET", "externalcontact/get", pid, {"external_userid": pid}, None))
        elif k == "robot":
            out.append(("POST", "msgaudit/get_robot_info", pid, None, {"robot_id": pid}))
    for rid in sorted(groups):
        out.append(("POST", "msgaudit/groupchat/get", rid, None, {"roomid": rid}))
        out.append(("POST", "msgaudit/check_room_agree", rid, None, {"roomid": rid}))
    for i in range(0, len(pairs), 100):
        out.append(("POST", "msgaudit/check_single_agree", "", None,
                    {"info": [{"userid": u, "exteranalopenid": e} for u, e in pairs[i : i + 100]]}))
    return out


def sync(client: Client, calls: list[tuple], source: str, record) -> SyncResult:
    """Make the calls; hand each raw answer with its metadata to ``record`` (which journals it
    and applies it). A first call that cannot be made stops the sync (wrong secret, no network);
    later failures are counted and the rest goes on."""
    res = SyncResult()
    for method, endpoint, ident, query, body in calls:
        res.asked += 1
        try:
            raw = client.call(method, f"/cgi-bin/{endpoint}", query, body)
            ans = _json(raw, endpoint)
        except DirectoryError as e:
            if res.answered == 0:
                raise
            res.errors.append(str(e))
            continue
        if ans.get("errcode") not in (0, None):
            res.not_found += 1
            log.info("directory: %s %s: errcode %s", endpoint, ident or "-", ans.get("errcode"))
        res.answered += 1
        record({"source": source, "endpoint": endpoint, "id": ident, "fetched_at": int(time.time() * 1000)}, raw)
    return res


def conversation_pairs(convs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(employee, external) of every 1:1 conversation id 'a|b' between the two."""
    pairs = []
    for cid, kind in convs:
        if kind == "direct" and "|" in cid:
            a, b = cid.split("|", 1)
            kinds = {participant_kind(a): a, participant_kind(b): b}
            if "employee" in kinds and "external" in kinds:
                pairs.append((kinds["employee"], kinds["external"]))
    return sorted(pairs)
