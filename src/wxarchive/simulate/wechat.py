"""Realistic encrypted WeChat databases for tests, benches and ``wxarchive simulate wechat``.

One scenario, written in each platform's own layout and encryption (fact sheet §7.3):

* ``android``: ``MicroMsg/<md5("mm"+uin)>/EnMicroMsg.db`` (SQLCipher compat 1, passphrase
  from IMEI ``1234567890ABCDEF`` and a *negative* uin, case W6) with ``voice2/`` files;
* ``win3``: ``WeChat Files/<wxid>/Msg/`` with ``MicroMsg.db``, ``Multi/MSG0.db`` and
  ``MSG1.db`` (different column sets, case W4) and ``Multi/MediaMSG0.db``;
* ``v4``: ``xwechat_files/<wxid>_a1b2/db_storage/`` with ``message/message_0.db``,
  ``message_1.db``, ``media_0.db`` and ``contact/contact.db``.

The newest messages of each database stay in its ``-wal`` file (case W3). The scenario holds
every message type the importer maps, group senders each platform's way, recalls, quotes
(with an escaped-XML quoted image, case C3), nested chat records, emoji and invalid UTF-8,
``createTime = 0``, SILK voice with the 0x02 header, lz4 XML far more repetitive than 4:1
(W1), zstd content (v4), an unknown type — and personal chats whose text carries the marker
``PERSONAL-SECRET`` so tests can scan the archive's bytes for it.

Media files sit where each platform keeps them (Android ``image2/`` and ``video/``; 3.x
``FileStorage`` with XOR-wrapped image ``.dat`` files named in ``BytesExtra``; 4.x ``msg/attach``
V1 and V2 ``.dat``, ``msg/video``, ``msg/file``): a full image, one with only its thumbnail, one
never downloaded, a video, a file, and a personal photo that must never be read.

Beside the databases: ``key.txt`` (the account key or Android passphrase; 4.x also
``image_key.txt``, the account's V2 image key), ``policy.toml``
and ``clients.csv`` (which chats are work), and ``answer.json``: every work message the
importer must archive, with its expected fields, and the count of personal ones
(``device.json``: the same without the message list, for tools that need only the totals).
Same seed, same files; ``extra`` adds that many newer messages to the same base (the
"newer copy of the database" of the tests).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from wxarchive.capture.protobuf import encode_fields

OWNER = "wxid_owner01"
OWNER_NAME = "Li Wei 李伟"
ANDROID_UIN = "-1234567890"
ANDROID_IMEI = "1234567890ABCDEF"
START = 1_709_856_000  # 2024-03-08T00:00:00Z
WORK_GROUP = "20000001@chatroom"
PERSONAL_GROUP = "20000002@chatroom"
MARKER = "PERSONAL-SECRET"
WORDS = ["报价", "合同", "明天", "会议", "客户", "价格", "确认", "发货", "付款", "项目", "quote", "contract",
         "meeting", "price", "shipment", "invoice", "review", "Friday", "😀", "🎉", "👍"]


@dataclass
class Person:
    id: str
    nickname: str
    remark: str | None = None
    alias: str | None = None
    labels: tuple[str, ...] = ()
    work: bool = False


PEOPLE = [
    Person("wxid_client01", "Zhang San", remark="张三 (ACME)", labels=("客户",), work=True),
    Person("wxid_client02", "Wang Fang", remark="王芳 138-1234-5678", work=True),  # customer list by mobile
    Person("wxid_client03", "Chen Jie", alias="chenjie_hk", work=True),  # customer list by wxid
    Person("wxid_client04", "Zoë 👩‍👩‍👧", work=True),  # work_contacts
    Person("wxid_colleague01", "Liu Yang 刘洋", work=True),  # colleagues
    Person("wm_ext01@openim", "Sun Li (WeCom)", work=True),  # WeCom contact
    Person("wxid_friend01", "Mom 妈妈"),
    Person("wxid_friend02", "Old classmate"),
    Person("wxid_member09", "Stranger in the group"),
]
GROUPS = {WORK_GROUP: ("客户群🎉💼", [OWNER, "wxid_client01", "wxid_colleague01", "wxid_member09"]),
          PERSONAL_GROUP: ("家人群", [OWNER, "wxid_friend01", "wxid_friend02"])}


@dataclass
class DeviceFile:
    """A media file of a message as the device keeps it (each writer places and wraps it its
    platform's way): ``role`` full | thumb; ``name`` a file's own name (files only)."""

    kind: str  # image | video | file
    data: bytes
    role: str = "full"
    name: str | None = None
    v2: bool = False  # 4.x: wrapped as a V2 .dat (needs the account's image key)


def png(width: int, height: int, seed: int) -> bytes:
    """A real PNG (RGB, 8 bit) of a deterministic pattern."""
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(((x * 7 + y * 3 + seed) * (c + 1)) & 0xFF for x in range(width) for c in range(3))
                   for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))


def jpeg_like(n: int, seed: int) -> bytes:
    """JPEG framing (SOI, JFIF APP0, a comment segment of ``n`` bytes, EOI): what WeChat's
    wrapping and the importer's format checks see of a JPEG."""
    body = bytes((i * 31 + seed) & 0xFF for i in range(n))
    return (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
            + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + b"\xff\xd9")


def mp4_like(n: int, seed: int) -> bytes:
    """An ISO BMFF file (``ftyp`` + ``mdat``) of ``n`` payload bytes."""
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isommp41"
    return ftyp + struct.pack(">I", n + 8) + b"mdat" + bytes((i * 13 + seed) & 0xFF for i in range(n))


def xlsx_like(seed: int) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo("[Content_Types].xml", (2024, 3, 8, 10, 0, 0)), '<?xml version="1.0"?><Types/>')
        z.writestr(zipfile.ZipInfo("xl/workbook.xml", (2024, 3, 8, 10, 0, 0)), f"<workbook seed='{seed}'/>")
    return buf.getvalue()


def dat_3x(data: bytes, xor: int) -> bytes:
    """A Windows 3.x image ``.dat``: every byte XOR-ed with the account's one byte (§2.6)."""
    return data.translate(bytes(b ^ xor for b in range(256)))


