"""DecryptData: the pure-Python model against the official library, key ring, records.

The official library runs in an :class:`SdkWorker` child, so an input that aborts it
(P14, crafted key info) kills the child, never pytest. The model claims to predict
exactly those aborts; the crafted-input tests check that claim with the unguarded
native call.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import random
import resource
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asympadding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from wxarchive.capture import protobuf
from wxarchive.capture.wecom.decrypt import (
    KeyLoadError,
    KeyRing,
    MissingKeyVersion,
    RecordError,
    decrypt_data_py,
    decrypt_items,
    decrypt_record,
    init_decrypt_worker,
    lenient_b64decode,
    native_abort_reason,
    native_decrypt_impl,
    parse_sdk_key_info,
)
from wxarchive.capture.wecom.sdk import LOCAL_REFUSED, DecryptError, SdkError
from wxarchive.capture.wecom.worker import SdkCrashed, SdkWorker
from wxarchive.simulate.crypto import encrypt_message

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
def _settings(examples: int) -> settings:
    """Derandomized so CI failures reproduce; no deadline (each example is an IPC call)."""
    return settings(
        max_examples=examples, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def keys() -> dict[int, rsa.RSAPrivateKey]:
    return {v: rsa.generate_private_key(public_exponent=65537, key_size=2048) for v in (1, 2)}


@pytest.fixture(scope="module")
def ring(keys: dict[int, rsa.RSAPrivateKey]) -> KeyRing:
    return KeyRing(keys)


@pytest.fixture(scope="module")
def native() -> Iterator[SdkWorker]:
    with SdkWorker("wwdecrypttest", "not-used-offline") as worker:
        yield worker


def _outcome(fn, key: bytes, msg: str) -> tuple[str, object]:
    """("ok", plaintext) or ("err", code): what both implementations are compared on."""
    try:
        return "ok", fn(key, msg)
    except SdkError as exc:
        return "err", exc.code


def _encrypt(plain: bytes, key: rsa.RSAPrivateKey, seed: int) -> tuple[str, str]:
    return encrypt_message(plain, key.public_key(), random.Random(seed))


def _unwrap(key: rsa.RSAPrivateKey, wrapped_b64: str) -> bytes:
    return key.decrypt(base64.b64decode(wrapped_b64), asympadding.PKCS1v15())


def _junk_unwrap(wrong: rsa.RSAPrivateKey, right: rsa.RSAPrivateKey) -> bytes:
    """What RSA with the wrong key gives back (implicit rejection), for the first seed
    whose ciphertext is below the wrong key's modulus (otherwise RSA itself fails)."""
    for seed in range(100):
        wrapped, _ = _encrypt(b"{}", right, seed)
        try:
            return _unwrap(wrong, wrapped)
        except ValueError:
            continue
    raise AssertionError("no seed gave an implicit-rejection result")


def _aes_cbc(key: bytes, data: bytes, iv: bytes) -> bytes:
    padder = sympadding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    enc = Cipher(algorithms.AES((key + b"\0" * 32)[:32]), modes.CBC(iv)).encryptor()
    return iv + enc.update(padded) + enc.finalize()


# --------------------------------------------------------------------------- round trip

message_text = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
        st.sampled_from(["🎉", "👩‍👩‍👧", "客户群", "\u0000", "\n", '"', "\\", "\U0001f600"]),
    ),
    max_size=30,
).map("".join)


@_settings(120)
@given(text=message_text, seed=st.integers(0, 2**32 - 1), ver=st.sampled_from([1, 2]))
@example(text="长" * 60_000, seed=1, ver=1)
@example(text="", seed=2, ver=2)
def test_python_model_equals_official_library(native, keys, text, seed, ver) -> None:
    plain = json.dumps(
        {"msgid": f"m{seed}", "action": "send", "msgtype": "text", "text": {"content": text}},
        ensure_ascii=False,
    ).encode("utf-8")
    wrapped, msg = _encrypt(plain, keys[ver], seed)
    key = _unwrap(keys[ver], wrapped)
    assert decrypt_data_py(key, msg) == plain
    assert native.decrypt_data(key, msg) == plain


