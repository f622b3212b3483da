"""Decrypted WeCom message JSON for every msgtype of the fact sheet (§3), plus its kind.

The shapes follow ../shared/docs/wecom-archive-api.md §3 field by field, including the
irregular ones a parser must get right: content under ``info``/``doc`` instead of the
msgtype, top-level ``voiceid``/``voipid`` without ``roomid``, nested ``content`` that is
a JSON *string*, chat-record item times in seconds, ``collect.create_time`` as a
China-local string. ``expected_kind`` is the answer key's independent reading of
docs/msgtype-kinds.md.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol
from collections.abc import Callable

from wxarchive.simulate import corpus, media
from wxarchive.simulate.corp import CORP_NAME, Conversation, Corp
from wxarchive.simulate.media import MediaFile

KIND_BY_MSGTYPE: dict[str, str] = {
    "text": "text",
    "markdown": "text",
    "image": "image",
    "voice": "voice",
    "video": "video",
    "file": "file",
    "emotion": "emotion",
    "link": "link",
    "news": "link",
    "card": "card",
    "location": "location",
    "mixed": "mixed",
    "chatrecord": "chat_record",
    "meeting_voice_call": "call",
    "voiptext": "call",
    "voip_doc_share": "document",
    "docmsg": "document",
    "qydiskfile": "document",
    "meeting": "meeting",
    "meeting_notification": "meeting",
    "calendar": "calendar",
    "todo": "todo",
    "vote": "vote",
    "collect": "form",
    "solitaire": "form",
    "redpacket": "red_packet",
    "external_redpacket": "red_packet",
    "weapp": "mini_program",
    "sphfeed": "channels",
    "note": "note",
    "revoke": "recall",
    "agree": "consent",
    "disagree": "consent",
}
UNKNOWN_MSGTYPES = ("hologram", "smart_sheet")  # future types: must be kept raw as "other"

CONTENT_KEY: dict[str, str] = {
    "markdown": "info",
    "news": "info",
    "docmsg": "doc",
    "external_redpacket": "redpacket",
    "voiptext": "info",
    "qydiskfile": "info",
    "meeting_notification": "info",
    "solitaire": "info",
    "note": "info",
}
NO_ROOMID = frozenset({"meeting_voice_call", "voip_doc_share"})

# nested item type → attachment kind (docs/msgtype-kinds.md, "Media")
NESTED_MEDIA_KIND = {"image": "image", "file": "file", "video": "video", "voice": "voice", "emotion": "emotion"}
CHATRECORD_TYPE = {
    "text": "ChatRecordText",
    "image": "ChatRecordImage",
    "file": "ChatRecordFile",
    "video": "ChatRecordVideo",
    "voice": "ChatRecordVoice",
    "emotion": "ChatRecordEmotion",
    "link": "ChatRecordLink",
    "location": "ChatRecordLocation",
}
CHINA = timezone(timedelta(hours=8))

FILE_NAMES = [
    "合同.pdf",
    "报价单✅.xlsx",
    "Q1投资策略报告.pdf",
    "KYC_客户资料.docx",
    "trade_blotter_20240308.xlsx",
    "会议纪要.docx",
    "Term Sheet - 稳健增值1号.pdf",
    "风险揭示书.pdf",
    "产品说明书 v2.pdf",
    "持仓明细.xlsx",
    "notes.txt",
    "客户名单 (内部).xlsx",
]


def expected_kind(plaintext: dict[str, Any]) -> str:
    """The MessageKind value a correct parser assigns (switch first, then msgtype)."""
    if plaintext.get("action") == "switch":
        return "system"
    return KIND_BY_MSGTYPE.get(str(plaintext.get("msgtype")), "other")


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON as WeCom emits it; a lone surrogate stays a ``\\udXXX`` escape (X2)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Stored:
    """What a message declares about a stored media item."""

    sdkfileid: str
    md5: str
    size: int


class MediaSink(Protocol):
    def store(
        self, file: MediaFile, *, msgid: str, path: str, kind: str, file_name: str | None, msgtime: int, expired: bool
    ) -> Stored: ...


@dataclass
class Draft:
    """A message being built: its envelope and scenario options."""

    msgid: str
    msgtime: int
    sender: str
    conversation: Conversation
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> int:
        return self.msgtime // 1000


@dataclass
class MediaMaker:
    """Chooses plausible sizes and dimensions per media type; exact sizes on request."""

    rng: random.Random

    def _size(self, median: int, low: int, high: int) -> int:
        return int(min(high, max(low, self.rng.lognormvariate(0, 0.6) * median)))

    @staticmethod
    def _fit(make: Callable[[int | None], MediaFile], target: int) -> MediaFile:
        """A file of about ``target`` bytes: exact when padding can reach it, else unpadded."""
        try:
            return make(target)
        except media.MediaSizeError:
            return make(None)

    def image(self, size: int | None = None) -> MediaFile:
        w, h = self.rng.choice([(160, 120), (120, 160), (96, 96), (200, 150), (64, 48)])
        if size is not None:
            return media.jpeg(self.rng, w, h, size=size)
        return self._fit(lambda s: media.jpeg(self.rng, w, h, size=s), self._size(9000, 2500, 120_000))

    def emotion(self) -> MediaFile:
        side = self.rng.choice([24, 32, 40, 48])
        target = self._size(5000, 2200, 30_000)
        if self.rng.random() < 0.5:
            return self._fit(lambda s: media.gif(self.rng, side, side, size=s), target)
        return self._fit(lambda s: media.png(self.rng, side, side, size=s), target)

    def voice(self, seconds: int | None = None) -> MediaFile:
        return media.amr(self.rng, seconds or min(60, 1 + int(self.rng.expovariate(1 / 6))))

    def video(self, size: int | None = None) -> MediaFile:
        seconds = self.rng.randint(3, 30)
        return media.mp4(self.rng, seconds, size or self._size(60_000, 20_000, 400_000))

    def call_audio(self) -> MediaFile:
        return media.amr(self.rng, self.rng.randint(20, 90))

    def document(self, name: str, size: int | None = None) -> MediaFile:
        """A file whose bytes match its extension; ``size`` exact for pdf/txt/bin."""
        ext = name.rsplit(".", 1)[-1].lower()
        target = size if size is not None else self._size(14_000, 3000, 150_000)
        if ext == "pdf":
            return media.pdf(self.rng, [name.encode("ascii", "replace").decode(), "Huaxin Wealth", "Page 1"], target)
        if ext == "docx":
            return media.docx(self.rng, [corpus.long_text(200), name], target)
        if ext == "xlsx":
            rows: list[list[str | float]] = [["代码 Code", "名称 Name", "价格 Price"]]
            rows += [
                [f"{600000 + i}", self.rng.choice(corpus.STOCKS), round(self.rng.uniform(5, 2000), 2)]
                for i in range(20)
            ]
            return media.xlsx(self.rng, rows, target)
        if ext == "txt":
            text = corpus.long_text(target).encode("utf-8")[:target].decode("utf-8", "ignore")
            return media.text_file(text + " " * (target - len(text.encode("utf-8"))))
        return media.binary(self.rng, target)


Builder = Callable[[Draft], tuple[dict[str, Any], dict[str, Any]]]


class ContentFactory:
    """Builds the decrypted JSON of one message; stores its media through the sink."""

    def __init__(self, rng: random.Random, corp: Corp, text: corpus.TextCorpus, sink: MediaSink) -> None:
        self.rng = rng
        self.corp = corp
        self.text = text
        self.sink = sink
        self.media = MediaMaker(rng)
        self._builders: dict[str, Builder] = {
            name[len("_b_") :]: getattr(self, name) for name in dir(self) if name.startswith("_b_")
        }

    def plaintext(self, msgtype: str, draft: Draft) -> dict[str, Any]:
        """The full decrypted message for ``msgtype`` (a known one or an unknown future one)."""
        content, top = self._builders[msgtype](draft)
        msg: dict[str, Any] = {
            "msgid": draft.msgid,
            "action": "recall" if msgtype == "revoke" else "send",
            "from": draft.sender,
            "tolist": draft.conversation.tolist(draft.sender),
        }
        if msgtype not in NO_ROOMID:
            msg["roomid"] = draft.conversation.roomid
        msg["msgtime"] = draft.msgtime
        msg["msgtype"] = msgtype
        msg.update(top)
        msg[CONTENT_KEY.get(msgtype, msgtype)] = content
        return msg

    # ------------------------------------------------------------------ media helpers

    def _store(self, draft: Draft, file: MediaFile, kind: str, path: str = "", name: str | None = None) -> Stored:
        return self.sink.store(
            file,
            msgid=draft.msgid,
            path=path,
            kind=kind,
            file_name=name,
            msgtime=draft.msgtime,
            expired=bool(draft.options.get("expired")) and path == "",
        )

    def _file_fields(self, draft: Draft, name: str, size: int | None, path: str = "") -> dict[str, Any]:
        stored = self._store(draft, self.media.document(name, size), "file", path, name)
        ext = name.rsplit(".", 1)[-1] if "." in name else ""
        return {
            "md5sum": stored.md5,
            "filename": name,
            "fileext": ext,
            "filesize": stored.size,
            "sdkfileid": stored.sdkfileid,
        }

    def _image_fields(self, draft: Draft, size: int | None = None, path: str = "") -> dict[str, Any]:
        stored = self._store(draft, self.media.image(size), "image", path)
        return {"md5sum": stored.md5, "filesize": stored.size, "sdkfileid": stored.sdkfileid}

    def _emotion_fields(self, draft: Draft, path: str = "") -> dict[str, Any]:
        file = self.media.emotion()
        stored = self._store(draft, file, "emotion", path)
        return {
            "type": 1 if file.ext == "gif" else 2,
            "width": file.width,
            "height": file.height,
            "imagesize": stored.size,
            "md5sum": stored.md5,
            "sdkfileid": stored.sdkfileid,
        }

    def _voice_fields(self, draft: Draft, path: str = "") -> dict[str, Any]:
        file = self.media.voice()
        stored = self._store(draft, file, "voice", path)
        return {
            "md5sum": stored.md5,
            "voice_size": stored.size,
            "play_length": file.play_length,
            "sdkfileid": stored.sdkfileid,
        }

    def _video_fields(self, draft: Draft, size: int | None = None, path: str = "") -> dict[str, Any]:
        file = self.media.video(size)
        stored = self._store(draft, file, "video", path)
        return {
            "md5sum": stored.md5,
            "filesize": stored.size,
            "play_length": file.play_length,
            "sdkfileid": stored.sdkfileid,
        }

    def _link_fields(self) -> dict[str, Any]:
        token = self.rng.getrandbits(48)
        return {
            "title": self.rng.choice(["2024年3月市场展望", "美联储议息会议前瞻 | FOMC preview", "基金定投的三个误区"]),
            "description": self.text.sentence(),
            "link_url": f"https://mp.weixin.qq.com/s/{token:012x}",
            "image_url": f"https://mmbiz.qpic.cn/mmbiz_jpg/{token:012x}/0",
        }

    def _location_fields(self) -> dict[str, Any]:
        place = self.rng.choice(
            [
                (121.50237, 31.23793, "上海市浦东新区陆家嘴环路1000号", "恒生银行大厦"),
                (114.16940, 22.28044, "香港中环金融街8号", "国际金融中心 IFC"),
                (116.45837, 39.90937, "北京市朝阳区建国门外大街1号", "国贸大厦"),
            ]
        )
        return {"longitude": place[0], "latitude": place[1], "address": place[2], "title": place[3], "zoom": 15}

    # ------------------------------------------------------------------ simple types

    def _b_text(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"content": draft.options.get("text") or self.text.message()}, {}

    def _b_markdown(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        body = f"**收盘播报 Market close**\n> 上证指数 {self.rng.uniform(2900, 3200):.2f}\n> {self.text.sentence()}"
        return {"content": body}, {}

    def _b_image(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return self._image_fields(draft, draft.options.get("size")), {}

    def _b_voice(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return self._voice_fields(draft), {}

    def _b_video(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return self._video_fields(draft, draft.options.get("size")), {}

    def _b_file(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        name = draft.options.get("name") or self.rng.choice(FILE_NAMES)
        return self._file_fields(draft, name, draft.options.get("size")), {}

    def _b_emotion(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return self._emotion_fields(draft), {}

    def _b_link(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        fields = self._link_fields()
        if "link_url" in draft.options:
            fields["link_url"] = draft.options["link_url"]
        return fields, {}

    def _b_news(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        items = []
        for _ in range(self.rng.randint(1, 3)):
            link = self._link_fields()
            items.append(
                {
                    "title": link["title"],
                    "description": link["description"],
                    "url": link["link_url"],
                    "picurl": link["image_url"],
                }
            )
        return {"item": items}, {}

    def _b_card(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        user = self.rng.choice(self.corp.users)
        return {"corpname": CORP_NAME, "userid": user.userid}, {}

    def _b_location(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return self._location_fields(), {}

    def _b_weapp(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {
            "title": "基金开户 | 3分钟完成",
            "description": "华信财富小程序",
            "username": "gh_3a8c9f2b1d47@app",
            "displayname": "华信财富+",
        }, {}

    def _b_todo(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"title": "周五前完成客户回访 Client follow-up", "content": self.text.sentence()}, {}

    def _b_vote(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {
            "votetitle": "年会地点投票 🗳️",
            "voteitem": ["外滩 The Bund", "前滩", "线上 Online"],
            "votetype": self.rng.choice([101, 102]),
            "voteid": str(self.rng.getrandbits(60)),
        }, {}

    def _b_collect(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        created = datetime.fromtimestamp(draft.seconds, CHINA).strftime("%Y-%m-%d %H:%M:%S")
        return {
            "room_name": self._room_name(draft),
            "creator": self.corp.names.get(draft.sender, draft.sender),
            "create_time": created,
            "title": "客户风险测评回访登记",
            "details": [
                {"id": 1, "ques": "客户姓名", "type": "Text"},
                {"id": 2, "ques": "投资金额（万元）", "type": "Number"},
                {"id": 3, "ques": "回访日期", "type": "Date"},
                {"id": 4, "ques": "回访时间", "type": "Time"},
            ],
        }, {}

    def _b_redpacket(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        count = self.rng.randint(1, 10)
        return {
            "type": self.rng.choice([1, 2, 3]),
            "wish": "恭喜发财，大吉大利 🧧",
            "totalcnt": count,
            "totalamount": count * self.rng.choice([88, 168, 888]),
        }, {}

    def _b_external_redpacket(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {
            "type": self.rng.choice([1, 2]),
            "wish": "感谢信任 Thank you 🙏",
            "totalcnt": 1,
            "totalamount": 6600,
        }, {}

    def _b_meeting(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        start = (draft.seconds // 3600 + 20) * 3600
        return {
            "topic": "季度资产配置会 Quarterly allocation",
            "starttime": start,
            "endtime": start + 3600,
            "address": "陆家嘴 28F 会议室 A / 腾讯会议",
            "remarks": "请提前准备持仓报告",
            "meetingtype": 101,
            "meetingid": self.rng.getrandbits(40),
            "status": 1,
        }, {}

    def _b_docmsg(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {
            "title": "客户跟进表 Client pipeline",
            "doc_creator": draft.sender,
            "link_url": f"https://doc.weixin.qq.com/sheet/e3_{self.rng.getrandbits(64):016x}",
        }, {}

    def _b_calendar(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        start = (draft.seconds // 3600 + 26) * 3600
        return {
            "title": "路演 Roadshow: 稳健增值1号",
            "creatorname": self.corp.names.get(draft.sender, draft.sender),
            "attendeename": [self.corp.names.get(p, p) for p in draft.conversation.people[:4]],
            "starttime": start,
            "endtime": start + 5400,
            "place": "香港中环 IFC 二期 50F",
            "remarks": "Dress code: business formal",
        }, {}

    def _b_sphfeed(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {
            "feed_type": self.rng.choice([2, 4, 9]),
            "sph_name": "华信财富视频号",
            "feed_desc": "3分钟看懂债券基金 📺",
        }, {}

    def _b_voiptext(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"callduration": self.rng.randint(5, 1800), "invitetype": self.rng.choice([1, 2, 3, 4])}, {}

    def _b_qydiskfile(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"filename": self.rng.choice(FILE_NAMES)}, {}

    def _b_meeting_notification(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {
            "meeting_id": self.rng.getrandbits(40),
            "notification_type": self.rng.choice([1, 2]),
            "content": "主持人已开启全员静音",
        }, {}

    def _b_solitaire(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        names = [self.corp.names.get(p, p) for p in draft.conversation.people[:3]]
        body = "#接龙\n周五团建报名 Team dinner\n" + "\n".join(f"{i}. {n}" for i, n in enumerate(names, 1))
        return {"solitaire_type": 1, "solitaire_content": body}, {}

    def _b_note(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {
            "items": [
                {"msg_type": "text", "content": self.text.sentence()},
                {"msg_type": "text", "content": "待办：更新KYC"},
            ]
        }, {}

    def _b_revoke(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"pre_msgid": draft.options["pre_msgid"]}, {}

    def _b_agree(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"userid": draft.sender, "agree_time": draft.msgtime}, {}

    def _b_disagree(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"userid": draft.sender, "disagree_time": draft.msgtime}, {}

    def _b_hologram(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"scene": "3D路演 roadshow", "duration": self.rng.randint(10, 90)}, {}

    def _b_smart_sheet(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"title": "智能表格：客户分层", "rows": self.rng.randint(3, 300)}, {}

    # ------------------------------------------------------------------ calls and docs

    def _b_meeting_voice_call(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        file = self.media.call_audio()
        stored = self._store(draft, file, "call_audio")
        start = draft.seconds
        content = {
            "endtime": start + file.play_length,
            "sdkfileid": stored.sdkfileid,
            "demofiledata": [
                {
                    "filename": "季度复盘.pptx",
                    "demooperator": draft.sender,
                    "starttime": start + 5,
                    "endtime": start + 15,
                }
            ],
            "sharescreendata": [{"share": draft.sender, "starttime": start + 16, "endtime": start + 18}],
        }
        return content, {"voiceid": f"gr{self.rng.getrandbits(128):032x}"}

    def _b_voip_doc_share(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        name = "欢迎使用微盘.pdf"
        stored = self._store(draft, self.media.document(name), "file", name=name)
        content = {"filename": name, "md5sum": stored.md5, "filesize": stored.size, "sdkfileid": stored.sdkfileid}
        return content, {"voipid": f"gr{self.rng.getrandbits(128):032x}"}

    # ------------------------------------------------------------------ nested types

    def _nested(self, draft: Draft, kind: str, path: str) -> dict[str, Any]:
        if kind == "text":
            return {"content": self.text.message()}
        if kind == "image":
            return self._image_fields(draft, path=path)
        if kind == "file":
            return self._file_fields(draft, self.rng.choice(FILE_NAMES), None, path)
        if kind == "video":
            return self._video_fields(draft, path=path)
        if kind == "voice":
            return self._voice_fields(draft, path=path)
        if kind == "emotion":
            return self._emotion_fields(draft, path=path)
        if kind == "link":
            return self._link_fields()
        return self._location_fields()

    def _b_mixed(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        kinds = (
            draft.options.get("items")
            or ["text", self.rng.choice(["image", "image", "emotion"]), "text"][: self.rng.randint(2, 3)]
        )
        items = []
        for n, kind in enumerate(kinds):
            items.append(
                {"type": kind, "content": json.dumps(self._nested(draft, kind, f"item.{n}"), ensure_ascii=False)}
            )
        return {"item": items}, {}

    def _b_chatrecord(self, draft: Draft) -> tuple[dict[str, Any], dict[str, Any]]:
        kinds = draft.options.get("items") or self.rng.choices(
            ["text", "image", "file", "video", "voice", "emotion", "link", "location"],
            weights=[10, 3, 2, 0.5, 0.5, 1, 1, 0.5],
            k=self.rng.randint(2, 6),
        )
        base = draft.seconds - self.rng.randint(3600, 86400)
        items = []
        for n, kind in enumerate(kinds):
            content = self._nested(draft, kind, f"item.{n}")
            items.append(
                {
                    "type": CHATRECORD_TYPE[kind],
                    "msgtime": base + 37 * n,
                    "content": json.dumps(content, ensure_ascii=False),
                    "from_chatroom": self.rng.random() < 0.5,
                }
            )
        return {"title": self._record_title(draft), "item": items}, {}

    def _record_title(self, draft: Draft) -> str:
        if draft.conversation.is_group:
            return "群聊的聊天记录"
        a, b = (self.corp.names.get(p, p) for p in draft.conversation.people)
        return f"{a}和{b}的聊天记录"

    def _room_name(self, draft: Draft) -> str:
        for g in self.corp.groups:
            if g.roomid == draft.conversation.roomid:
                return g.name
        return ""


def file_digest(data: bytes) -> tuple[str, str]:
    """(md5, sha256) hex digests of a media plaintext."""
    return hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()