def dat_v4(data: bytes, aes_key: bytes, xor: int, version: str = "V1", aes_len: int = 1024, xor_len: int = 256) -> bytes:
    """A 4.x image ``.dat`` (§3.5): header, AES-128-ECB (PKCS#7) of the first ``aes_len`` bytes,
    the plain middle, the last ``xor_len`` bytes XOR-ed with one byte."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    aes_len = min(aes_len, len(data))
    xor_len = min(xor_len, len(data) - aes_len)
    head, middle = data[:aes_len], data[aes_len: len(data) - xor_len]
    tail = data[len(data) - xor_len:] if xor_len else b""
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()
    ct = enc.update(padder.update(head) + padder.finalize()) + enc.finalize()
    magic = b"\x07\x08V1\x08\x07" if version == "V1" else b"\x07\x08V2\x08\x07"
    return magic + struct.pack("<II", aes_len, xor_len) + b"\x01" + ct + middle + dat_3x(tail, xor)


WIN3_XOR = 0x5A  # the simulated account's .dat byte
V4_XOR = 0x37
V4_IMAGE_KEY = b"7a1c0e3f9b2d4c68"  # the simulated 4.x account's V2 image key (16 ASCII characters)


@dataclass
class Row:
    """One message as the scenario means it; each writer stores it its platform's way."""

    talker: str
    sender: str | None  # None: a system row
    t: int  # epoch seconds; 0 = the client wrote no time
    base: int
    body: str | bytes  # text or XML (bytes: deliberately not valid UTF-8)
    sub: int | None = None
    svrid: int | None = None
    voice: bytes | None = None
    files: list[DeviceFile] = field(default_factory=list)  # media files beside the databases
    expect: dict[str, Any] | None = None  # None for personal rows
    work: bool = True
    prefix_in_body: bool = True  # v4: whether the group body also carries "wxid:\n"


def silk(seconds: float, seed: int) -> bytes:
    import pysilk

    n = int(24000 * seconds)
    pcm = b"".join(struct.pack("<h", int(6000 * math.sin((i + seed) / 9.0))) for i in range(n))
    out = io.BytesIO()
    pysilk.encode(io.BytesIO(pcm), out, 24000, 24000, tencent=True)
    return out.getvalue()


def _appmsg(sub: int, inner: str, title: str = "", frm: str = "") -> str:
    return (f'<msg><appmsg appid="" sdkver="0"><title>{escape(title)}</title><type>{sub}</type>{inner}</appmsg>'
            f"<fromusername>{escape(frm)}</fromusername></msg>")


