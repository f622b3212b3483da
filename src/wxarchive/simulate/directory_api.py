"""The WeCom directory APIs the archive's directory sync calls, served from a tenant's
``tenant.json`` by the simulator (same HTTPS tunnel, same access tokens as the archive API).

Shapes follow the public API documentation:

* ``GET /cgi-bin/user/get?userid=`` — ``userid, name, alias, department[], main_department,
  position, status``. Like the real API for apps created after 2022-06, **no mobile or
  email** (those come from the HR import).
* ``GET /cgi-bin/department/list`` — ``department[] {id, name, parentid}``.
* ``GET /cgi-bin/externalcontact/get?external_userid=`` — ``external_contact {external_userid,
  name, type (1 WeChat, 2 WeCom), corp_name}``.
* ``POST /cgi-bin/msgaudit/groupchat/get {roomid}`` — ``roomname, creator, room_create_time,
  notice, members[] {memberid, jointime}``.
* ``POST /cgi-bin/msgaudit/get_robot_info {robot_id}`` — ``data {robot_id, name, creator_userid}``.
* ``POST /cgi-bin/msgaudit/check_single_agree {info[] {userid, exteranalopenid}}`` (sic) —
  ``agreeinfo[] {userid, exteranalopenid, agree_status, status_change_time}``.
* ``POST /cgi-bin/msgaudit/check_room_agree {roomid}`` — ``agreeinfo[] {exteranalopenid,
  agree_status, status_change_time}``.

Unknown ids get the real error codes (60111 user not found, 84061 external contact not found,
301057 room not found); ``tenant.json`` may be edited between calls (a rename, a departure),
which is how tests make directory history.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

ReplyFn = Callable[[dict[str, Any]], Any]


class DirectoryApi:
    def __init__(self, tenant_dir: Path, json_reply, error_reply):
        self.path = Path(tenant_dir) / "tenant.json"
        self._json, self._error = json_reply, error_reply

    def _tenant(self) -> dict[str, Any]:
        return json.loads(self.path.read_text(encoding="utf-8"))  # re-read: tests edit it

    def routes(self) -> dict[tuple[str, str], Callable]:
        return {
            ("GET", "/cgi-bin/user/get"): self.user_get,
            ("GET", "/cgi-bin/department/list"): self.department_list,
            ("GET", "/cgi-bin/externalcontact/get"): self.external_get,
            ("POST", "/cgi-bin/msgaudit/groupchat/get"): self.groupchat_get,
            ("POST", "/cgi-bin/msgaudit/get_robot_info"): self.robot_get,
            ("POST", "/cgi-bin/msgaudit/check_single_agree"): self.check_single_agree,
            ("POST", "/cgi-bin/msgaudit/check_room_agree"): self.check_room_agree,
        }

    def _departments(self, t: dict[str, Any]) -> dict[str, int]:
        names = sorted({u["department"] for u in t["users"]})
        return {n: i + 2 for i, n in enumerate(names)}  # 1 is the corp itself

    def user_get(self, req) -> Any:
        t = self._tenant()
        u = next((u for u in t["users"] if u["userid"] == req.query.get("userid")), None)
        if u is None:
            return self._error(60111, "userid not found")
        dep = self._departments(t)[u["department"]]
        return self._json({"errcode": 0, "errmsg": "ok", "userid": u["userid"], "name": u["name"],
                           "alias": u.get("english_name", ""), "department": [dep], "main_department": dep,
                           "position": u.get("position", ""), "status": u.get("status", 1)})

    def department_list(self, req) -> Any:
        t = self._tenant()
        deps = [{"id": 1, "name": t.get("corp_name", ""), "parentid": 0}]
        deps += [{"id": i, "name": n, "parentid": 1} for n, i in self._departments(t).items()]
        return self._json({"errcode": 0, "errmsg": "ok", "department": deps})

    def external_get(self, req) -> Any:
        t = self._tenant()
        e = next((e for e in t["externals"] if e["external_userid"] == req.query.get("external_userid")), None)
        if e is None:
            return self._error(84061, "not external contact")
        contact = {"external_userid": e["external_userid"], "name": e["name"], "type": e["type"]}
        if e.get("corp_name"):
            contact["corp_name"] = e["corp_name"]
        return self._json({"errcode": 0, "errmsg": "ok", "external_contact": contact, "follow_user": []})

    @staticmethod
    def _body(req) -> dict[str, Any]:
        try:
            b = json.loads(req.body or b"{}")
        except ValueError:
            return {}
        return b if isinstance(b, dict) else {}

    def groupchat_get(self, req) -> Any:
        t = self._tenant()
        rid = self._body(req).get("roomid")
        g = next((g for g in t["groups"] if g["roomid"] == rid), None)
        if g is None:
            return self._error(301057, "room not found")
        return self._json({"errcode": 0, "errmsg": "ok", "roomname": g["name"], "creator": g["creator"],
                           "room_create_time": g.get("created", 1704067200), "notice": g.get("notice", ""),
                           "members": [{"memberid": m, "jointime": g.get("created", 1704067200)}
                                       for m in g["members"]]})

    def robot_get(self, req) -> Any:
        t = self._tenant()
        rid = self._body(req).get("robot_id")
        r = next((r for r in t["robots"] if r["robot_id"] == rid), None)
        if r is None:
            return self._error(301058, "robot not found")
        return self._json({"errcode": 0, "errmsg": "ok", "data": dict(r)})

    def _consent(self, t: dict[str, Any]) -> dict[str, tuple[str, int]]:
        """external id -> (agree_status, change time s): from the tenant's consent list."""
        out = {}
        for c in t.get("consent", []):
            out[c["external_userid"]] = (c["status"], c["time"])
        return out

    def check_single_agree(self, req) -> Any:
        t = self._tenant()
        consent = self._consent(t)
        info = self._body(req).get("info") or []
        out = []
        for pair in info if isinstance(info, list) else []:
            ext = str(pair.get("exteranalopenid", ""))
            status, at = consent.get(ext, ("Default_Agree", 0))
            out.append({"userid": pair.get("userid"), "exteranalopenid": ext, "agree_status": status,
                        "status_change_time": at})
        return self._json({"errcode": 0, "errmsg": "ok", "agreeinfo": out})

    def check_room_agree(self, req) -> Any:
        t = self._tenant()
        rid = self._body(req).get("roomid")
        g = next((g for g in t["groups"] if g["roomid"] == rid), None)
        if g is None:
            return self._error(301057, "room not found")
        consent = self._consent(t)
        out = [{"exteranalopenid": m, "agree_status": consent.get(m, ("Default_Agree", 0))[0],
                "status_change_time": consent.get(m, ("", 0))[1]}
               for m in g["members"] if m.startswith(("wm", "wo"))]
        return self._json({"errcode": 0, "errmsg": "ok", "agreeinfo": out})
