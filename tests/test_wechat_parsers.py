"""Property and unit tests of the WeChat parsers: raw rows round-trip byte for byte, no body
ever makes the mapping raise, the lz4/zstd/protobuf helpers, the policy and customer list."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wxarchive.capture.protobuf import encode_fields
from wxarchive.capture.wechat import messages, payloads
from wxarchive.capture.wechat.policy import PolicyError, load, load_customers
from wxarchive.capture.wechat.records import Contact, decode_value, encode_record, make_record, text_factory
from wxarchive.model import MessageKind

values = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.binary(max_size=64),
                   st.text(max_size=64), st.binary(max_size=64).map(text_factory))


@given(st.dictionaries(st.text(min_size=1, max_size=12), values, max_size=8))
def test_raw_row_round_trips_exactly(row):
    import orjson

    rec = orjson.loads(encode_record(make_record("v4", "f", "t", "talker", "me", row)))
    back = {k: decode_value(v) for k, v in rec["row"].items()}
    for k, v in row.items():
        if isinstance(v, str):
            got = back[k]
            assert (got if isinstance(got, bytes) else got.encode()) == v.encode("utf-8", "surrogateescape")
        else:
            assert back[k] == v


xml_bits = st.sampled_from(["<msg>", "</msg>", "<appmsg>", "</appmsg>", "<type>57</type>", "<type>19</type>",
                            "<type>6</type>", "<title>t</title>", "<refermsg>", "</refermsg>", "<svrid>12</svrid>",
                            "<content>&lt;msg&gt;</content>", "<recorditem><![CDATA[", "]]></recorditem>",
                            "<dataitem datatype=\"17\">", "</dataitem>", "<recordxml>", "</recordxml>",
                            "<sysmsg type=\"revokemsg\">", "<newmsgid>x</newmsgid>", "<!DOCTYPE x [<!ENTITY a 'b'>]>",
                            "&a;", "<?xml version='1.0'?>", "\x00", "wxid_a:\n", "<img md5='", "'/>"])


@settings(max_examples=400)
@given(st.sampled_from([1, 3, 34, 42, 43, 47, 48, 49, 50, 62, 10000, 10002, 99999]),
       st.one_of(st.none(), st.integers(min_value=0, max_value=3000)),
       st.one_of(st.text(max_size=200), st.lists(xml_bits, max_size=25).map("".join)))
def test_no_body_makes_the_mapping_raise(base, sub, body):
    p = payloads.parse_body(base, sub, body)
    assert isinstance(p.kind, MessageKind) and isinstance(p.text, str)


def test_entities_are_not_expanded():
    bomb = '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><msg>&b;</msg>'
    p = payloads.parse_body(1, None, bomb)  # text: kept as typed
    assert p.text == bomb
    p = payloads.parse_body(49, 5, bomb.replace("<msg>&b;</msg>", "<msg><appmsg><title>&b;</title><type>5</type></appmsg></msg>"))
    assert "aaaaaaaaaa" not in p.text  # defusedxml refused; the recovery reader does not expand either


def test_malformed_xml_is_recovered_not_dropped():
    p = payloads.parse_body(49, None, "<msg><appmsg><title>报价 & 合同</title><type>6</type><appattach><totallen>12"
                                      "</totallen></appattach></appmsg>")  # bare & and no </msg>
    assert p.kind is MessageKind.FILE and "xml_recovered" in p.flags and p.text == "报价 & 合同"


def test_quote_with_unknown_type_and_no_chatusr():
    body = ("<msg><appmsg><title>ok</title><type>57</type><refermsg><type>777</type><svrid>5</svrid>"
            "<content>&lt;future/&gt;</content></refermsg></appmsg></msg>")
    p = payloads.parse_body(49, 57, body)
    assert p.reply_to == "5" and p.text == "ok" and p.content["quote"]["quoted_type"] == 777
    assert p.content["quote"]["quoted_text"]  # never empty: the type name stands in


def test_lz4_block_grows_past_any_fixed_ratio():
    import lz4.block

    xml = ("<msg>" + "重复" * 200000 + "</msg>").encode()
    blob = lz4.block.compress(xml, store_size=False)
    assert len(xml) / len(blob) > 100
    assert messages.lz4_block(blob + b"") == xml
    with pytest.raises(messages.ParseError, match="not an LZ4 block"):
        messages.lz4_block(b"\xff" * 40)


def test_bytes_extra_sender_and_garbage():
    blob = encode_fields([(1, encode_fields([(1, 1), (2, 0)])), (3, encode_fields([(1, 7), (2, b"<msgsource/>")])),
                          (3, encode_fields([(1, 1), (2, b"wxid_a1b2")]))])
    assert messages.bytes_extra_sender(blob) == "wxid_a1b2"
    assert messages.bytes_extra_sender(b"\xff\xff\xff") is None
    assert messages.bytes_extra_sender(encode_fields([(3, encode_fields([(1, 2), (2, b"hash")]))])) is None


def test_group_prefix_rules():
    assert messages._split_prefix("wxid_a1b2:\n明天见") == ("wxid_a1b2", "明天见")
    assert messages._split_prefix("http://x:\nnot a sender")[0] is None
    assert messages._split_prefix("two words:\nno")[0] is None
    assert messages._split_prefix("no prefix")[1] == "no prefix"


def test_customer_list_shapes(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text("\ufeffwxid_abc\n+86 139 0000 1111\n王芳\nchenjie_hk\n", encoding="utf-8")
    c = load_customers(f)
    assert "wxid_abc" in c.ids and "13900001111" in c.mobiles and "王芳" in c.names
    assert "chenjie_hk" in c.ids and "chenjie_hk" in c.names  # without a header: either
    f.write_text("name,mobile\nWang Fang,138-1234-5678\n", encoding="utf-8")
    c = load_customers(f)
    assert c.names == {"wang fang"} and c.mobiles == {"13812345678"}
    f.write_text("wxid\n\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="no usable rows"):
        load_customers(f)


def test_policy_decisions(tmp_path):
    (tmp_path / "c.csv").write_text("mobile\n13812345678\n", encoding="utf-8")
    p = tmp_path / "p.toml"
    p.write_text('work_labels = ["客户"]\ncustomer_list = "c.csv"\ngroups_with_work_contacts = true\n'
                 "openim_contacts = false\n", encoding="utf-8")
    pol = load(p)
    contacts = {"a": Contact("a", labels=["客户"]), "b": Contact("b", remark="王 138 1234 5678"),
                "x@openim": Contact("x@openim")}
    from wxarchive.capture.wechat.records import Group

    groups = {"g@chatroom": Group("g@chatroom", members=["me", "b"]), "h@chatroom": Group("h@chatroom", members=["me"])}
    assert pol.decide("a", contacts, groups).reason == "label 客户"
    assert pol.decide("b", contacts, groups).reason == "customer list (mobile)"
    assert not pol.decide("x@openim", contacts, groups).work
    assert pol.decide("g@chatroom", contacts, groups).work
    assert not pol.decide("h@chatroom", contacts, groups).work
    p.write_text("openim_contacts = 1\n")
    with pytest.raises(PolicyError, match="true or false"):
        load(p)
    p.write_text("work_contacts = \n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load(p)


def test_silk_errors_are_reported():
    from wxarchive.capture.wechat import voice

    with pytest.raises(voice.VoiceError, match="not SILK"):
        voice.silk_to_wav(b"#!AMR\n....")
    with pytest.raises(voice.VoiceError, match="decoding failed"):
        voice.silk_to_wav(b"\x02#!SILK_V3" + b"\x05\x00junk" * 3)