class Scenario:
    """The rows of one device, deterministic in ``seed``."""

    def __init__(self, seed: int = 7, messages: int = 0, extra: int = 0):
        self.rng = random.Random(seed)
        self.seed = seed
        self.rows: list[Row] = []
        self.svrid = 7_000_000_000_000_000_000 + seed * 1_000_000
        self.t = START
        self._fixed()
        self._bulk(messages, "bulk")
        self.wal_from = len(self.rows)  # rows from here on stay in the -wal file
        self._tail()
        self.base_count = len(self.rows)
        self._bulk(extra, "extra")

    def _next_id(self) -> int:
        self.svrid += self.rng.randint(1, 97)
        return self.svrid

    def _tick(self) -> int:
        self.t += self.rng.randint(1, 90)
        return self.t

    def add(self, talker: str, sender: str | None, base: int, body: str | bytes, kind: str, text: str | None = None,
            sub: int | None = None, svrid: bool = True, t: int | None = None, **expect: Any) -> Row:
        work = talker not in (PERSONAL_GROUP, "wxid_friend01", "wxid_friend02")
        row = Row(talker, sender, self._tick() if t is None else t, base, body, sub=sub,
                  svrid=self._next_id() if svrid else None, work=work)
        if work:
            row.expect = {"conversation_id": talker, "sender": sender, "kind": kind,
                          "text": text if text is not None else (body if isinstance(body, str) else None),
                          "sent_at": row.t * 1000 if row.t else None, **expect}
        self.rows.append(row)
        return row

    def _fixed(self) -> None:
        c1, c2, c3, c4, col, oi = "wxid_client01", "wxid_client02", "wxid_client03", "wxid_client04", "wxid_colleague01", "wm_ext01@openim"
        g = WORK_GROUP
        first = self.add(c1, c1, 1, "您好，报价单今天能发吗？", "text")
        self.add(c1, OWNER, 1, "可以，下午发您 👍 Quote coming this afternoon.", "text")
        self.add(c1, c1, 1, "<img src=x onerror=alert(1)>", "text")
        self.add(c2, c2, 1, "王总您好，合同第三条需要修改", "text")
        self.add(c3, c3, 1, "Meeting moved to Friday 10:00 HKT", "text")
        self.add(c4, c4, 1, "Zoë here 👩‍👩‍👧 — 收到", "text")
        self.add(col, col, 1, "客户那边我跟进一下", "text")
        self.add(oi, oi, 1, "企业微信联系人发来的消息", "text")
        # invalid UTF-8 in the body (case X2): kept raw, shown with replacement characters
        self.add(c1, c1, 1, "价格".encode() + b"\xff\xfe" + "确认".encode(), "text", text="价格\ufffd\ufffd确认",
                 flags=["invalid_text"])
        # group: sender in the body prefix / BytesExtra / Name2Id (case P2)
        gm = self.add(g, c1, 1, "明天见", "text")
        self.add(g, OWNER, 1, "好的，明天十点", "text")
        self.add(g, col, 1, "我也参加 meeting", "text")
        # media: on the device (each platform's wrapping), thumbnail only, or never downloaded
        photo = png(40, 30, self.seed)
        img = f'<msg><img md5="{hashlib.md5(photo).hexdigest()}" length="{len(photo)}" hdlength="{len(photo)}"/></msg>'
        im = self.add(c1, c1, 3, img, "image", text="", attachments=["image:present"],
                      media_sha256=[hashlib.sha256(photo).hexdigest()])
        im.files = [DeviceFile("image", photo), DeviceFile("image", jpeg_like(300, self.seed), role="thumb")]
        scan = jpeg_like(5000, self.seed + 1)
        thumb = jpeg_like(200, self.seed + 2)
        th = self.add(c2, c2, 3, f'<msg><img md5="{hashlib.md5(scan).hexdigest()}" length="{len(scan)}"/></msg>', "image",
                      text="", attachments=["image:present"], media_sha256=[hashlib.sha256(thumb).hexdigest()],
                      media_reason="only the thumbnail")
        th.files = [DeviceFile("image", thumb, role="thumb")]
        self.add(c2, OWNER, 3, f'<msg><img md5="{hashlib.md5(b"gone").hexdigest()}" length="9000"/></msg>', "image",
                 text="", attachments=["image:missing"])
        chart = png(24, 24, self.seed + 5)
        v2 = self.add(c3, c3, 3, f'<msg><img md5="{hashlib.md5(chart).hexdigest()}" length="{len(chart)}"/></msg>', "image",
                      text="", attachments=["image:present"], media_sha256=[hashlib.sha256(chart).hexdigest()])
        v2.files = [DeviceFile("image", chart, v2=True)]
        v = self.add(c1, c1, 34, '<msg><voicemsg endflag="1" length="2164" voicelength="1000"/></msg>', "voice",
                     text="", attachments=["voice:present", "voice_wav:present"])
        v.voice = silk(1.0, self.seed)
        movie = mp4_like(20000, self.seed)
        vid = f'<msg><videomsg length="{len(movie)}" playlength="12" md5="{hashlib.md5(movie).hexdigest()}"/></msg>'
        vr = self.add(c1, OWNER, 43, vid, "video", text="", attachments=["video:present"],
                      media_sha256=[hashlib.sha256(movie).hexdigest()])
        vr.files = [DeviceFile("video", movie), DeviceFile("image", jpeg_like(150, self.seed + 3), role="thumb")]
        self.add(c1, c1, 47, f'<msg><emoji md5="{hashlib.md5(b"e").hexdigest()}" cdnurl="http://emoji.qpic.cn/wx_emoji/x" len="2048"/></msg>',
                 "emotion", text="", attachments=["emotion:missing"])
        self.add(c2, c2, 48, '<msg><location x="22.2783" y="114.1747" scale="16" label="香港中环皇后大道中99号" poiname="中环中心"/></msg>',
                 "location", text="中环中心 香港中环皇后大道中99号")
        self.add(c2, c2, 42, '<msg username="wxid_referral" nickname="推荐客户 Referral" alias="ref_2024"/>', "card",
                 text="推荐客户 Referral ref_2024")
        sheet = xlsx_like(self.seed)
        fx = _appmsg(6, f"<des></des><appattach><totallen>{len(sheet)}</totallen><fileext>xlsx</fileext></appattach>"
                        f"<md5>{hashlib.md5(sheet).hexdigest()}</md5>", "报价单✅.xlsx", c1)
        fr = self.add(c1, c1, 49, fx, "file", text="报价单✅.xlsx", sub=6, attachments=["file:present"],
                      media_sha256=[hashlib.sha256(sheet).hexdigest()])
        fr.files = [DeviceFile("file", sheet, name="报价单✅.xlsx")]
        lx = _appmsg(5, "<des>Summary text of the update</des><url>https://mp.weixin.qq.com/s/AbCd</url>"
                        "<sourcedisplayname>Acme News</sourcedisplayname>", "Quarterly update", c3)
        self.add(c3, c3, 49, lx, "link", text="Quarterly update Summary text of the update", sub=5)
        self.add(c3, c3, 49, _appmsg(5, "<url>javascript:alert(1)</url><des>click</des>", "Bad link", c3), "link",
                 text="Bad link click", sub=5)
        # quote of a text (reply_to = the quoted server id) and of an image (escaped XML content, case C3)
        q = (f"<refermsg><type>1</type><svrid>{first.svrid}</svrid><fromusr>{c1}</fromusr><displayname>Zhang San</displayname>"
             f"<content>{escape('您好，报价单今天能发吗？')}</content><createtime>{first.t}</createtime></refermsg>")
        self.add(c1, OWNER, 49, _appmsg(57, q, "已发，请查收", OWNER), "text", text="已发，请查收", sub=57,
                 reply_to=str(first.svrid), quote_text="您好，报价单今天能发吗？")
        qi = (f"<refermsg><type>3</type><svrid>{im.svrid}</svrid><fromusr>{c1}</fromusr><displayname>Zhang San</displayname>"
              f"<content>{escape(img)}</content></refermsg>")
        self.add(c1, OWNER, 49, _appmsg(57, qi, "这张图不清楚", OWNER), "text", text="这张图不清楚", sub=57,
                 reply_to=str(im.svrid), quote_text="[image]")
        gq = (f"<refermsg><type>1</type><svrid>{gm.svrid}</svrid><fromusr>{g}</fromusr><chatusr>{c1}</chatusr>"
              f"<displayname>张三</displayname><content>明天见</content></refermsg>")
        self.add(g, col, 49, _appmsg(57, gq, "几点？", col), "text", text="几点？", sub=57, reply_to=str(gm.svrid),
                 quote_text="明天见")
        # chat record with a nested record (case C4 / WeChatMsg #186)
        nested = ('<recordinfo><title>Inner</title><datalist count="1"><dataitem datatype="1" dataid="n1">'
                  "<sourcename>Bob</sourcename><datadesc>nested item text</datadesc></dataitem></datalist></recordinfo>")
        rec = ('<recordinfo><title>Chat history of Zhang San and Li Wei</title><datalist count="3">'
               '<dataitem datatype="1" dataid="a1"><sourcename>Zhang San</sourcename><sourcetime>2024-03-08 10:00</sourcetime>'
               "<datadesc>first record line</datadesc><srcMsgCreateTime>1709892000</srcMsgCreateTime></dataitem>"
               '<dataitem datatype="8" dataid="a2"><sourcename>Li Wei</sourcename><datatitle>spec.docx</datatitle>'
               "<datafmt>docx</datafmt><datasize>20480</datasize></dataitem>"
               f'<dataitem datatype="17" dataid="a3"><sourcename>Li Wei</sourcename><datatitle>Inner</datatitle>'
               f"<recordxml>{nested}</recordxml></dataitem></datalist></recordinfo>")
        rx = _appmsg(19, f"<des>Zhang San: first record line</des><recorditem><![CDATA[{rec}]]></recorditem>",
                     "Chat history of Zhang San and Li Wei", c1)
        self.add(c1, c1, 49, rx, "chat_record", sub=19, attachments=["file:missing"],
                 text="Chat history of Zhang San and Li Wei\nZhang San: first record line\nLi Wei: spec.docx\n"
                      "Li Wei: Inner\nBob: nested item text")
        self.add(c2, c2, 49, _appmsg(33, "<sourcedisplayname>报价小程序</sourcedisplayname><weappinfo><username>gh_mini@app</username>"
                                         "<appid>wx1234</appid></weappinfo>", "查看报价", c2), "mini_program",
                 text="查看报价 报价小程序", sub=33)
        self.add(c2, c2, 49, _appmsg(51, "<finderFeed><nickname>ACME Live</nickname><desc>新品发布</desc></finderFeed>",
                                     "视频号", c2), "channels", text="视频号 ACME Live 新品发布", sub=51)
        self.add(c1, c1, 49, _appmsg(2000, "<wcpayinfo><paysubtype>1</paysubtype><feedesc>￥5000.00</feedesc>"
                                           "<pay_memo>定金</pay_memo></wcpayinfo>", "微信转账", c1),
                 "red_packet", text="微信转账 ￥5000.00 定金", sub=2000)
        self.add(g, c1, 49, _appmsg(2001, "<wcpayinfo><sendertitle>恭喜发财</sendertitle><scenetext>微信红包</scenetext></wcpayinfo>",
                                    "微信红包", c1), "red_packet", text="微信红包 恭喜发财", sub=2001)
        self.add(c1, OWNER, 50, '<voipmsg type="VoIPBubbleMsg"><VoIPBubbleMsg><msg><![CDATA[通话时长 02:41]]></msg></VoIPBubbleMsg></voipmsg>',
                 "call", text="通话时长 02:41")
        # a long, very repetitive app message: lz4 ratio far above 4 (case W1 / wx-dump-4j #27)
        long_des = "重复条款 " * 3000
        self.add(c3, c3, 49, _appmsg(5, f"<des>{long_des}</des><url>https://example.com/t</url>", "Terms", c3), "link",
                 text=f"Terms {long_des.strip()}", sub=5)
        self.add(g, None, 10000, '"Li Wei 李伟"邀请"Stranger in the group"加入了群聊', "system", svrid=False, sender_none=True)
        # recall of an earlier group message; the original stays, marked recalled (case C2)
        doomed = self.add(g, c1, 1, "这条消息会被撤回", "text", recalled=True)
        rv = (f'<sysmsg type="revokemsg"><revokemsg><session>{g}</session><oldmsgid>1</oldmsgid><msgid>2</msgid>'
              f'<newmsgid>{doomed.svrid}</newmsgid><replacemsg><![CDATA["张三" 撤回了一条消息]]></replacemsg></revokemsg></sysmsg>')
        self.add(g, None, 10002, rv, "recall", text='"张三" 撤回了一条消息', recalls=str(doomed.svrid), sender_none=True)
        pat = (f'<sysmsg type="pat"><pat><fromusername>{col}</fromusername><chatusername>{g}</chatusername>'
               f'<pattedusername>{OWNER}</pattedusername><template><![CDATA["${{{col}}}" 拍了拍 "${{{OWNER}}}"]]></template></pat></sysmsg>')
        self.add(g, None, 10002, pat, "system", text=f'"{col}" 拍了拍 "{OWNER}"', sender_none=True)
        # two identical notices in one second, without server ids: two messages, not one
        same = self._tick()
        for _ in range(2):
            self.add(c1, None, 10000, "你已添加了张三，现在可以开始聊天了。", "system", svrid=False, t=same, sender_none=True)
        # a row with createTime 0: unknown time, never 1970 (case T2)
        self.add(c2, c2, 1, "没有时间的消息", "text", t=0, flags=["unknown_time"])
        # an unknown future type: kept, as "other", with its body
        self.add(c3, c3, 12345, "<msg><future>new type</future></msg>", "other", text="new type")
        # personal chats: never captured
        for who in ("wxid_friend01", "wxid_friend02"):
            self.add(who, who, 1, f"{MARKER}-{who} 晚上回家吃饭吗", "text")
            self.add(who, OWNER, 1, f"{MARKER}-{who} 好的", "text")
        self.add(PERSONAL_GROUP, "wxid_friend01", 1, f"{MARKER}-family 周末聚餐", "text")
        # a personal photo on the device: its bytes must never reach the archive either
        family = b"\xff\xd8\xff\xe0" + f"{MARKER}-photo".encode() * 20 + b"\xff\xd9"
        fp = self.add("wxid_friend01", "wxid_friend01", 3,
                      f'<msg><img md5="{hashlib.md5(family).hexdigest()}" length="{len(family)}"/></msg>', "image")
        fp.files = [DeviceFile("image", family)]

    def _bulk(self, n: int, tag: str) -> None:
        talkers = ["wxid_client01", "wxid_client02", "wxid_client03", WORK_GROUP, "wxid_friend01", PERSONAL_GROUP]
        senders = {WORK_GROUP: ["wxid_client01", "wxid_colleague01", OWNER], PERSONAL_GROUP: ["wxid_friend01", OWNER]}
        rng = self.rng
        for i in range(n):
            talker = talkers[i % len(talkers)]
            sender = rng.choice(senders.get(talker, [talker, OWNER]))
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
            work = talker not in (PERSONAL_GROUP, "wxid_friend01")
            text = f"{tag} {i} {words}" if work else f"{MARKER} {tag} {i} {words}"
            self.add(talker, sender, 1, text, "text")

    def _tail(self) -> None:
        # the newest messages: only in the -wal file (case W3)
        self.add("wxid_client01", "wxid_client01", 1, "最新消息，只在WAL里 newest (WAL only)", "text")
        self.add(WORK_GROUP, "wxid_colleague01", 1, "群里最新一条 WAL", "text")


