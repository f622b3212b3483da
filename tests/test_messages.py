"""WeCom decrypted JSON -> canonical Message (capture/wecom/messages.py).

Golden files in tests/golden/wecom/ hold one input record and the expected parsed
message each; regenerate with WXARCHIVE_UPDATE_GOLDENS=1 and review the diff by eye.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wxarchive.capture.wecom.messages import ParseError, parse_message
from wxarchive.model import AttachmentState, Message, MessageKind, message_from_jsonable, to_jsonable

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden" / "wecom"
DOCS = pathlib.Path(__file__).parent.parent / "docs" / "msgtype-kinds.md"
SOURCE = "wecom:ww0123abcd"
UPDATE = os.environ.get("WXARCHIVE_UPDATE_GOLDENS") == "1"

# docs/msgtype-kinds.md, restated independently of the parser's own table.
DOC_KINDS: dict[str, MessageKind] = {
    "text": MessageKind.TEXT,
    "markdown": MessageKind.TEXT,
    "image": MessageKind.IMAGE,
    "voice": MessageKind.VOICE,
    "video": MessageKind.VIDEO,
    "file": MessageKind.FILE,
    "emotion": MessageKind.EMOTION,
    "link": MessageKind.LINK,
    "news": MessageKind.LINK,
    "card": MessageKind.CARD,
    "location": MessageKind.LOCATION,
    "mixed": MessageKind.MIXED,
    "chatrecord": MessageKind.CHAT_RECORD,
    "meeting_voice_call": MessageKind.CALL,
    "voiptext": MessageKind.CALL,
    "voip_doc_share": MessageKind.DOCUMENT,
    "docmsg": MessageKind.DOCUMENT,
    "qydiskfile": MessageKind.DOCUMENT,
    "meeting": MessageKind.MEETING,
    "meeting_notification": MessageKind.MEETING,
    "calendar": MessageKind.CALENDAR,
    "todo": MessageKind.TODO,
    "vote": MessageKind.VOTE,
    "collect": MessageKind.FORM,
    "solitaire": MessageKind.FORM,
    "redpacket": MessageKind.RED_PACKET,
    "external_redpacket": MessageKind.RED_PACKET,
    "weapp": MessageKind.MINI_PROGRAM,
    "sphfeed": MessageKind.CHANNELS,
    "note": MessageKind.NOTE,
    "revoke": MessageKind.RECALL,
    "agree": MessageKind.CONSENT,
    "disagree": MessageKind.CONSENT,
}


def parse(obj: dict[str, Any] | str | bytes, seq: int | None = None) -> Message:
    if isinstance(obj, dict):
        obj = json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, str):
        obj = obj.encode("utf-8")
    return parse_message(obj, source=SOURCE, seq=seq)


def envelope(msgtype: str, msgid: str = "1000000000000000001_1603875600", **body: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "msgid": msgid,
        "action": "send",
        "from": "kenshin",
        "tolist": ["wmGAgeDQAAdBjb8CK4ieMPRm7Cqm-9VA"],
        "roomid": "",
        "msgtime": 1603875600123,
        "msgtype": msgtype,
    }
    record.update(body)
    return record


def catalog_json(message: Message) -> str:
    """What a catalog would store: must be strict JSON and encodable as UTF-8."""
    text = json.dumps(to_jsonable(message), ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    return text


def sdkfileids(value: Any) -> list[str]:
    """Every sdkfileid in a record, including inside nested JSON-string contents."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "sdkfileid" and isinstance(item, str) and item:
                found.append(item)
            else:
                found.extend(sdkfileids(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(sdkfileids(item))
    elif isinstance(value, str) and value.startswith(("{", "[")):
        try:
            found.extend(sdkfileids(json.loads(value)))
        except ValueError:
            pass
    return found


def assert_no_secret(message: Message, secrets: list[str]) -> None:
    text = json.dumps(message.text, ensure_ascii=False)
    content = json.dumps(message.content, ensure_ascii=False)
    for secret in secrets:
        assert secret not in text
        assert secret not in content


# ----------------------------------------------------------------------------- goldens

GOLDENS = sorted(GOLDEN_DIR.glob("*.json"))


@pytest.mark.parametrize("path", GOLDENS, ids=[p.stem for p in GOLDENS])
def test_golden(path: pathlib.Path) -> None:
    golden = json.loads(path.read_text(encoding="utf-8"))
    message = parse(golden["input"], seq=golden["seq"])
    actual = json.loads(catalog_json(message))
    if UPDATE:
        golden["expected"] = actual
        path.write_text(json.dumps(golden, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    assert actual == golden["expected"]
    assert message_from_jsonable(actual) == message  # the golden round-trips into the model


def test_every_documented_msgtype_has_a_golden_with_the_documented_kind() -> None:
    doc = DOCS.read_text(encoding="utf-8")
    by_type = {}
    for path in GOLDENS:
        record = json.loads(path.read_text(encoding="utf-8"))["input"]
        by_type.setdefault(record.get("msgtype", "switch"), record)
    for msgtype, kind in DOC_KINDS.items():
        assert msgtype in doc, msgtype
        assert msgtype in by_type, f"no golden for {msgtype}"
        assert parse(by_type[msgtype]).kind == kind, msgtype
    assert parse(by_type["switch"]).kind == MessageKind.SYSTEM
    unknown = [t for t in by_type if t not in DOC_KINDS and t != "switch"]
    assert unknown and all(parse(by_type[t]).kind == MessageKind.OTHER for t in unknown)


@pytest.mark.parametrize("path", GOLDENS, ids=[p.stem for p in GOLDENS])
def test_golden_sdkfileids_only_in_source_ref(path: pathlib.Path) -> None:
    record = json.loads(path.read_text(encoding="utf-8"))["input"]
    secrets = sdkfileids(record)
    message = parse(record)
    assert_no_secret(message, secrets)
    assert sorted(a.source_ref for a in message.attachments) == sorted(secrets)


# ------------------------------------------------------------------------ media paths


def test_top_level_media_attachments() -> None:
    expected = {
        "image": ("image", "image/jpeg", "filesize", None),
        "voice": ("voice", "audio/amr", "voice_size", None),
        "video": ("video", "video/mp4", "filesize", None),
        "file": ("file", "application/pdf", "filesize", "合同.pdf"),
    }
    for msgtype, (kind, media_type, size_key, name) in expected.items():
        body = {"md5sum": "ab" * 16, size_key: 1234, "sdkfileid": f"SECRET-{msgtype}"}
        if name:
            body.update(filename=name, fileext="pdf")
        message = parse(envelope(msgtype, **{msgtype: body}))
        [attachment] = message.attachments
        assert attachment.path == ""
        assert (attachment.kind, attachment.media_type) == (kind, media_type)
        assert attachment.declared_size == 1234 and attachment.declared_md5 == "ab" * 16
        assert attachment.file_name == name
        assert attachment.source_ref == f"SECRET-{msgtype}"
        assert attachment.state == AttachmentState.PENDING
        assert message.content[msgtype]["sdkfileid"] == "<attachment>"


@pytest.mark.parametrize(("emotion_type", "media_type"), [(1, "image/gif"), (2, "image/png"), (3, None)])
def test_emotion_media_type(emotion_type: int, media_type: str | None) -> None:
    body = {"type": emotion_type, "width": 10, "height": 10, "imagesize": 99, "sdkfileid": "S"}
    [attachment] = parse(envelope("emotion", emotion=body)).attachments
    assert (attachment.kind, attachment.media_type, attachment.declared_size) == ("emotion", media_type, 99)


def test_call_audio_and_doc_share_without_roomid_are_direct() -> None:
    call = parse(
        {
            "msgid": "17952229780246929345_1594197637",
            "action": "send",
            "from": "wo137MCgAAYW6pIiKKrDe5SlzEhSgwbA",
            "tolist": ["zhangsan", "wo137MCgAAYW6pIiKKrDe5SlzEhSgwbA"],
            "msgtime": 1594197581203,
            "msgtype": "meeting_voice_call",
            "voiceid": "grb8a4c48a3c094a70982c518d55e40557",
            "meeting_voice_call": {"endtime": 1594197635, "sdkfileid": "CALL-SECRET"},
        }
    )
    assert call.conversation_kind == "direct"
    assert call.conversation_id == "wo137MCgAAYW6pIiKKrDe5SlzEhSgwbA|zhangsan"
    assert call.content["voiceid"] == "grb8a4c48a3c094a70982c518d55e40557"
    assert call.content["end_time"] == 1594197635000
    [attachment] = call.attachments
    assert (attachment.path, attachment.kind, attachment.source_ref) == ("", "call_audio", "CALL-SECRET")

    share = parse(
        {
            "msgid": "16527954622422422847_1594199256",
            "action": "send",
            "from": "18002520162",
            "tolist": ["wo137MCgAAYW6pIiKKrDe5SlzEhSgwbA"],
            "msgtime": 1594199235014,
            "msgtype": "voip_doc_share",
            "voipid": "gr2751c98b19300571f8afb3b74514bd32",
            "voip_doc_share": {"filename": "方案.pptx", "md5sum": "f" * 32, "filesize": 44, "sdkfileid": "DOC"},
        }
    )
    assert (share.conversation_kind, share.conversation_id) == ("direct", "18002520162|wo137MCgAAYW6pIiKKrDe5SlzEhSgwbA")
    assert share.kind == MessageKind.DOCUMENT and share.text == "方案.pptx"
    [doc] = share.attachments
    assert (doc.path, doc.kind, doc.file_name, doc.source_ref) == ("", "file", "方案.pptx", "DOC")
    assert doc.media_type == "application/vnd.openxmlformats-officedocument.presentationml.presentation"


def test_media_message_without_sdkfileid_is_archived_with_a_missing_attachment() -> None:
    """A2: the message is kept; its attachment says why it cannot be fetched."""
    message = parse(envelope("image", image={"md5sum": "", "filesize": 10}))
    [attachment] = message.attachments
    assert attachment.state == AttachmentState.MISSING
    assert attachment.reason and attachment.source_ref is None and attachment.declared_md5 is None


# ------------------------------------------------------------------------------ cases


def chatrecord(items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return envelope("chatrecord", chatrecord={"title": "群聊的聊天记录", "item": items}, **extra)


def test_c4_nested_record_items_are_archived_searchable_and_fetched() -> None:
    items = [
        {"type": "ChatRecordText", "msgtime": 1603875610, "content": json.dumps({"content": "第一条 hello"})},
        {
            "type": "ChatRecordImage",
            "msgtime": 1603875611,
            "content": json.dumps({"md5sum": "1" * 32, "filesize": 70961, "sdkfileid": "IMG-SECRET"}),
        },
        {
            "type": "ChatRecordFile",
            "msgtime": 1603875612,
            "content": json.dumps(
                {"md5sum": "2" * 32, "filename": "合同.pdf", "fileext": "pdf", "filesize": 1373, "sdkfileid": "FILE-SECRET"},
                ensure_ascii=False,
            ),
        },
    ]
    message = parse(chatrecord(items))
    assert message.kind == MessageKind.CHAT_RECORD
    assert message.text == "群聊的聊天记录\n第一条 hello\n合同.pdf"
    image, file = message.attachments
    assert (image.path, image.kind, image.source_ref, image.declared_size) == ("item.1", "image", "IMG-SECRET", 70961)
    assert (file.path, file.kind, file.source_ref, file.file_name) == ("item.2", "file", "FILE-SECRET", "合同.pdf")
    assert file.media_type == "application/pdf" and file.declared_md5 == "2" * 32
    parsed = message.content["items"]
    assert [i["type"] for i in parsed] == ["ChatRecordText", "ChatRecordImage", "ChatRecordFile"]
    assert parsed[0]["content"] == {"content": "第一条 hello"}
    assert parsed[1]["content"]["sdkfileid"] == "<attachment item.1>"
    assert json.loads(message.content["chatrecord"]["item"][2]["content"])["sdkfileid"] == "<attachment item.2>"
    assert_no_secret(message, ["IMG-SECRET", "FILE-SECRET"])


def test_mixed_items_get_item_paths() -> None:
    items = [
        {"type": "text", "content": json.dumps({"content": "看图"}, ensure_ascii=False)},
        {"type": "emotion", "content": json.dumps({"type": 2, "imagesize": 5, "sdkfileid": "EMO"})},
    ]
    message = parse(envelope("mixed", mixed={"item": items}))
    assert message.text == "看图"
    [attachment] = message.attachments
    assert (attachment.path, attachment.kind, attachment.media_type) == ("item.1", "emotion", "image/png")
    assert [i["time"] for i in message.content["items"]] == [None, None]


def test_nested_mixed_inside_record_and_unmodelled_item_media() -> None:
    inner = {"item": [{"type": "image", "content": json.dumps({"filesize": 1, "sdkfileid": "DEEP"})}]}
    items = [
        {"type": "ChatRecordMixed", "msgtime": 1603875610, "content": json.dumps(inner)},
        {"type": "ChatRecordHologram", "msgtime": 1603875611, "content": json.dumps({"caption": "新", "sdkfileid": "ODD"})},
    ]
    message = parse(chatrecord(items))
    assert [(a.path, a.kind, a.source_ref) for a in message.attachments] == [
        ("item.0.item.0", "image", "DEEP"),
        ("item.1", "file", "ODD"),
    ]
    assert "新" in message.text
    assert_no_secret(message, ["DEEP", "ODD"])


def test_nested_content_that_is_not_json_is_kept_raw_and_flagged() -> None:
    broken = '{"content":"半截'
    leaky = '{"filename":"a.pdf","sdkfileid":"LEAKY/SECRET+1=",'
    items = [
        {"type": "ChatRecordText", "msgtime": 1603875610, "content": broken},
        {"type": "ChatRecordFile", "msgtime": 1603875611, "content": leaky},
    ]
    message = parse(chatrecord(items))
    assert "invalid_nested_content" in message.flags
    assert message.content["items"][0]["content"] == broken
    assert broken in message.text
    assert_no_secret(message, ["LEAKY/SECRET+1="])
    # the reference is still declared, so the media is fetched before it expires
    assert [(a.path, a.kind, a.source_ref) for a in message.attachments] == [("item.1", "file", "LEAKY/SECRET+1=")]


def test_t2_units() -> None:
    items = [
        {"type": "ChatRecordText", "msgtime": 1603875610, "content": '{"content":"s"}'},
        {"type": "ChatRecordText", "msgtime": 1603875610123, "content": '{"content":"ms"}'},
        {"type": "ChatRecordText", "msgtime": 0, "content": '{"content":"zero"}'},
        {"type": "ChatRecordText", "content": '{"content":"none"}'},
    ]
    record = parse(chatrecord(items, msgtime=0))
    assert record.sent_at is None
    assert [i["time"] for i in record.content["items"]] == [1603875610000, 1603875610123, None, None]

    for bad in (None, "", "soon", -5, True, 1e400, "NaN", 10**30):
        message = parse(envelope("text", text={"content": "x"}, msgtime=bad))
        assert message.sent_at is None, bad
    assert parse(envelope("text", text={"content": "x"}, msgtime="1603875600123")).sent_at == 1603875600123

    meeting = parse(envelope("meeting", meeting={"topic": "夕会", "starttime": 1603877400, "endtime": 0}))
    assert (meeting.content["start_time"], meeting.content["end_time"]) == (1603877400000, None)
    assert meeting.content["meeting"]["starttime"] == 1603877400  # the original stays as sent
    calendar = parse(envelope("calendar", calendar={"title": "复盘", "starttime": 1603882800, "endtime": 1603886400}))
    assert (calendar.content["start_time"], calendar.content["end_time"]) == (1603882800000, 1603886400000)
    agree = parse(envelope("agree", agree={"userid": "wmX", "agree_time": 1603875826656}))
    assert agree.content["time"] == 1603875826656


def test_t1_collect_time_is_china_local_whatever_the_host_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        message = parse(envelope("collect", collect={"title": "t", "create_time": "2019-12-11 11:21:22"}))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert message.content["create_time"] == 1576034482000  # 2019-12-11T03:21:22Z
    assert message.content["create_time_text"] == "2019-12-11 11:21:22"
    bad = parse(envelope("collect", collect={"title": "t", "create_time": "2019-13-45 99:00:00"}))
    assert bad.content["create_time"] is None


def test_x1_emoji_and_zwj_names_are_byte_exact() -> None:
    name = "Zoë 👩‍👩‍👧 报价单✅.xlsx"
    file = parse(envelope("file", file={"filename": name, "fileext": "xlsx", "filesize": 3, "sdkfileid": "S"}))
    assert file.text == name and file.text.encode("utf-8") == name.encode("utf-8")
    assert file.attachments[0].file_name == name
    assert file.attachments[0].media_type == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    group = parse(envelope("text", text={"content": "客户群🎉💼 Zoë 👩‍👩‍👧"}, roomid="wr客户群🎉💼"))
    assert group.text == "客户群🎉💼 Zoë 👩‍👩‍👧" and group.conversation_id == "wr客户群🎉💼"


def test_x2_lone_surrogate_does_not_crash_and_is_flagged() -> None:
    raw = envelope("text", text={"content": "PLACEHOLDER"})
    plaintext = json.dumps(raw).replace("PLACEHOLDER", "ok \\ud83d end")
    message = parse(plaintext)
    assert message.text == "ok \ufffd end"
    assert "invalid_text" in message.flags
    assert "\\ud83d" in message.content["raw_json"]
    assert json.loads(message.content["raw_json"])["text"]["content"] == "ok \ud83d end"
    catalog_json(message)

    nested_item = {"type": "ChatRecordText", "msgtime": 1, "content": '{"content":"a\\udc00b"}'}
    nested = parse(chatrecord([nested_item]))
    assert "a\ufffdb" in nested.text and "invalid_text" in nested.flags
    catalog_json(nested)


def test_x2_invalid_utf8_bytes_are_replaced_and_flagged() -> None:
    plaintext = json.dumps(envelope("text", text={"content": "AB"})).encode("utf-8").replace(b"AB", b"A\xff\xfeB")
    message = parse(plaintext)
    assert message.text == "A\ufffd\ufffdB"
    assert {"invalid_utf8", "invalid_text"} <= set(message.flags)


def test_x3_long_and_mixed_script_text_is_whole() -> None:
    long_text = ("合规" + "abc" + "مرحبا" + "\n") * 6000
    long_text = long_text[:60000]
    message = parse(envelope("text", text={"content": long_text}))
    assert len(message.text) == 60000 and message.text == long_text


def test_c2_recall_links_to_the_original() -> None:
    message = parse(
        {
            "msgid": "15775510700152506326_1603875615",
            "action": "recall",
            "from": "kenshin",
            "tolist": ["wmUu0zBgAALV7ZymkcMyxvbTe8YdWxxA"],
            "roomid": "",
            "msgtime": 1603875615723,
            "msgtype": "revoke",
            "revoke": {"pre_msgid": "14822339130656386894_1603875600"},
        }
    )
    assert (message.kind, message.action) == (MessageKind.RECALL, "recall")
    assert message.recalls == "14822339130656386894_1603875600"
    assert message.sent_at == 1603875615723 and message.sender == "kenshin"
    assert message.reply_to is None


@pytest.mark.parametrize(
    ("content", "quote"),
    [
        (
            "这是一条引用/回复消息：\n“张三：\n报价单明天能发吗？”\n------\n可以",
            {"quoted_sender": "张三", "quoted_text": "报价单明天能发吗？", "reply": "可以"},
        ),
        (
            '这是一条引用/回复消息："\n------\n@nick777',
            {"quoted_sender": None, "quoted_text": "", "reply": "@nick777"},
        ),
        (
            'This is a quote/reply:\n"Li Lei:\nsee ------ below"\n------\nok\nthanks',
            {"quoted_sender": "Li Lei", "quoted_text": "see ------ below", "reply": "ok\nthanks"},
        ),
        (
            "这是一条引用/回复消息： “奔波儿灞： 那意外险呢”\n这个没有限制的",
            {"quoted_sender": None, "quoted_text": "奔波儿灞： 那意外险呢", "reply": "这个没有限制的"},
        ),
    ],
)
def test_c3_quoted_reply(content: str, quote: dict[str, Any]) -> None:
    message = parse(envelope("text", text={"content": content}))
    assert message.content["quote"] == quote
    assert message.text == content and message.reply_to is None


def test_c3_quote_prefix_without_shape_is_flagged_not_lost() -> None:
    message = parse(envelope("text", text={"content": "这是一条引用/回复消息：无法识别"}))
    assert "quote" not in message.content and "quote_unparsed" in message.flags
    assert message.text == "这是一条引用/回复消息：无法识别"


def test_p4_switch_and_consent_have_the_right_actor() -> None:
    switch = parse({"msgid": "125289002219525886280", "action": "switch", "time": 1554119421840, "user": "XuJinSheng"})
    assert (switch.kind, switch.action, switch.sender) == (MessageKind.SYSTEM, "switch", "XuJinSheng")
    assert (switch.sent_at, switch.conversation_id) == (1554119421840, "switch:XuJinSheng")
    assert switch.conversation_kind == "system"  # listed apart from chats
    disagree = parse(
        envelope("disagree", disagree={"userid": "wmErxtDgAA9AW32YyyuYRimKr7D1KWlw", "disagree_time": 1603875944122})
    )
    assert disagree.kind == MessageKind.CONSENT
    assert {k: disagree.content[k] for k in ("agree", "userid", "time")} == {
        "agree": False,
        "userid": "wmErxtDgAA9AW32YyyuYRimKr7D1KWlw",
        "time": 1603875944122,
    }


@pytest.mark.parametrize(
    ("msgid", "scope"),
    [("1_1603875600", "internal"), ("1_1603875600_external", "external"), ("1_1_updown_stream", "updown_stream")],
)
def test_msgid_scope(msgid: str, scope: str) -> None:
    assert parse(envelope("text", msgid=msgid, text={"content": "x"})).content["msgid_scope"] == scope


def test_conversations() -> None:
    one = parse(envelope("text", text={"content": "x"}, **{"from": "zed", "tolist": ["amy"]}))
    other = parse(envelope("text", text={"content": "y"}, **{"from": "amy", "tolist": ["zed"]}))
    assert one.conversation_id == other.conversation_id == "amy|zed"
    assert (one.sender, one.recipients, one.conversation_kind) == ("zed", ["amy"], "direct")
    group = parse(envelope("text", text={"content": "x"}, roomid="wrABC", tolist=["b", "a"]))
    assert (group.conversation_id, group.conversation_kind, group.recipients) == ("wrABC", "group", ["b", "a"])


def test_unknown_type_is_kept_raw_and_searchable() -> None:
    record = envelope("future_thing", future_thing={"caption": "新年快乐", "n": 3, "sdkfileid": "FUT"}, extra="附加")
    message = parse(record)
    assert message.kind == MessageKind.OTHER and message.source_type == "future_thing"
    assert message.content["future_thing"]["caption"] == "新年快乐"
    assert message.content["extra"] == "附加"
    assert not set(message.content) & {"msgid", "from", "tolist", "msgtime", "msgtype", "roomid", "action"}
    assert message.text == "新年快乐\n附加"
    assert [(a.path, a.kind, a.source_ref) for a in message.attachments] == [("", "file", "FUT")]
    assert_no_secret(message, ["FUT"])


def test_numbers_are_normalised_and_ids_accepted_in_either_form() -> None:
    voice = parse(envelope("voice", voice={"voice_size": "6810", "play_length": "10", "sdkfileid": "S"}))
    assert voice.attachments[0].declared_size == 6810 and voice.content["duration_s"] == 10
    flat = parse(envelope("vote", votetitle="午饭", voteitem=["面", "饭"], votetype=102, voteid="v1"))
    assert (flat.content["title"], flat.content["items"], flat.content["vote_type"]) == ("午饭", ["面", "饭"], 102)
    assert flat.text == "午饭\n面\n饭"
    notice = parse(envelope("meeting_notification", info={"meetingid": 42, "notification_type": "1", "content": "开始"}))
    assert (notice.content["meeting_id"], notice.content["notification_type"]) == ("42", 1)
    assert parse(envelope("text", text={"content": "x"}, **{"from": 10086})).sender == "10086"


def test_malformed_body_of_a_known_type_still_archives() -> None:
    message = parse(envelope("text", text="just a string"))
    assert message.kind == MessageKind.TEXT and message.text == "just a string"
    assert "malformed_content" in message.flags


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"not json", b"[1,2]", b'"text"', b"{}", b'{"msgid":""}', b'{"msgid":null,"text":{"content":"secret"}}', b"{" * 5000],
)
def test_unusable_records_raise_parse_error_with_a_one_line_reason(plaintext: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(plaintext, source=SOURCE)
    reason = info.value.reason
    assert reason and "\n" not in reason and "secret" not in reason


def test_non_bytes_input_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_message("{}", source=SOURCE)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- fuzz

# text includes lone surrogates: json.dumps writes them as \udXXX escapes (case X2)
any_text = st.text(st.characters(exclude_categories=()))
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20,
)
MSGTYPES = [*DOC_KINDS, "future_type"]
FIELDS = [
    "content", "title", "description", "filename", "fileext", "filesize", "sdkfileid", "md5sum", "item",
    "type", "msgtime", "starttime", "endtime", "create_time", "voteitem", "votetitle", "details",
    "demofiledata", "sharescreendata", "pre_msgid", "agree_time", "userid", "play_length", "imagesize",
]


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """Envelope-shaped objects with arbitrary values: the realistic way to be wrong."""
    msgtype = draw(st.sampled_from(MSGTYPES))
    body = draw(st.dictionaries(st.sampled_from(FIELDS), json_values | st.builds(json.dumps, json_values), max_size=6))
    record = draw(st.dictionaries(st.sampled_from(["action", "from", "tolist", "roomid", "msgtime", "user", "time"]), json_values))
    key = draw(st.sampled_from([msgtype, "info", "revoke", "doc"]))
    record.update({"msgid": draw(st.text(min_size=1).filter(str.strip)), "msgtype": msgtype, key: body})
    if draw(st.booleans()):
        record["action"] = draw(st.sampled_from(["send", "recall", "switch"]))
    return record


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_bytes_only_ever_raise_parse_error(data: bytes) -> None:
    try:
        message = parse_message(data, source=SOURCE)
    except ParseError as error:
        assert "\n" not in error.reason
    else:
        catalog_json(message)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=8))
def test_fuzz_any_json_object(obj: dict[str, Any]) -> None:
    try:
        message = parse(json.dumps(obj))
    except ParseError as error:
        assert "\n" not in error.reason
    else:
        catalog_json(message)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_fuzz_records_with_a_msgid_always_parse(record: dict[str, Any]) -> None:
    """No ParseError at all when a msgid is there: a parser bug would show up here
    instead of hiding behind the catch-all that turns crashes into ParseError."""
    message = parse(json.dumps(record))
    assert isinstance(message.kind, MessageKind)
    catalog_json(message)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(records(), st.integers(min_value=0, max_value=2))
def test_fuzz_sdkfileids_never_leak(record: dict[str, Any], where: int) -> None:
    secret = "SEKRIT0123456789abcdef"
    body_key = next(k for k in ("info", "revoke", "doc", record["msgtype"]) if isinstance(record.get(k), dict))
    body = record[body_key]
    if where == 0:
        body["sdkfileid"] = secret
    elif where == 1:
        body["item"] = [{"type": "ChatRecordFile", "content": json.dumps({"filename": "f", "sdkfileid": secret})}]
    else:
        body["item"] = [{"type": "image", "content": '{"sdkfileid":"' + secret + '",'}]
    message = parse(json.dumps(record))
    assert_no_secret(message, [secret])
    assert secret not in json.dumps(message.content.get("raw_json", ""))
