"""The simulated corp's directory: employees, external contacts, robots, groups, chats.

Ids follow WeCom's documented shapes (corp ``ww…``, WeChat contacts ``wm…``, contacts
of other corps ``wo…``, robots ``wb…``, groups ``wr…``). The directory is small (tens
of people) and built once per tenant; conversations are the units messages are drawn
from, and a few are named so scenarios can target them (case P3: two groups both
titled 项目组; case X1: 客户群🎉💼).
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

from wxarchive.simulate import corpus

_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
CORP_NAME = "华信财富管理有限公司 Huaxin Wealth"
CORP_DOMAIN = "huaxin-wealth.example.com"


@dataclass
class User:
    userid: str
    name: str
    english_name: str
    mobile: str
    email: str
    department: str
    position: str


@dataclass
class External:
    external_userid: str
    name: str
    type: int  # 1 WeChat user (wm…), 2 WeCom user of another corp (wo…)
    corp_name: str | None


@dataclass
class Robot:
    robot_id: str
    name: str
    creator_userid: str


@dataclass
class Group:
    roomid: str
    name: str
    creator: str
    members: list[str]
    kind: str  # "internal" | "customer"


@dataclass
class Conversation:
    """Who can talk where: a 1:1 pair (roomid "") or a group."""

    label: str
    roomid: str
    people: list[str]  # humans who may send
    robots: list[str] = field(default_factory=list)
    external: bool = False  # an external contact takes part: msgids get "_external"

    @property
    def is_group(self) -> bool:
        return bool(self.roomid)

    def tolist(self, sender: str) -> list[str]:
        return [p for p in self.people + self.robots if p != sender]


@dataclass
class Corp:
    corp_id: str
    users: list[User]
    externals: list[External]
    robots: list[Robot]
    groups: list[Group]
    conversations: dict[str, list[Conversation]]  # "group" | "internal" | "external"
    named: dict[str, Conversation]
    names: dict[str, str]  # id → display name

    def directory_json(self) -> dict[str, Any]:
        return {
            "users": [asdict(u) for u in self.users],
            "externals": [asdict(e) for e in self.externals],
            "robots": [asdict(r) for r in self.robots],
            "groups": [asdict(g) for g in self.groups],
        }

    def is_employee(self, ident: str) -> bool:
        return not ident.startswith(("wm", "wo", "wb"))


def _wecom_id(rng: random.Random, prefix: str, infix: str) -> str:
    return prefix + infix + "".join(rng.choice(_ID_CHARS) for _ in range(30 - len(infix)))


def _ascii_local(name: str) -> str:
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return plain.lower().replace(" ", ".").replace("-", "")


def _has_cjk(s: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in s)


def _users(rng: random.Random) -> list[User]:
    users = []
    for i, (name, english, userid) in enumerate(corpus.EMPLOYEES):
        zh, en = corpus.DEPARTMENTS[i % len(corpus.DEPARTMENTS)]
        local = _ascii_local(english) if userid.isdigit() else userid.lower()
        users.append(
            User(
                userid=userid,
                name=name,
                english_name=english,
                mobile=f"+86 13{rng.randint(0, 9)}{rng.randint(0, 99_999_999):08d}",
                email=f"{local}@{CORP_DOMAIN}",
                department=zh if _has_cjk(name) else en,
                position=corpus.POSITIONS[rng.randrange(len(corpus.POSITIONS))],
            )
        )
    return users


def _externals(rng: random.Random) -> list[External]:
    wm = [External(_wecom_id(rng, "wm", "GAgeDQAA"), n, 1, None) for n in corpus.WECHAT_CONTACTS]
    wo = [External(_wecom_id(rng, "wo", "2oaTBwAA"), n, 2, c) for n, c in corpus.WECOM_CONTACTS]
    return wm + wo


def _group(rng: random.Random, name: str, members: list[str], kind: str) -> Group:
    return Group(_wecom_id(rng, "wr", "EcLbDQAA"), name, members[0], members, kind)


def _groups(rng: random.Random, staff: list[str], ext: list[str], robots: list[str]) -> list[Group]:
    """Fixed group roster; the two 项目组 have different members and creators."""
    s = staff
    return [
        _group(rng, "项目组", [s[0], s[2], s[5], s[31], s[33], robots[0]], "internal"),
        _group(rng, "项目组", [s[7], s[8], s[30], s[35], s[12]], "internal"),
        _group(rng, "合规周会 Compliance Weekly", [s[1], *s[10:16], robots[1]], "internal"),
        _group(rng, "Trading Desk 交易台", [s[3], *s[16:22], s[36], robots[0]], "internal"),
        _group(rng, "财富管理部全员群", [s[0], *s[22:30], s[34], s[38], s[39]], "internal"),
        _group(rng, "客户群🎉💼", [s[30], s[0], s[4], ext[0], ext[3], ext[5], ext[15]], "customer"),
        _group(rng, "VIP理财客户群", [s[6], s[9], s[31], *ext[6:11]], "customer"),
        _group(rng, "Blue Harbor 对接群", [s[32], s[37], ext[16], ext[20]], "customer"),
    ]


def _group_conversation(g: Group, robot_ids: set[str]) -> Conversation:
    people = [m for m in g.members if m not in robot_ids]
    robots = [m for m in g.members if m in robot_ids]
    return Conversation(f"group:{g.roomid}", g.roomid, people, robots, external=g.kind == "customer")


def _direct_pairs(rng: random.Random, staff: list[str], count: int) -> list[Conversation]:
    pairs: set[tuple[str, str]] = set()
    while len(pairs) < count:
        a, b = rng.sample(staff, 2)
        pairs.add((min(a, b), max(a, b)))
    return [Conversation(f"direct:{a}|{b}", "", [a, b]) for a, b in sorted(pairs)]


def _external_pairs(rng: random.Random, staff: list[str], ext: list[str]) -> list[Conversation]:
    out = []
    for e in ext:
        for owner in rng.sample(staff, rng.choice((1, 1, 2))):
            out.append(Conversation(f"direct:{owner}|{e}", "", [owner, e], external=True))
    return out


def build_corp(rng: random.Random) -> Corp:
    """The whole directory, deterministic for the RNG state."""
    corp_id = "ww" + "".join(rng.choice("0123456789abcdef") for _ in range(16))
    users = _users(rng)
    externals = _externals(rng)
    staff = [u.userid for u in users]
    robots = [Robot(_wecom_id(rng, "wb", "jNWhBgAA"), n, staff[1 + i]) for i, n in enumerate(corpus.ROBOTS)]
    robot_ids = [r.robot_id for r in robots]
    ext_ids = [e.external_userid for e in externals]
    groups = _groups(rng, staff, ext_ids, robot_ids)
    group_convs = [_group_conversation(g, set(robot_ids)) for g in groups]
    internal = _direct_pairs(rng, staff, 60)
    external = _external_pairs(rng, staff, ext_ids)
    names = {u.userid: u.name for u in users}
    names.update({e.external_userid: e.name for e in externals})
    names.update({r.robot_id: r.name for r in robots})
    return Corp(
        corp_id=corp_id,
        users=users,
        externals=externals,
        robots=robots,
        groups=groups,
        conversations={"group": group_convs, "internal": internal, "external": external},
        named={
            "project_a": group_convs[0],
            "project_b": group_convs[1],
            "customer_emoji": group_convs[5],
            "ext_wechat": external[0],
            "ext_wecom": next(c for c in external if c.people[1].startswith("wo")),
            "internal_direct": internal[0],
        },
        names=names,
    )