# ---- writing databases ----------------------------------------------------------------------


def _connect(path: Path, compat: int, page: int, key: bytes | str):
    import sqlcipher3

    conn = sqlcipher3.connect(str(path))
    conn.execute(f"PRAGMA cipher_default_compatibility = {compat}")
    conn.execute(f"PRAGMA cipher_default_page_size = {page}")
    if isinstance(key, bytes):
        conn.set_key(key)
    else:
        conn.execute(f"PRAGMA key = '{key}'")
    conn.execute("PRAGMA journal_mode = WAL")  # the first access: the cipher settings are now fixed
    # the defaults are process-wide: put SQLCipher 4's back for every other connection of this process
    conn.execute("PRAGMA cipher_default_compatibility = 4")
    conn.execute("PRAGMA cipher_default_page_size = 4096")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("PRAGMA synchronous = OFF")
    return conn


class _Db:
    """A database written in a scratch folder, then copied out *with* its -wal while open."""

    def __init__(self, final: Path, compat: int, page: int, key: bytes | str, scratch: Path):
        self.final = final
        self.work = scratch / f"{len(list(scratch.iterdir()))}-{final.name}"
        self.conn = _connect(self.work, compat, page, key)
        self.split = False

    def finish(self) -> None:
        """Copy out; the -wal goes along only after a mid-way checkpoint (the rows since stay in it)."""
        if not self.split:
            self.checkpoint()
        self.conn.commit()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.work, self.final)
        wal = Path(str(self.work) + "-wal")
        if wal.exists() and wal.stat().st_size:
            shutil.copyfile(wal, Path(str(self.final) + "-wal"))
        self.conn.close()

    def checkpoint(self, split: bool = False) -> None:
        self.conn.commit()
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.split = self.split or split


def _gbody(row: Row) -> bytes:
    body = row.body if isinstance(row.body, bytes) else row.body.encode()
    return body


def _android_type(row: Row) -> int:
    codes = {57: 822083633, 6: 1090519089, 5: 49, 19: 49, 2000: 419430449, 2001: 436207665, 33: 805306417, 51: 754974769}
    return codes.get(row.sub, 49) if row.base == 49 else row.base


