"""What the simulated tenant contains: the must-have scenarios and the random mix.

Every case the archiver is tested against (docs in ../shared/cases/README.md) is a
*forced* scenario: a short run of planned records placed evenly through the stream, so
even a 300-record tenant holds every msgtype, every awkward text, every media size and
every bad record. The rest is drawn from a weighted mix that is ~70 % text, like a
real finance desk.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wxarchive.simulate import corpus
from wxarchive.simulate.contents import KIND_BY_MSGTYPE, UNKNOWN_MSGTYPES

BAD_KINDS = ("missing_key", "short", "corrupt", "not_json")
LONE_SURROGATE_TEXT = "表情发送失败 \ud83d 请重发"  # X2: written as a raw "\ud83d" escape
ZWJ_TEXT = "周末全家福 👩‍👩‍👧 我还在加班 👨‍💻🏳️‍🌈 👍🏽"
SPECIAL_TEXTS = [
    "好",  # 1-2 character Chinese: search must still find them
    "收到",
    LONE_SURROGATE_TEXT,
    corpus.long_text(60_000),  # X3
    corpus.MIXED_SCRIPT_TEXT,  # X3
    ZWJ_TEXT,  # X1
    "<img src=x onerror=alert(1)>",  # X4
    '=HYPERLINK("http://evil.example/","点我查看收益")',  # X5
    "-5% 止损线到了\n@David Chen 请确认\r\n+1 同意",  # X5: leading '-', multi-line, CR
]
SPECIAL_SIZES = [  # A3: (msgtype, options)
    ("file", {"name": "空文件.txt", "size": 0}),
    ("file", {"name": "checksum.bin", "size": 16}),
    ("file", {"name": "年度报告2023.pdf", "size": 524_288}),
    ("image", {"size": 524_289}),
    ("video", {"size": 1_400_000}),
    ("file", {"name": "招股说明书.pdf", "size": 3_145_739}),
]

RANDOM_WEIGHTS: dict[str, float] = {
    "text": 700,
    "image": 60,
    "voice": 30,
    "file": 25,
    "emotion": 20,
    "link": 15,
    "revoke": 10,
    "mixed": 8,
    "chatrecord": 8,
    "markdown": 6,
    "video": 5,
    "card": 5,
    "location": 5,
    "redpacket": 5,
    "weapp": 4,
    "meeting": 4,
    "docmsg": 4,
    "news": 3,
    "calendar": 3,
    "todo": 3,
    "voiptext": 3,
    "agree": 3,
    "external_redpacket": 2,
    "meeting_notification": 2,
    "vote": 2,
    "collect": 2,
    "solitaire": 2,
    "note": 2,
    "qydiskfile": 2,
    "sphfeed": 2,
    "switch": 2,
    "meeting_voice_call": 1,
    "voip_doc_share": 1,
    "disagree": 0.5,
    "hologram": 0.2,
    "smart_sheet": 0.2,
}


@dataclass
class Planned:
    """One record to emit: a msgtype (or ``"switch"`` / ``"bad"``) and how to shape it."""

    msgtype: str
    options: dict[str, Any] = field(default_factory=dict)
    conversation: str | None = None  # a key of Corp.named
    msgid_style: str = "auto"  # "auto" | "updown" | "old"


def _every_msgtype() -> list[list[Planned]]:
    types = [t for t in KIND_BY_MSGTYPE if t != "revoke"] + list(UNKNOWN_MSGTYPES)
    return [[Planned(t)] for t in types] + [[Planned("switch")]]


def _texts_and_links() -> list[list[Planned]]:
    out = [[Planned("text", {"text": t})] for t in SPECIAL_TEXTS]
    out.append([Planned("text", {"tag": "quoted"}), Planned("text", {"quote_tag": "quoted"})])  # C3
    out.append([Planned("link", {"link_url": "javascript:alert(1)"})])  # X4
    out += [[Planned("text", conversation=name)] for name in ("customer_emoji", "project_a", "project_b")]
    return out


def _attachments() -> list[list[Planned]]:
    same_name = [Planned("file", {"name": "合同.pdf"}, conversation="ext_wechat") for _ in range(2)]  # A1
    out = [same_name, [Planned("file", {"name": "报价单✅.xlsx"}, conversation="customer_emoji")]]
    out += [[Planned(t, dict(o))] for t, o in SPECIAL_SIZES]
    out += [[Planned("image", {"expired": True})], [Planned("file", {"name": "过期的估值表.pdf", "expired": True})]]
    out.append([Planned("chatrecord", {"items": ["text", "image", "file"]})])  # C4
    out.append([Planned("mixed", {"items": ["text", "image", "emotion"]})])
    return out


def _ids_recalls_and_bad_records() -> list[list[Planned]]:
    out = [
        [Planned("text", {"tag": "recall-later"}), Planned("text"), Planned("revoke", {"target_tag": "recall-later"})],
        [Planned("revoke", {"ahead_tag": "recall-early"}), Planned("text", {"original_tag": "recall-early"})],  # C2
        [Planned("text", msgid_style="updown")],
        [Planned("image", msgid_style="updown")],
        [Planned("text", msgid_style="old")],
        [Planned("card", msgid_style="old")],
        [Planned("agree", conversation="ext_wecom")],
        [Planned("disagree", conversation="ext_wechat")],
    ]
    out += [[Planned("bad", {"bad": kind})] for kind in BAD_KINDS]  # K1, K6, P14
    return out


def forced_scenarios() -> list[list[Planned]]:
    return _every_msgtype() + _texts_and_links() + _attachments() + _ids_recalls_and_bad_records()


def minimum_messages() -> int:
    return sum(len(s) for s in forced_scenarios())


class Plan:
    """Exactly ``n`` planned records: forced scenarios spread evenly, random mix between."""

    def __init__(self, n: int, rng: random.Random) -> None:
        scenarios = forced_scenarios()
        rng.shuffle(scenarios)
        forced = sum(len(s) for s in scenarios)
        if n < forced:
            raise ValueError(f"a tenant needs at least {forced} messages to hold every scenario")
        self.n = n
        self.rng = rng
        self.scenarios = scenarios
        free, count = n - forced, len(scenarios)
        self.starts, before = [], 0
        for k, s in enumerate(scenarios):
            self.starts.append(k * free // count + before)
            before += len(s)
        self._types = list(RANDOM_WEIGHTS)
        self._cum: list[float] = []
        total = 0.0
        for t in self._types:
            total += RANDOM_WEIGHTS[t]
            self._cum.append(total)

    def _random(self) -> Planned:
        msgtype = self.rng.choices(self._types, cum_weights=self._cum)[0]
        roll = self.rng.random()
        style = "old" if roll < 0.003 else "updown" if roll < 0.005 else "auto"
        return Planned(msgtype, msgid_style=style)

    def __iter__(self) -> Iterator[Planned]:
        index = k = 0
        while index < self.n:
            if k < len(self.scenarios) and index == self.starts[k]:
                for planned in self.scenarios[k]:
                    yield planned
                    index += 1
                k += 1
            else:
                yield self._random()
                index += 1