MUTATIONS = ["wrong_version", "key_newline", "rsa_as_key", "raw_rsa_as_key", "strip_padding",
             "truncate", "corrupt_body", "corrupt_anywhere", "drop_char"]


def _mutate(kind: str, data, wrapped: str, key: bytes, msg: str, other: rsa.RSAPrivateKey) -> tuple[bytes, str]:
    if kind == "wrong_version":  # implicit rejection: usually junk bytes, no exception (P6)
        try:
            return _unwrap(other, wrapped), msg
        except ValueError:  # e.g. the ciphertext is larger than the other key's modulus
            assume(False)
    if kind == "key_newline":
        return key + b"\n", msg
    if kind == "rsa_as_key":  # the RSA step skipped
        return wrapped.encode(), msg
    if kind == "raw_rsa_as_key":
        return base64.b64decode(wrapped), msg
    if kind == "strip_padding":
        return key.rstrip(b"="), msg
    if kind == "truncate":
        return key, msg[: data.draw(st.integers(45, len(msg) - 1))]
    pos = data.draw(st.integers(45 if kind == "corrupt_body" else 0, len(msg) - 1))
    if kind == "drop_char":
        return key, msg[:pos] + msg[pos + 1 :]
    new = data.draw(st.sampled_from([c for c in B64 + "=-_.! " if c != msg[pos]]))
    return key, msg[:pos] + new + msg[pos + 1 :]