def write_android(out: Path, sc: Scenario, scratch: Path, rows: list[Row]) -> dict[str, Any]:
    passphrase = hashlib.md5((ANDROID_IMEI + ANDROID_UIN).encode()).hexdigest()[:7]
    userdir = out / "MicroMsg" / hashlib.md5(("mm" + ANDROID_UIN).encode()).hexdigest()
    db = _Db(userdir / "EnMicroMsg.db", 1, 1024, passphrase, scratch)
    c = db.conn
    c.execute("CREATE TABLE message ( msgId INTEGER PRIMARY KEY, msgSvrId INTEGER , type INT, status INT, isSend INT, "
              "isShowTimer INTEGER, createTime INTEGER, talker TEXT, content TEXT, imgPath TEXT, reserved TEXT, "
              "lvbuffer BLOB, transContent TEXT,transBrandWording TEXT ,talkerId INTEGER, bizClientMsgId TEXT, "
              "bizChatId INTEGER DEFAULT -1, bizChatUserId TEXT, msgSeq INTEGER, flag INT, solitaireFoldInfo BLOB, "
              "historyId TEXT)")
    c.execute("CREATE INDEX messageTalkerIdIndex ON message ( talker, msgId )")
    c.execute("CREATE INDEX messageSvrIdIndex ON message ( msgSvrId )")
    c.execute("CREATE TABLE rcontact (username TEXT PRIMARY KEY, alias TEXT, conRemark TEXT, domainList TEXT, "
              "nickname TEXT, pyInitial TEXT, quanPin TEXT, showHead INTEGER, type INTEGER, uiType LONG, "
              "weiboFlag INTEGER, weiboNickname TEXT, conRemarkPYFull TEXT, conRemarkPYShort TEXT, lvbuff BLOB, "
              "verifyFlag INTEGER, encryptUsername TEXT, chatroomFlag INTEGER, deleteFlag INTEGER, "
              "contactLabelIds TEXT, descWordingId TEXT, openImAppid TEXT, sourceExtInfo TEXT, ticket TEXT, "
              "usernameFlag LONG, contactExtra BLOB, createTime LONG)")
    c.execute("CREATE TABLE ContactLabel (labelID INTEGER PRIMARY KEY, labelName TEXT, labelPYFull TEXT, "
              "labelPYShort TEXT, createTime LONG, isTemporary INTEGER)")
    c.execute("CREATE TABLE chatroom (chatroomname TEXT PRIMARY KEY, addtime INTEGER, memberlist TEXT, "
              "displayname TEXT, chatroomnick TEXT, roomflag INTEGER, roomowner TEXT, roomdata BLOB, "
              "isShowname INTEGER, selfDisplayName TEXT, style INTEGER, chatroomdataflag INTEGER, modifytime LONG, "
              "chatroomnotice TEXT, memberCount INTEGER)")
    c.execute("CREATE TABLE userinfo (id INTEGER PRIMARY KEY, type INT, value TEXT)")
    c.execute("CREATE TABLE ImgInfo2 (id INTEGER PRIMARY KEY, msgSvrId LONG, offset INT, totalLen INT, bigImgPath TEXT, "
              "thumbImgPath TEXT, createtime INT, msglocalid INT, status INT, nettimes INT, reserved1 INT, "
              "reserved2 INT, reserved3 TEXT, reserved4 TEXT, hashdthumb INT, iscomplete INT DEFAULT 1, "
              "origImgMD5 TEXT, compressType INT DEFAULT 0, midImgPath TEXT, forwardType INT DEFAULT 0, hevcPath TEXT, "
              "sendImgType INT DEFAULT 0, originSourceMd5 TEXT, msgTalker TEXT)")
    c.executemany("INSERT INTO userinfo VALUES (?, ?, ?)", [(2, 3, OWNER), (4, 3, OWNER_NAME), (42, 3, "liwei_fin")])
    c.execute("INSERT INTO ContactLabel (labelID, labelName) VALUES (1, '客户'), (2, 'Family')")
    _contacts(lambda p, labels: c.execute(
        "INSERT INTO rcontact (username, alias, conRemark, nickname, type, contactLabelIds) VALUES (?, ?, ?, ?, 3, ?)",
        (p.id, p.alias, p.remark, p.nickname, labels)), {"客户": "1", "Family": "2"})
    for gid, (name, members) in GROUPS.items():
        c.execute("INSERT INTO rcontact (username, nickname, type) VALUES (?, ?, 3)", (gid, name))
        c.execute("INSERT INTO chatroom (chatroomname, memberlist, displayname, roomowner) VALUES (?, ?, ?, ?)",
                  (gid, ";".join(members), "、".join(members), members[1]))
    voice_dir = userdir / "voice2"

    def put(batch: list[Row], start_id: int) -> None:
        vals = []
        for i, r in enumerate(batch, start_id):
            body = _gbody(r)
            if r.talker.endswith("@chatroom") and r.sender not in (OWNER, None):
                body = r.sender.encode() + b":\n" + body
            img = None
            if r.voice is not None:
                img = f"voice{i}"
                h = hashlib.md5(img.encode()).hexdigest()
                f = voice_dir / h[:2] / h[2:4] / f"msg_{img}.amr"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(r.voice)
            elif r.base == 3:  # image2/<n[0:2]>/<n[2:4]>/<n>: the full image named in ImgInfo2, the th_ thumbnail in imgPath
                t = hashlib.md5(f"th{r.svrid}".encode()).hexdigest()
                img = f"THUMBNAIL_DIRPATH://th_{t}"
                big = f"{hashlib.md5(f'big{r.svrid}'.encode()).hexdigest()}.jpg"
                full = [f for f in r.files if f.role == "full"]
                c.execute("INSERT INTO ImgInfo2 (msgSvrId, bigImgPath, thumbImgPath, msglocalid, msgTalker) "
                          "VALUES (?, ?, ?, ?, ?)", (r.svrid, big if full else f"SERVERID://{r.svrid}", f"th_{t}", i, r.talker))
                for df in r.files:
                    n, h = (big, big) if df.role == "full" else (f"th_{t}", t)
                    _write(userdir / "image2" / h[:2] / h[2:4] / n, df.data)
            elif r.base == 43:
                img = f"{r.t}{r.svrid % 100000}"
                for df in r.files:
                    _write(userdir / "video" / (f"{img}.mp4" if df.kind == "video" else f"{img}.jpg"), df.data)
            vals.append((i, r.svrid or 0, _android_type(r), 1 if r.sender == OWNER else 0, r.t * 1000,
                         r.talker, body, img))
        c.executemany("INSERT INTO message (msgId, msgSvrId, type, isSend, createTime, talker, content, imgPath) "
                      "VALUES (?, ?, ?, ?, ?, ?, CAST(? AS TEXT), ?)", vals)

    put(rows[: sc.wal_from], 1)
    db.checkpoint(split=True)
    put(rows[sc.wal_from:], sc.wal_from + 1)
    db.finish()
    return {"key": passphrase, "imei": ANDROID_IMEI, "uin": ANDROID_UIN, "path": str(out)}


def _contacts(insert: Callable[[Person, str], Any], label_ids: dict[str, str]) -> None:
    for p in PEOPLE:
        insert(p, ",".join(label_ids[x] for x in p.labels if x in label_ids))


def _write(f: Path, data: bytes) -> None:
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data)


def _bytes_extra(sender: str | None, paths: dict[int, str] | None = None) -> bytes:
    attrs = [(1, encode_fields([(1, 1), (2, 0)]))]
    if sender:
        attrs.append((3, encode_fields([(1, 1), (2, sender.encode())])))
    for t, path in sorted((paths or {}).items()):
        attrs.append((3, encode_fields([(1, t), (2, path.encode())])))
    attrs.append((3, encode_fields([(1, 7), (2, b"<msgsource><atuserlist></atuserlist></msgsource>")])))
    return encode_fields(attrs)