@_settings(250)
@given(kind=st.sampled_from(MUTATIONS), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_garbled_inputs_give_the_same_error_code(native, keys, kind, seed, data) -> None:
    plain = json.dumps({"msgid": "x", "text": {"content": "报价单✅" * (seed % 7)}}, ensure_ascii=False).encode()
    wrapped, msg = _encrypt(plain, keys[1], seed)
    key, msg = _mutate(kind, data, wrapped, _unwrap(keys[1], wrapped), msg, keys[2])
    if not key.isascii():
        # Binary "keys" (a wrong RSA key's implicit-rejection output, raw RSA bytes) hit the
        # native decoder's signed-char table lookup; decrypt_record never passes them on
        # (10008 for both implementations), so the model need not follow the native there.
        item = {"seq": 1, "msgid": "x", "publickey_ver": 1, "encrypt_random_key": wrapped, "encrypt_chat_msg": msg}
        with pytest.raises(RecordError) as err:
            decrypt_record(item, _FixedKeyRing(key), decrypt_data_py)
        assert err.value.code == 10008
        return
    py = _outcome(decrypt_data_py, key, msg)
    official = _outcome(native.decrypt_data, key, msg)
    assert py == official
    if kind in ("wrong_version", "key_newline", "rsa_as_key", "raw_rsa_as_key"):
        assert py == ("err", 10008)


class _FixedKeyRing:
    """A key ring whose RSA step returns a given key (to feed decrypt_record crafted keys)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def unwrap(self, version: int, wrapped: str) -> bytes:
        return self._key


def test_documented_error_codes(native, keys) -> None:
    wrapped, msg = _encrypt(b'{"a":1}', keys[1], 5)
    key = _unwrap(keys[1], wrapped)
    for bad_key in (key + b"\n", wrapped.encode(), _junk_unwrap(keys[2], keys[1]), b""):
        assert _outcome(decrypt_data_py, bad_key, msg) == ("err", 10008)
        assert _outcome(native.decrypt_data, bad_key, msg) == ("err", 10008)


# --------------------------------------------------------------------------- crafted key info


def _crafted(info: bytes, tail: str, seed: int) -> tuple[bytes, str]:
    """A message whose key info is ``info`` (validly AES-wrapped with the message's key)."""
    rng = random.Random(seed)
    e_key = "".join(rng.choice(B64) for _ in range(32))
    msg = "".join(rng.choice(B64) for _ in range(13)) + e_key + tail
    return base64.b64encode(_aes_cbc(e_key.encode(), info, rng.randbytes(16))), msg


int32 = st.one_of(
    st.integers(-50, 300), st.integers(-(2**31), 2**31 - 1), st.sampled_from([2**30, 2**31 - 1, -(2**31)])
)


def _near(true: int) -> st.SearchStrategy[int]:
    """Mostly the right value, sometimes off by a little, sometimes anything at all."""
    return st.one_of(st.just(true), st.just(true), st.integers(true - 60, true + 60), int32)


@st.composite
def crafted_cases(draw: st.DrawFn) -> tuple[bytes, str]:
    """(key info, message tail): a well-formed message, then its lengths perturbed."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    k1 = draw(st.binary(max_size=40))
    body = base64.b64encode(_aes_cbc(k1, draw(st.binary(max_size=80)), rng.randbytes(16))).decode()
    if draw(st.integers(0, 9)) == 0:  # bodies the SDK's base64 decoder chokes on
        body = draw(st.sampled_from(["", "=", "==", "A===", "=" * 9])) + "=" * draw(st.integers(0, 40))
    s_true = draw(st.integers(1, max(1, len(body))))
    pre_true, end_true = draw(st.integers(0, 20)), draw(st.integers(0, 20))
    junk = lambda n: "".join(rng.choice(B64) for _ in range(n))  # noqa: E731
    tail = junk(pre_true) + body[:s_true] + junk(s_true) + body[s_true:] + junk(end_true)
    fields = [(1, k1), (2, pre_true), (3, end_true), (4, s_true)]
    if draw(st.booleans()):  # half the cases stay well-formed, the rest are perturbed
        fields = [(1, draw(st.one_of(st.just(k1), st.binary(max_size=40)))),
                  (2, draw(_near(pre_true))), (3, draw(_near(end_true))), (4, draw(_near(s_true)))]
        fields = draw(st.permutations(fields))[: draw(st.integers(2, 4)) if draw(st.booleans()) else 4]
        if draw(st.integers(0, 3)) == 0:
            tail = tail[: draw(st.integers(0, len(tail)))]
    return protobuf.encode_fields(fields), tail


tails = st.one_of(
    st.text(alphabet=B64, max_size=300),
    st.text(alphabet=B64 + "=", max_size=60),
    st.builds(lambda a, n: a + "=" * n, st.text(alphabet=B64, max_size=40), st.integers(0, 80)),
)


def _varint(n: int) -> bytes:
    return protobuf.encode_fields([(1, n)])[1:]


def _wellformed_payload(number: int, wire: int) -> st.SearchStrategy[bytes]:
    if wire == 0:
        return st.builds(_varint, st.integers(0, 2**64 - 1))
    if wire == 1:
        return st.binary(min_size=8, max_size=8)
    if wire == 5:
        return st.binary(min_size=4, max_size=4)
    if wire == 2:
        return st.builds(lambda b: _varint(len(b)) + b, st.binary(max_size=8))
    if wire == 3:  # a (possibly empty) group closed by its matching end tag
        return st.builds(lambda v: _varint(1 << 3) + _varint(v) + _varint(number << 3 | 4), st.integers(0, 300))
    return st.just(b"")


@st.composite
def protobufish(draw: st.DrawFn) -> bytes:
    """Bytes shaped like protobuf: mostly well-formed fields of every wire type (known
    numbers with the wrong type included), sometimes zero tags, bad lengths, overlong
    varints; then, often, a valid s_len so that a successful parse is visible."""
    out = b""
    for _ in range(draw(st.integers(0, 5))):
        number, wire = draw(st.integers(0, 6)), draw(st.sampled_from([0, 0, 1, 2, 2, 3, 4, 5, 6, 7]))
        out += _varint(number << 3 | wire)
        if draw(st.integers(0, 4)):
            out += draw(_wellformed_payload(number, wire))
        else:
            out += draw(st.one_of(st.binary(max_size=12), st.just(b"\xff" * 11), st.just(b"\x80" * 10 + b"\x01")))
    if draw(st.integers(0, 3)):
        out += protobuf.encode_fields([(4, draw(st.integers(1, 20))), (2, draw(st.integers(-5, 10)))])
    return out


def _assert_model_predicts_native(native: SdkWorker, key: bytes, msg: str) -> None:
    """Model says abort -> the unguarded library really aborts; else same code/output."""
    py = _outcome(decrypt_data_py, key, msg)
    event(f"outcome {py[1] if py[0] == 'err' else 'plaintext'}")
    if py == ("err", LOCAL_REFUSED):
        assert native_abort_reason(key, msg) is not None
        with pytest.raises(SdkCrashed) as crash:
            native._debug_unguarded_decrypt(key, msg.encode())
        assert crash.value.signal == signal.SIGABRT
        assert _outcome(native.decrypt_data, key, msg) == py  # the guarded path refuses it
        return
    assert native_abort_reason(key, msg) is None
    rc, out = native._debug_unguarded_decrypt(key, msg.encode())
    assert py == (("ok", out) if rc == 0 else ("err", rc))


@_settings(200)
@given(case=crafted_cases(), seed=st.integers(0, 2**32 - 1))
@example(case=(protobuf.encode_fields([(1, b"k"), (2, 30), (3, 0), (4, 40)]), "A" * 55), seed=0)  # s_len past the body
@example(case=(protobuf.encode_fields([(1, b"k"), (4, 1)]), "A" + "=" * 9), seed=0)  # all-'=' body
@example(case=(protobuf.encode_fields([(1, b"k"), (2, -45), (3, 3), (4, 5)]), "A" * 40), seed=0)
def test_crafted_key_info_matches_native_including_aborts(native, case, seed) -> None:
    info, tail = case
    _assert_model_predicts_native(native, *_crafted(info, tail, seed))


@_settings(150)
@given(info=st.one_of(st.binary(max_size=48), protobufish()), tail=tails, seed=st.integers(0, 2**32 - 1))
@example(info=b"\x00", tail="A" * 20, seed=0)  # zero tag
@example(info=b"\x0c", tail="A" * 20, seed=0)  # stray end-group
@example(info=b"\x0b\x20\x01\x0c\x20\x05", tail="A" * 20, seed=0)  # group skipped, s_len 5
@example(info=b"\x12\x01\x41\x20\x03", tail="A" * 20, seed=0)  # field 2 as bytes: skipped
def test_junk_key_info_parses_like_the_sdk(native, info, tail, seed) -> None:
    _assert_model_predicts_native(native, *_crafted(info, tail, seed))


@_settings(100)
@given(key=st.binary(max_size=120), seed=st.integers(0, 2**32 - 1))
@example(key=b"=", seed=0)
@example(key=b"A===", seed=0)
@example(key=b"ab\0cd", seed=0)
def test_arbitrary_key_bytes_match_native(native, keys, key, seed) -> None:
    _, msg = _encrypt(b"{}", keys[1], seed)
    _assert_model_predicts_native(native, key, msg)


def test_lenient_base64_matches_the_sdk_rules() -> None:
    assert lenient_b64decode(b"QUJD") == b"ABC"
    assert lenient_b64decode(b"QUJDRA") == b"ABC"  # a 1–3 char tail is ignored
    assert lenient_b64decode(b"QUI=") == b"AB"
    assert lenient_b64decode(b"Q!J*") == lenient_b64decode(b"QAJA")  # unknown chars count as 0
    assert lenient_b64decode(b"") == b""


def test_key_info_parser_semantics() -> None:
    info = parse_sdk_key_info(protobuf.encode_fields([(1, b"a"), (4, 7), (1, b"bb"), (2, -3)]))
    assert (info.k1, info.pre_len, info.s_len) == (b"bb", -3, 7)  # last wins, int32 sign
    with pytest.raises(ValueError):
        parse_sdk_key_info(b"\x00")
    with pytest.raises(ValueError):
        parse_sdk_key_info(b"\x0f")  # wire type 7


@pytest.mark.parametrize("msg", ["", "x", "A" * 12, "A" * 13, "A" * 44])
def test_short_messages_are_refused_by_both(native, msg) -> None:
    for fn in (decrypt_data_py, native.decrypt_data):
        with pytest.raises(DecryptError) as err:
            fn(b"QUJD" * 11, msg)
        assert err.value.code == LOCAL_REFUSED
        assert f"({len(msg)} chars)" in str(err.value)


@pytest.mark.parametrize("msg", ["é" * 60, "A" * 30 + "\0" + "A" * 30])
def test_non_ascii_and_nul_messages_are_refused(native, msg) -> None:
    for fn in (decrypt_data_py, native.decrypt_data):
        with pytest.raises(DecryptError):
            fn(b"QUJD" * 11, msg)


# --------------------------------------------------------------------------- key ring


def _pem(key, fmt, password: bytes | None = None) -> bytes:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc)


def test_pkcs1_and_pkcs8_keys_load(tmp_path: Path, keys) -> None:
    p1 = tmp_path / "v1.pem"
    p1.write_bytes(_pem(keys[1], serialization.PrivateFormat.TraditionalOpenSSL))
    p2 = tmp_path / "v2.pem"
    p2.write_bytes(_pem(keys[2], serialization.PrivateFormat.PKCS8))
    assert p1.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY")
    assert p2.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    ring = KeyRing.from_pem_files({1: p1, 2: p2})
    assert ring.versions == [1, 2]
    for ver in (1, 2):
        wrapped, _ = _encrypt(b"{}", keys[ver], ver)
        assert ring.unwrap(ver, wrapped) == _unwrap(keys[ver], wrapped)
    again = KeyRing.from_pems(ring.to_pems())
    assert again.versions == [1, 2]


def test_encrypted_pkcs8_needs_the_right_password(keys) -> None:
    pem = _pem(keys[1], serialization.PrivateFormat.PKCS8, b"pw")
    assert KeyRing.from_pems({1: pem}, password=b"pw").versions == [1]
    with pytest.raises(KeyLoadError, match="no password"):
        KeyRing.from_pems({1: pem})
    with pytest.raises(KeyLoadError, match="wrong password"):
        KeyRing.from_pems({1: pem}, password=b"nope")


def test_bad_key_files_give_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nnot base64 at all\n-----END RSA PRIVATE KEY-----\n")
    not_pem = tmp_path / "notpem.key"
    not_pem.write_bytes(b"\x30\x82\x01\x00 binary")
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8))
    cases = [(garbage, "not a readable PEM"), (not_pem, "not a PEM file"), (ec_key, "not an RSA key"),
             (tmp_path / "absent.pem", "cannot read")]
    for path, words in cases:
        with pytest.raises(KeyLoadError) as err:
            KeyRing.from_pem_files({1: path})
        assert str(path) in str(err.value) and words in str(err.value)
        assert "\n" not in str(err.value)


def test_from_pems_names_the_source_in_errors() -> None:
    with pytest.raises(KeyLoadError, match=r"^/etc/keys/v7.pem: not a PEM file"):
        KeyRing.from_pems({7: b"junk"}, names={7: "/etc/keys/v7.pem"})
    with pytest.raises(KeyLoadError, match=r"^private key for publickey_ver 7: not a PEM file"):
        KeyRing.from_pems({7: b"junk"})


def test_missing_version_and_implicit_rejection(ring, keys) -> None:
    with pytest.raises(MissingKeyVersion) as err:
        ring.unwrap(3, "AAAA")
    assert isinstance(err.value, KeyError)
    assert str(err.value) == "no private key for publickey_ver 3"
    outcomes = set()
    for seed in range(12):  # wrong key: mostly junk without an exception, never rely on either
        wrapped, _ = _encrypt(b"{}", keys[1], seed)
        try:
            outcomes.add("junk" if ring.unwrap(2, wrapped) != ring.unwrap(1, wrapped) else "same")
        except ValueError as exc:
            assert str(exc) == "RSA decryption failed with the publickey_ver 2 key"
            outcomes.add("error")
    assert "junk" in outcomes and "same" not in outcomes
    with pytest.raises(ValueError, match="not valid base64"):
        ring.unwrap(1, "***")
    with pytest.raises(ValueError, match="needs 256"):
        ring.unwrap(1, base64.b64encode(b"short").decode())


# --------------------------------------------------------------------------- records


def _item(keys, ver: int, plain: bytes, seed: int = 0, msgid: str = "m1") -> dict:
    wrapped, msg = _encrypt(plain, keys[ver], seed)
    return {"seq": 1, "msgid": msgid, "publickey_ver": ver, "encrypt_random_key": wrapped, "encrypt_chat_msg": msg}


@pytest.mark.parametrize("impl_name", ["python", "native"])
def test_records_with_mixed_key_versions(keys, ring, impl_name) -> None:
    impl = decrypt_data_py if impl_name == "python" else native_decrypt_impl()
    for ver in (1, 2):  # K1: an old record keeps version 1 after key 2 was uploaded
        plain = json.dumps({"msgid": f"v{ver}", "text": {"content": "密"}}, ensure_ascii=False).encode()
        assert decrypt_record(_item(keys, ver, plain), ring, impl) == plain


def _reason(item, ring) -> RecordError:
    with pytest.raises(RecordError) as err:
        decrypt_record(item, ring, decrypt_data_py)
    return err.value


def test_record_errors_have_clear_reasons_without_content(keys, ring) -> None:
    secret_text = "CONFIDENTIAL-合同"
    good = _item(keys, 1, json.dumps({"t": secret_text}, ensure_ascii=False).encode())
    cases = {
        "no private key for publickey_ver 3": {**good, "publickey_ver": 3},
        "encrypt_chat_msg too short (5 chars)": {**good, "encrypt_chat_msg": "abcde"},
        "missing field encrypt_random_key": {k: v for k, v in good.items() if k != "encrypt_random_key"},
        "field publickey_ver is str, expected int": {**good, "publickey_ver": "1"},
        "field publickey_ver is bool, expected int": {**good, "publickey_ver": True},
        "encrypt_random_key is not valid base64": {**good, "encrypt_random_key": "%%%"},
        "chatdata item is a list, not a JSON object": [],
    }
    for reason, item in cases.items():
        err = _reason(item, ring)
        assert err.reason == reason and err.code is None
    # Encrypted for v1, labelled v2. Which way RSA with the wrong key fails depends on the
    # ciphertext: below key 2's modulus it returns junk (implicit rejection) and DecryptData
    # then fails with 10008; at or above it RSA itself refuses. Both are asserted.
    n2 = keys[2].public_key().public_numbers().n
    # A junk key passes DecryptData's padding check about once in 256 tries; that record is
    # then caught by the parser (not JSON), so take the first wrongly keyed one that fails here.
    wrong_keyed = [{**it, "publickey_ver": 2} for it in
                   (_item(keys, 1, json.dumps({"t": secret_text}, ensure_ascii=False).encode(), seed)
                    for seed in range(20))
                   if int.from_bytes(base64.b64decode(it["encrypt_random_key"]), "big") < n2]
    failures = []
    for it in wrong_keyed:
        try:
            decrypt_record(it, ring, decrypt_data_py)
        except RecordError as e:
            failures.append(e)
    assert len(failures) >= len(wrong_keyed) - 2 and failures
    wrong_key = failures[0]
    assert all(f.code == 10008 and f.reason.startswith("DecryptData 10008: ") for f in failures)
    at_modulus = base64.b64encode(n2.to_bytes(256, "big")).decode()
    rsa_refused = _reason({**good, "publickey_ver": 2, "encrypt_random_key": at_modulus}, ring)
    assert rsa_refused.reason == "RSA decryption failed with the publickey_ver 2 key" and rsa_refused.code is None
    for err in (wrong_key, _reason({**good, "encrypt_chat_msg": good["encrypt_chat_msg"][:60]}, ring)):
        assert secret_text not in err.reason and good["encrypt_chat_msg"][:45] not in err.reason


def _wrong_key_fails(keys, item: dict, ver: int) -> bool:
    """Whether ``item`` labelled ``ver`` fails in DecryptData (10008), not in RSA itself and
    not by the 1-in-256 chance of a junk key passing the padding check."""
    try:
        decrypt_record({**item, "publickey_ver": ver}, KeyRing(keys), decrypt_data_py)
    except RecordError as e:
        return e.code == 10008
    return False


def _pool_batch(keys) -> tuple[list[bytes], list[tuple[str, bool, str | None]]]:
    good = next(it for it in (_item(keys, 2, b'{"ok":true}', seed, msgid="good") for seed in range(64))
                if _wrong_key_fails(keys, it, 1))
    info = protobuf.encode_fields([(1, b"k"), (2, 30), (3, 0), (4, 40)])
    e_key, crash_msg = _crafted(info, "A" * 55, 3)
    crash = {"msgid": "crash", "publickey_ver": 1, "encrypt_chat_msg": crash_msg,
             "encrypt_random_key": base64.b64encode(
                 keys[1].public_key().encrypt(e_key, asympadding.PKCS1v15())).decode()}
    raw = [
        json.dumps(good).encode(),
        b"{not json",
        json.dumps({**good, "msgid": "short", "encrypt_chat_msg": "A" * 5}).encode(),
        json.dumps({**good, "msgid": "nokey", "publickey_ver": 9}).encode(),
        json.dumps(crash).encode(),
        json.dumps({**good, "msgid": "wrongver", "publickey_ver": 1}).encode(),
        json.dumps(good).encode(),
    ]
    expected = [
        ("good", True, None),
        ("", False, "chatdata item is not valid JSON"),
        ("short", False, "encrypt_chat_msg too short (5 chars)"),
        ("nokey", False, "no private key for publickey_ver 9"),
        ("crash", False, "DecryptData 10000"),
        ("wrongver", False, "DecryptData 10008"),
        ("good", True, None),
    ]
    return raw, expected


@pytest.mark.parametrize("use_native", [True, False])
def test_decrypt_items_in_a_process_pool_never_aborts(keys, ring, use_native) -> None:
    raw, expected = _pool_batch(keys)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=init_decrypt_worker,
                             initargs=(ring.to_pems(), None, use_native)) as pool:
        results = pool.submit(decrypt_items, raw).result(timeout=120)
        assert pool.submit(resource.getrlimit, resource.RLIMIT_CORE).result() == (0, 0)
        assert pool.submit(decrypt_items, raw[:1]).result()[0][1] == b'{"ok":true}'
    assert len(results) == len(expected)
    for (msgid, plaintext, reason), (want_id, ok, want_reason) in zip(results, expected, strict=True):
        assert msgid == want_id
        assert (plaintext is not None) == ok
        if want_reason is not None:
            assert reason is not None and reason.startswith(want_reason)
    assert results[0][1] == b'{"ok":true}'


def test_decrypt_items_requires_init(monkeypatch) -> None:
    import wxarchive.capture.wecom.decrypt as mod

    monkeypatch.setattr(mod, "_POOL_STATE", None)
    with pytest.raises(RuntimeError, match="init_decrypt_worker"):
        decrypt_items([b"{}"])