def _room_data(members: list[str], names: dict[str, str]) -> bytes:
    return encode_fields([(1, encode_fields([(1, m.encode()), (2, names.get(m, "").encode())])) for m in members])


def write_win3(out: Path, sc: Scenario, scratch: Path, rows: list[Row], key: bytes) -> dict[str, Any]:
    import lz4.block

    msg = out / "WeChat Files" / OWNER / "Msg"
    micro = _Db(msg / "MicroMsg.db", 3, 4096, key, scratch)
    m = micro.conn
    m.execute("CREATE TABLE Contact(UserName TEXT PRIMARY KEY, Alias TEXT, EncryptUserName TEXT, DelFlag INTEGER, "
              "Type INTEGER, VerifyFlag INTEGER, Reserved1 INTEGER, Reserved2 INTEGER, Reserved3 TEXT, Reserved4 TEXT, "
              "Remark TEXT, NickName TEXT, LabelIDList TEXT, DomainList TEXT, ChatRoomType int, PYInitial TEXT, "
              "QuanPin TEXT, RemarkPYInitial TEXT, RemarkQuanPin TEXT, BigHeadImgUrl TEXT, SmallHeadImgUrl TEXT, "
              "HeadImgMd5 TEXT, ChatRoomNotify INTEGER, Reserved5 INTEGER, Reserved6 TEXT, Reserved7 TEXT, "
              "ExtraBuf BLOB, Reserved8 INTEGER, Reserved9 INTEGER, Reserved10 TEXT, Reserved11 TEXT)")
    m.execute("CREATE TABLE ContactLabel(LabelId TEXT PRIMARY KEY, LabelName TEXT, CreateTime INTEGER)")
    m.execute("CREATE TABLE ChatRoom(ChatRoomName TEXT PRIMARY KEY, UserNameList TEXT, DisplayNameList TEXT, "
              "ChatRoomFlag int Default 0, Owner INTEGER DEFAULT 0, IsShowName INTEGER DEFAULT 0, SelfDisplayName TEXT, "
              "Reserved1 INTEGER DEFAULT 0, Reserved2 TEXT, Reserved3 INTEGER DEFAULT 0, Reserved4 TEXT, "
              "Reserved5 INTEGER DEFAULT 0, Reserved6 TEXT, RoomData BLOB, Reserved7 INTEGER DEFAULT 0, Reserved8 TEXT)")
    m.execute("INSERT INTO ContactLabel VALUES ('1', '客户', 0), ('2', 'Family', 0)")
    _contacts(lambda p, labels: m.execute(
        "INSERT INTO Contact (UserName, Alias, Remark, NickName, LabelIDList, Type, Reserved1) VALUES (?, ?, ?, ?, ?, 3, 1)",
        (p.id, p.alias, p.remark, p.nickname, labels)), {"客户": "1", "Family": "2"})
    for gid, (name, members) in GROUPS.items():
        m.execute("INSERT INTO Contact (UserName, NickName, Type, Reserved1) VALUES (?, ?, 2, 1)", (gid, name))
        m.execute("INSERT INTO ChatRoom (ChatRoomName, UserNameList, DisplayNameList, Reserved2, RoomData) VALUES (?, ?, ?, ?, ?)",
                  (gid, "^G".join(members), "^G".join(members), members[1], _room_data(members, {"wxid_client01": "张三"})))
    micro.finish()
    media = _Db(msg / "Multi" / "MediaMSG0.db", 3, 4096, key, scratch)
    media.conn.execute("CREATE TABLE Media(Key TEXT, Reserved0 INT, Buf BLOB, Reserved1 INT, Reserved2 TEXT)")
    media.conn.execute("CREATE INDEX MediaReserved0 ON Media(Reserved0)")
    cols0 = ("localId INTEGER PRIMARY KEY AUTOINCREMENT, TalkerId INT DEFAULT 0, MsgSvrID INT, Type INT, SubType INT, "
             "IsSender INT, CreateTime INT, Sequence INT DEFAULT 0, StatusEx INT DEFAULT 0, FlagEx INT, Status INT, "
             "MsgServerSeq INT, MsgSequence INT, StrTalker TEXT, StrContent TEXT, DisplayContent TEXT, "
             "Reserved0 INT DEFAULT 0, Reserved1 INT DEFAULT 0, Reserved2 INT DEFAULT 0, Reserved3 INT DEFAULT 0, "
             "Reserved4 TEXT, Reserved5 TEXT, Reserved6 TEXT, CompressContent BLOB, BytesExtra BLOB, BytesTrans BLOB")
    # the second shard was written by another client build: no Reserved6/BytesTrans, an extra column (case W4)
    cols1 = cols0.replace(", Reserved6 TEXT", "").replace(", BytesTrans BLOB", ", BytesTrans2 BLOB, NewFlag INT")
    half = max(1, sc.wal_from // 2)
    shards = [(rows[:half], cols0, "MSG0.db"), (rows[half:], cols1, "MSG1.db")]
    lid = 0
    for part, cols, name in shards:
        db = _Db(msg / "Multi" / name, 3, 4096, key, scratch)
        c = db.conn
        c.execute(f"CREATE TABLE MSG ({cols})")
        c.execute("CREATE INDEX MSGTalker ON MSG(StrTalker, localId)")
        c.execute("CREATE TABLE Name2ID(UsrName TEXT PRIMARY KEY)")
        c.execute("CREATE TABLE DBInfo(tableIndex INTEGER PRIMARY KEY, tableVersion INTEGER, tableDesc TEXT)")
        talkers: dict[str, int] = {}
        wal_at = sc.wal_from - (0 if name == "MSG0.db" else half)
        for n, r in enumerate(part):
            if n == wal_at:
                db.checkpoint(split=True)
            lid += 1
            body = _gbody(r)
            str_content, compress = body, None
            if r.base == 49 and r.sub in (57, 19, 5, 2000, 2001, 51, 33):
                compress, str_content = lz4.block.compress(body, store_size=False), b""
            group = r.talker.endswith("@chatroom")
            extra = _bytes_extra(r.sender if group and r.sender not in (OWNER, None) else None,
                                 _win3_files(out / "WeChat Files", r))
            if r.expect and r.expect.get("win3_no_sender"):
                extra = _bytes_extra(None)
            tid = talkers.setdefault(r.talker, len(talkers) + 1)
            c.execute("INSERT INTO MSG (localId, TalkerId, MsgSvrID, Type, SubType, IsSender, CreateTime, Sequence, "
                      "StrTalker, StrContent, CompressContent, BytesExtra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS TEXT), ?, ?)",
                      (lid, tid, r.svrid or 0, r.base, r.sub or 0, 1 if r.sender == OWNER else 0, r.t, r.t * 1000 + n % 1000,
                       r.talker, str_content, compress, extra))
            if r.voice is not None:
                media.conn.execute("INSERT INTO Media (Key, Reserved0, Buf) VALUES (?, ?, ?)", (str(lid), r.svrid, r.voice))
        c.executemany("INSERT INTO Name2ID (UsrName) VALUES (?)", [(t,) for t in talkers])
        c.execute("INSERT INTO DBInfo VALUES (1, 1, ?)", (f"Start Time {START * 1000}",))
        db.finish()
    media.finish()
    return {"key": key.hex(), "path": str(out / "WeChat Files" / OWNER)}


def _win3_files(root: Path, r: Row) -> dict[int, str]:
    """Place a row's media as Windows 3.x does (``FileStorage``; images XOR-wrapped ``.dat``) and
    return the ``BytesExtra`` paths: 4 the file, 3 its thumbnail."""
    if r.base not in (3, 43) and not (r.base == 49 and r.sub == 6):
        return {}
    month = time.strftime("%Y-%m", time.gmtime(r.t))
    h = hashlib.md5(f"w{r.svrid}".encode()).hexdigest()
    if r.base == 3:
        paths = {4: f"{OWNER}\\FileStorage\\MsgAttach\\{hashlib.md5(r.talker.encode()).hexdigest()}\\Image\\{month}\\{h}.dat",
                 3: f"{OWNER}\\FileStorage\\MsgAttach\\{hashlib.md5(r.talker.encode()).hexdigest()}\\Thumb\\{month}\\{h}_t.dat"}
        wrap = lambda d: dat_3x(d, WIN3_XOR)  # noqa: E731
    elif r.base == 43:
        paths = {4: f"{OWNER}\\FileStorage\\Video\\{month}\\{h}.mp4", 3: f"{OWNER}\\FileStorage\\Video\\{month}\\{h}.jpg"}
        wrap = lambda d: d  # noqa: E731
    else:
        name = next((f.name for f in r.files if f.name), f"{h}.bin")
        paths = {4: f"{OWNER}\\FileStorage\\File\\{month}\\{name}"}
        wrap = lambda d: d  # noqa: E731
    for df in r.files:
        rel = paths[4] if df.role == "full" else paths.get(3)
        if rel:
            _write(root.joinpath(*rel.split("\\")), wrap(df.data))
    return paths


def _v4_files(account: Path, r: Row) -> bytes | None:
    """Place a row's media as 4.x does (``msg/attach``, ``msg/video``, ``msg/file``; images in
    V1/V2 ``.dat``) and return its ``packed_info_data`` (image md5 in 3.4, video md5 in 4.8)."""
    if r.base not in (3, 43) and not (r.base == 49 and r.sub == 6):
        return None
    month = time.strftime("%Y-%m", time.gmtime(r.t))
    name = hashlib.md5(f"v4-{r.svrid}".encode()).hexdigest()
    packed = None
    for df in r.files:
        if r.base == 3:
            d = account / "msg" / "attach" / hashlib.md5(r.talker.encode()).hexdigest() / month / "Img"
            if df.v2:
                _write(d / f"{name}.dat", dat_v4(df.data, V4_IMAGE_KEY, V4_XOR, "V2"))
            else:
                _write(d / (f"{name}.dat" if df.role == "full" else f"{name}_t.dat"), dat_v4(df.data, b"cfcd208495d565ef", V4_XOR))
        elif r.base == 43 and df.kind == "video":
            _write(account / "msg" / "video" / month / f"{name}.mp4", df.data)
        elif r.base == 43:
            _write(account / "msg" / "video" / month / f"{name}_thumb.jpg", df.data)
        else:
            _write(account / "msg" / "file" / month / (df.name or name), df.data)
    if r.base == 3:
        packed = encode_fields([(1, 106), (2, 14), (3, encode_fields([(4, name.encode())]))])
    elif r.base == 43:
        packed = encode_fields([(1, 106), (2, 14), (4, encode_fields([(8, name.encode())]))])
    return packed


def write_v4(out: Path, sc: Scenario, scratch: Path, rows: list[Row], key: bytes) -> dict[str, Any]:
    import zstandard

    z = zstandard.ZstdCompressor()
    store = out / "xwechat_files" / f"{OWNER}_a1b2" / "db_storage"
    contact = _Db(store / "contact" / "contact.db", 4, 4096, key, scratch)
    k = contact.conn
    k.execute("CREATE TABLE contact(id INTEGER PRIMARY KEY, username TEXT, local_type INTEGER, alias TEXT, "
              "encrypt_username TEXT, flag INTEGER, delete_flag INTEGER, verify_flag INTEGER, remark TEXT, "
              "remark_quan_pin TEXT, remark_pin_yin_initial TEXT, nick_name TEXT, pin_yin_initial TEXT, quan_pin TEXT, "
              "big_head_url TEXT, small_head_url TEXT, head_img_md5 TEXT, chat_room_notify INTEGER, "
              "is_in_chat_room INTEGER, description TEXT, extra_buffer BLOB, chat_room_type INTEGER)")
    k.execute("CREATE TABLE chat_room(id INTEGER PRIMARY KEY, username TEXT, owner TEXT, ext_buffer BLOB)")
    k.execute("CREATE TABLE contact_label(label_id_ INTEGER PRIMARY KEY, label_name_ TEXT, sort_order_ INTEGER)")
    for p in PEOPLE:
        k.execute("INSERT INTO contact (username, local_type, alias, remark, nick_name, description) VALUES (?, ?, ?, ?, ?, ?)",
                  (p.id, 5 if p.id.endswith("@openim") else 1, p.alias, p.remark, p.nickname,
                   "客户 ACME" if "客户" in p.labels else None))
    for gid, (name, members) in GROUPS.items():
        k.execute("INSERT INTO contact (username, local_type, nick_name) VALUES (?, 2, ?)", (gid, name))
        k.execute("INSERT INTO chat_room (username, owner, ext_buffer) VALUES (?, ?, ?)",
                  (gid, members[1], _room_data(members, {"wxid_client01": "张三"})))
    contact.finish()
    media = _Db(store / "message" / "media_0.db", 4, 4096, key, scratch)
    media.conn.execute("CREATE TABLE VoiceInfo(chat_name_id INTEGER, create_time INTEGER, local_id INTEGER, "
                       "svr_id INTEGER, voice_data BLOB, data_index TEXT DEFAULT '0')")
    media.conn.execute("CREATE INDEX VoiceInfo_SVR ON VoiceInfo(svr_id)")
    half = max(1, sc.wal_from // 2)
    for part, name, wal_at in ((rows[:half], "message_0.db", None), (rows[half:], "message_1.db", sc.wal_from - half)):
        db = _Db(store / "message" / name, 4, 4096, key, scratch)
        c = db.conn
        c.execute("CREATE TABLE Name2Id(user_name TEXT PRIMARY KEY, is_session INTEGER)")
        c.execute("CREATE TABLE TimeStamp(timestamp INTEGER)")
        c.execute("INSERT INTO TimeStamp VALUES (?)", (part[0].t if part else START,))
        ids: dict[str, int] = {}
        tables: set[str] = set()
        lids: dict[str, int] = {}

        def name_id(u: str) -> int:
            if u not in ids:
                c.execute("INSERT INTO Name2Id (user_name) VALUES (?)", (u,))
                ids[u] = c.execute("SELECT rowid FROM Name2Id WHERE user_name = ?", (u,)).fetchone()[0]
            return ids[u]

        name_id(OWNER)
        pending: dict[str, list[tuple]] = {}
        for n, r in enumerate(part):
            if wal_at is not None and n == wal_at:
                for t, vals in pending.items():
                    c.executemany(f"INSERT INTO {t} VALUES ({', '.join('?' * 17)})", vals)
                pending = {}
                db.checkpoint(split=True)
            t = "Msg_" + hashlib.md5(r.talker.encode()).hexdigest()
            if t not in tables:
                tables.add(t)
                name_id(r.talker)
                c.execute(f"CREATE TABLE {t}(local_id INTEGER PRIMARY KEY AUTOINCREMENT, server_id INTEGER, "
                          "local_type INTEGER, sort_seq INTEGER, real_sender_id INTEGER, create_time INTEGER, "
                          "status INTEGER, upload_status INTEGER, download_status INTEGER, server_seq INTEGER, "
                          "origin_source INTEGER, source TEXT, message_content TEXT, compress_content TEXT, "
                          "packed_info_data BLOB, WCDB_CT_message_content INTEGER DEFAULT NULL, "
                          "WCDB_CT_source INTEGER DEFAULT NULL)")
                c.execute(f"CREATE INDEX {t}_SENDERID ON {t}(real_sender_id)")
                c.execute(f"CREATE INDEX {t}_SERVERID ON {t}(server_id)")
            lids[t] = lids.get(t, 0) + 1
            body = _gbody(r)
            group = r.talker.endswith("@chatroom")
            if group and r.sender not in (OWNER, None) and r.base == 1 and n % 2 == 0:
                body = r.sender.encode() + b":\n" + body
            ct = None
            if r.base == 49 or (r.base == 1 and len(body) > 64):
                body, ct = z.compress(body), 4
            sender_id = name_id(r.sender) if r.sender else 0
            lt = (r.sub << 32 | r.base) if r.base == 49 and r.sub else r.base
            content: Any = body
            pending.setdefault(t, []).append((lids[t], r.svrid or 0, lt, r.t * 1000 + n % 1000, sender_id, r.t,
                                              2 if r.sender == OWNER else 4, 0, 0, 0, 0, None,
                                              content if ct else _as_text(content), None,
                                              _v4_files(store.parent, r), ct, None))
            if r.voice is not None:
                media.conn.execute("INSERT INTO VoiceInfo (chat_name_id, create_time, local_id, svr_id, voice_data) "
                                   "VALUES (?, ?, ?, ?, ?)", (ids[r.talker], r.t, lids[t], r.svrid, r.voice))
            if sum(len(v) for v in pending.values()) >= 5000:
                for tt, vals in pending.items():
                    c.executemany(f"INSERT INTO {tt} VALUES ({', '.join('?' * 17)})", vals)
                pending = {}
        for t, vals in pending.items():
            c.executemany(f"INSERT INTO {t} VALUES ({', '.join('?' * 17)})", vals)
        db.finish()
    media.finish()
    return {"key": key.hex(), "path": str(out / "xwechat_files" / f"{OWNER}_a1b2")}


def _as_text(b: bytes) -> Any:
    """TEXT storage for a body: valid UTF-8 as str; otherwise the raw bytes CAST to TEXT later
    would need SQL, so they go in as a str with surrogates replaced by the exact bytes."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b  # stored as a BLOB; the reader treats it like text that is not valid UTF-8


# ---- the device folder ---------------------------------------------------------------------------


def _policy(out: Path, fmt: str) -> None:
    (out / "clients.csv").write_text("wxid,mobile,name\nwxid_client03,,\n,+86 138 1234 5678,\n,,Nobody Known\n",
                                     encoding="utf-8")
    (out / "policy.toml").write_text(
        'employee = "Li Wei"\n'
        + ('# 4.x keeps contact labels in contact.extra_buffer, which is not decoded: list the labelled client here\n'
           'work_contacts = ["wxid_client04", "wxid_client01"]\n' if fmt == "v4" else 'work_contacts = ["wxid_client04"]\n') +
        f'work_groups = ["{WORK_GROUP}"]\n'
        'work_labels = ["客户"]\n'
        'customer_list = "clients.csv"\n'
        'colleagues = ["wxid_colleague01"]\n'
        "openim_contacts = true\n", encoding="utf-8")


def generate_device(out: Path, fmt: str, messages: int = 0, extra: int = 0, seed: int = 7) -> dict[str, Any]:
    """Write one simulated device of ``fmt`` into ``out`` and return its answer key."""
    if fmt not in ("android", "win3", "v4"):
        raise ValueError(f"unknown format {fmt!r}")
    sc = Scenario(seed, messages, extra)
    rows = sc.rows
    out.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"wechat-device-key-{seed}".encode()).digest()
    with tempfile.TemporaryDirectory(prefix="wxarchive-wechat-gen-") as tmp:
        scratch = Path(tmp)
        if fmt == "android":
            info = write_android(out, sc, scratch, rows)
        elif fmt == "win3":
            info = write_win3(out, sc, scratch, rows, key)
        else:
            info = write_v4(out, sc, scratch, rows, key)
    (out / "key.txt").write_text(info["key"] + "\n", encoding="utf-8")
    os.chmod(out / "key.txt", 0o600)
    _policy(out, fmt)
    expected = []
    for r in rows:
        if r.expect is None:
            continue
        e = dict(r.expect)
        e["msgid"] = str(r.svrid) if r.svrid else None
        if fmt == "android" and e["kind"] == "file":  # Android keeps received files outside the account folder
            e["attachments"], e["media_sha256"] = ["file:missing"], []
        if e.pop("sender_none", False):
            e["sender"] = None
        expected.append(e)
    if fmt == "v4":
        (out / "image_key.txt").write_text(V4_IMAGE_KEY.decode() + "\n", encoding="utf-8")
        os.chmod(out / "image_key.txt", 0o600)
    answer = {"format": fmt, "owner": OWNER, "seed": seed, "device": info["path"], "key": info["key"],
              "image_key": V4_IMAGE_KEY.decode() if fmt == "v4" else None,
              "imei": info.get("imei"), "uin": info.get("uin"), "total": len(rows),
              "work": len(expected), "personal": len(rows) - len(expected), "base": sc.base_count,
              "wal_only": [str(r.svrid) for r in rows[sc.wal_from: sc.base_count]],
              "messages": expected}
    (out / "answer.json").write_text(json.dumps(answer, ensure_ascii=False, indent=1), encoding="utf-8")
    summary = {k: v for k, v in answer.items() if k not in ("messages", "wal_only")}
    (out / "device.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    return answer
