"""Writes a simulated WeCom corp into a tenant directory, exactly per docs/simulator.md.

``generate_tenant`` streams: each record is built, encrypted and written (with its
answer-key line and its media) before the next one, and only small bounded state is
kept (recent messages for recalls and quotes), so a million-record tenant needs no
more memory than a small one. Everything — keys, padding, ciphertexts, media — comes
from RNGs seeded by ``seed``, so one seed always yields byte-identical files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from cryptography.hazmat.primitives.asymmetric import padding as asympadding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from wxarchive.simulate import corpus, rsakeys
from wxarchive.simulate.contents import ContentFactory, Draft, Stored, dumps, expected_kind, file_digest
from wxarchive.simulate.corp import CORP_NAME, Conversation, Corp, build_corp
from wxarchive.simulate.crypto import encrypt_media, encrypt_message, make_sdkfileid
from wxarchive.simulate.localdecrypt import ERR_DECRYPT, DecryptDataError, decrypt_data
from wxarchive.simulate.media import MediaFile
from wxarchive.simulate.scenarios import Plan, Planned, minimum_messages

KEY_VERSIONS = (1, 2)  # the keys the admin has; version 3 appears on one record but has no key
MISSING_KEY_VERSION = 3
START_MS = 1_709_856_000_000  # 2024-03-08T00:00:00Z
SPAN_MS = 4 * 86_400_000
DST_INSTANT_MS = 1_710_054_000_000  # 2024-03-10T07:00:00Z: New York springs forward (case T1)
PROGRESS_EVERY = 500

GROUP_ONLY = frozenset({"vote", "collect", "solitaire", "meeting_notification"})
ROBOT_TYPES = frozenset({"markdown", "news"})
CONSENT_TYPES = frozenset({"agree", "disagree"})
DIRECT_ONLY = frozenset({"meeting_voice_call", "voip_doc_share"})


@dataclass
class TenantSummary:
    """What was written, for the CLI and for tests."""

    out_dir: Path
    corp_id: str
    seed: int
    messages: int
    rotation_seq: int
    key_versions: list[int]
    msgtypes: list[str]
    archived: int
    quarantined: int
    media_items: int
    media_bytes: int
    seconds: float


# --------------------------------------------------------------------------- small parts


class Timeline:
    """Message times in ms: evenly spread over four days, jittered, sometimes equal.

    The two records that cross 2024-03-10T07:00Z are pinned to 06:59:00Z and 07:00:00Z
    so every tenant has messages on both sides of the New York DST switch.
    """

    def __init__(self, rng: random.Random, n: int) -> None:
        self.rng = rng
        self.step = max(1, SPAN_MS // n)
        self.index = 0
        self.last = START_MS
        self.pins = [DST_INSTANT_MS - 60_000, DST_INSTANT_MS]

    def next(self) -> int:
        base = START_MS + self.index * self.step
        self.index += 1
        t = self.last if self.rng.random() < 0.03 else max(self.last, base + self.rng.randrange(self.step))
        if self.pins and t >= self.pins[0]:
            t = max(self.last, self.pins.pop(0))
        self.last = t
        return t


class SeqCounter:
    """Ascending seqs with gaps (case K5): one early, one large, a few random."""

    def __init__(self, rng: random.Random, n: int) -> None:
        self.rng = rng
        self.big_gap_at = n // 3
        self.seq = 0

    def next(self, index: int) -> int:
        gap = 0
        if index == 3:
            gap = 2
        elif index == self.big_gap_at:
            gap = 1000
        elif self.rng.random() < 0.004:
            gap = self.rng.randint(1, 5)
        self.seq += 1 + gap
        return self.seq


class MsgidFactory:
    """Unique msgids in WeCom's three shapes: ``<digits>_<unix>[_external|_updown_stream]``,
    old ``CAQQ…=``, and the bare digits of switch records."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.salt = rng.getrandbits(64)
        self.counter = 0

    def _digits(self) -> int:
        self.counter += 1
        return (self.counter * 0x9E3779B97F4A7C15 + self.salt) % (1 << 64)  # a bijection: never repeats

    def make(self, msgtime: int, external: bool, style: str = "auto") -> str:
        digits = self._digits()
        if style == "old":
            raw = b"\x08\x04\x10" + digits.to_bytes(8, "big") + self.rng.randbytes(9)
            return base64.b64encode(raw).decode("ascii")
        suffix = "_updown_stream" if style == "updown" else "_external" if external else ""
        return f"{digits}_{msgtime // 1000}{suffix}"

    def switch(self) -> str:
        return f"{self._digits()}{self.rng.randrange(10)}"


@dataclass(frozen=True)
class RecentMessage:
    msgid: str
    conversation: Conversation
    sender: str
    text: str


@dataclass
class Recent:
    """Bounded memory of recent messages: recall targets and quotable texts."""

    any: deque[RecentMessage] = field(default_factory=lambda: deque(maxlen=64))
    texts: deque[RecentMessage] = field(default_factory=lambda: deque(maxlen=64))

    def remember(self, plaintext: dict[str, Any], conversation: Conversation) -> None:
        text = plaintext.get("text", {}).get("content", "") if plaintext["msgtype"] == "text" else ""
        entry = RecentMessage(plaintext["msgid"], conversation, plaintext["from"], text)
        self.any.append(entry)
        if text and len(text) < 200:
            self.texts.append(entry)


def _jsonl(obj: Any) -> bytes:
    return dumps(obj) + b"\n"


class Outputs:
    """The four streamed files of a tenant directory."""

    def __init__(self, out_dir: Path) -> None:
        (out_dir / "answer").mkdir(parents=True, exist_ok=True)
        (out_dir / "media").mkdir(parents=True, exist_ok=True)
        self.chatdata = open(out_dir / "chatdata.jsonl", "wb", buffering=1 << 20)  # noqa: SIM115
        self.answer = open(out_dir / "answer" / "messages.jsonl", "wb", buffering=1 << 20)  # noqa: SIM115
        self.media_index = open(out_dir / "media" / "index.jsonl", "wb")  # noqa: SIM115
        self.media_answer = open(out_dir / "answer" / "media.jsonl", "wb")  # noqa: SIM115

    def close(self) -> None:
        for f in (self.chatdata, self.answer, self.media_index, self.media_answer):
            f.close()


class MediaStore:
    """Encrypts each media plaintext to media/<fileid>.enc and records index + answer lines."""

    def __init__(self, media_dir: Path, rng: random.Random, index: IO[bytes], answer: IO[bytes]) -> None:
        self.media_dir = media_dir
        self.rng = rng
        self.index = index
        self.answer = answer
        self.salt = rng.getrandbits(64)
        self.corp_number = 1688850000000000 + rng.randrange(10**12)
        self.count = 0
        self.bytes = 0

    def _authkey(self, msgtime: int) -> str:
        raw = f"47_{self.corp_number}_{1970325000000000 + self.rng.randrange(10**12)}_{msgtime // 1000}"
        return base64.b64encode(raw.encode()).decode("ascii")

    def store(
        self, file: MediaFile, *, msgid: str, path: str, kind: str, file_name: str | None, msgtime: int, expired: bool
    ) -> Stored:
        self.count += 1
        fileid = hashlib.blake2b(f"{self.salt}:{self.count}".encode(), digest_size=20).hexdigest()
        authkey = self._authkey(msgtime)
        aeskey = self.rng.randbytes(16).hex()
        cipher = encrypt_media(file.data, aeskey)
        rel = f"media/{fileid}.enc"
        with open(self.media_dir / f"{fileid}.enc", "wb") as f:
            f.write(cipher)
        md5, sha256 = file_digest(file.data)
        self.bytes += len(cipher)
        self.index.write(
            _jsonl(
                {
                    "fileid": fileid,
                    "authkey": authkey,
                    "path": rel,
                    "cipher_size": len(cipher),
                    "plain_size": len(file.data),
                    "expired": expired,
                }
            )
        )
        self.answer.write(
            _jsonl(
                {
                    "msgid": msgid,
                    "path": path,
                    "kind": kind,
                    "file_name": file_name,
                    "size": len(file.data),
                    "md5": md5,
                    "sha256": sha256,
                    "state": "expired" if expired else "present",
                }
            )
        )
        return Stored(make_sdkfileid(fileid, authkey, aeskey), md5, len(file.data))


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret with mode 0600 from the start (never world-readable, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _clear_previous(out_dir: Path) -> None:
    """Remove the files an earlier generation wrote here (only ours, by name)."""
    for name in ("tenant.json", "chatdata.jsonl", "secret"):
        (out_dir / name).unlink(missing_ok=True)
    for pattern in ("keys/private_v*.pem", "keys/public_v*.pem", "media/*.enc", "media/index.jsonl", "answer/*.jsonl"):
        for p in out_dir.glob(pattern):
            p.unlink()


# --------------------------------------------------------------------------- the generator


class TenantGenerator:
    """One generation run; see ``generate_tenant``."""

    def __init__(self, out_dir: Path, messages: int, seed: int, progress: Callable[[int], None] | None) -> None:
        self.out_dir = out_dir
        self.n = messages
        self.seed = seed
        self.progress = progress
        self.rng = random.Random(f"wxarchive-tenant:{seed}")
        self.crypto_rng = random.Random(f"wxarchive-crypto:{seed}")
        self.corp: Corp = build_corp(random.Random(f"wxarchive-corp:{seed}"))
        self.keys: dict[int, RSAPrivateKey] = {
            v: rsakeys.generate_private_key(f"{seed}:v{v}") for v in (*KEY_VERSIONS, MISSING_KEY_VERSION)
        }
        self.public = {
            v: cast(RSAPublicKey, rsakeys.SeededPublicKey.of(k, self.crypto_rng)) for v, k in self.keys.items()
        }
        self.timeline = Timeline(self.rng, messages)
        self.seqs = SeqCounter(self.rng, messages)
        self.msgids = MsgidFactory(self.rng)
        self.recent = Recent()
        self.tags: dict[str, RecentMessage] = {}
        self.pending: dict[str, Draft] = {}
        self.mid = messages // 2
        self.late_v1 = {self.mid + 1, self.mid + (messages - self.mid) // 2}
        self.rotation_seq = 0
        self.msgtypes: set[str] = set()
        self.quarantined = 0
        people = [u.name for u in self.corp.users]
        clients = [e.name for e in self.corp.externals]
        self.text = corpus.TextCorpus(self.rng, people, clients)
        self._pools = self._conversation_pools()

    # ------------------------------------------------------------------ directory files

    def _write_keys_and_secret(self) -> None:
        keys_dir = self.out_dir / "keys"
        keys_dir.mkdir(parents=True, exist_ok=True)
        for v in KEY_VERSIONS:
            _write_private(keys_dir / f"private_v{v}.pem", rsakeys.private_pem(self.keys[v], pkcs8=v != 1))
            (keys_dir / f"public_v{v}.pem").write_bytes(rsakeys.public_pem(self.keys[v]))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        secret = "".join(self.rng.choice(alphabet) for _ in range(43))
        _write_private(self.out_dir / "secret", (secret + "\n").encode())

    def _write_tenant_json(self) -> None:
        meta = {
            "corp_id": self.corp.corp_id,
            "corp_name": CORP_NAME,
            "seed": self.seed,
            "messages": self.n,
            "key_versions": list(KEY_VERSIONS),
            "rotation_seq": self.rotation_seq,
            **self.corp.directory_json(),
            "msgtypes": sorted(self.msgtypes),
        }
        tmp = self.out_dir / "tenant.json.tmp"
        tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.out_dir / "tenant.json")

    # ------------------------------------------------------------------ conversations

    def _conversation_pools(self) -> dict[str, list[Conversation]]:
        c = self.corp.conversations
        groups = c["group"]
        return {
            "robot": [g for g in groups if g.robots],
            "group": groups,
            "consent": c["external"],
            "external_any": c["external"] + [g for g in groups if g.external],
            "internal_any": c["internal"] + [g for g in groups if not g.external],
            "direct": c["internal"] + c["external"],
        }

    def _conversation(self, msgtype: str, named: str | None) -> Conversation:
        if named:
            return self.corp.named[named]
        pool = (
            "robot"
            if msgtype in ROBOT_TYPES
            else "group"
            if msgtype in GROUP_ONLY
            else "consent"
            if msgtype in CONSENT_TYPES
            else "external_any"
            if msgtype == "external_redpacket"
            else "internal_any"
            if msgtype == "redpacket"
            else "direct"
            if msgtype in DIRECT_ONLY
            else None
        )
        if pool:
            return self.rng.choice(self._pools[pool])
        category = self.rng.choices(("group", "internal", "external"), weights=(40, 35, 25))[0]
        return self.rng.choice(self.corp.conversations[category])

    def _sender(self, msgtype: str, conv: Conversation) -> str:
        if msgtype in ROBOT_TYPES and conv.robots:
            return self.rng.choice(conv.robots)
        externals = [p for p in conv.people if not self.corp.is_employee(p)]
        employees = [p for p in conv.people if self.corp.is_employee(p)]
        if msgtype in CONSENT_TYPES and externals:
            return externals[0]
        if msgtype in ("external_redpacket", "switch") and employees:
            return self.rng.choice(employees)
        return self.rng.choice(conv.people)

    # ------------------------------------------------------------------ messages

    def _draft(
        self, msgtype: str, planned: Planned, conv: Conversation | None = None, sender: str | None = None
    ) -> Draft:
        conv = conv or self._conversation(msgtype, planned.conversation)
        sender = sender or self._sender(msgtype, conv)
        msgtime = self.timeline.next()
        msgid = self.msgids.make(msgtime, conv.external, planned.msgid_style)
        return Draft(msgid, msgtime, sender, conv, dict(planned.options))

    def _quote_draft(self, planned: Planned, quoted: RecentMessage) -> Draft:
        """A quoted reply (C3): same conversation as the quoted text, prefixed as WeCom does."""
        others = [p for p in quoted.conversation.people if p != quoted.sender]
        draft = self._draft("text", planned, conv=quoted.conversation, sender=self.rng.choice(others))
        who = self.corp.names.get(quoted.sender, quoted.sender)
        draft.options["text"] = f'{corpus.QUOTE_PREFIX}\n"{who}：\n{quoted.text}"\n------\n{self.text.sentence()}'
        return draft

    def _quoted(self, planned: Planned) -> RecentMessage | None:
        """The message a text should quote: a tagged one, or now and then a recent one."""
        if "quote_tag" in planned.options:
            return self.tags.pop(planned.options["quote_tag"])
        if self.recent.texts and self.rng.random() < 0.01:
            return self.rng.choice(self.recent.texts)
        return None

    def _revoke_draft(self, planned: Planned) -> Draft | None:
        """A recall: of a tagged message, of a message emitted *after* it, or of a recent one."""
        opts = planned.options
        if "target_tag" in opts:
            target: RecentMessage | None = self.tags.pop(opts["target_tag"])
        elif "ahead_tag" in opts:
            conv = self._conversation("revoke", None)
            sender = self._sender("text", conv)
            draft = self._draft("revoke", planned, conv=conv, sender=sender)
            original_time = draft.msgtime - 30_000
            original = Draft(self.msgids.make(original_time, conv.external), original_time, sender, conv)
            self.pending[opts["ahead_tag"]] = original
            draft.options["pre_msgid"] = original.msgid
            return draft
        else:
            target = self.rng.choice(self.recent.any) if self.recent.any else None
        if target is None:
            return None
        if target in self.recent.any:
            self.recent.any.remove(target)
        draft = self._draft("revoke", planned, conv=target.conversation, sender=target.sender)
        draft.options["pre_msgid"] = target.msgid
        return draft

    def _switch(self) -> dict[str, Any]:
        user = self.rng.choice(self.corp.users).userid
        return {"msgid": self.msgids.switch(), "action": "switch", "time": self.timeline.next(), "user": user}

    def _message(self, planned: Planned) -> dict[str, Any]:
        """The decrypted JSON of one archived record."""
        msgtype = planned.msgtype
        if msgtype == "switch":
            return self._switch()
        draft: Draft | None
        if "original_tag" in planned.options:
            draft = self.pending.pop(planned.options["original_tag"])
        elif msgtype == "revoke":
            draft = self._revoke_draft(planned)
            if draft is None:
                msgtype, draft = "text", self._draft("text", planned)
        elif msgtype == "text" and (quoted := self._quoted(planned)):
            draft = self._quote_draft(planned, quoted)
        else:
            draft = self._draft(msgtype, planned)
        plaintext = self.factory.plaintext(msgtype, draft)
        if msgtype not in ("revoke", "agree", "disagree") and "original_tag" not in planned.options:
            self.recent.remember(plaintext, draft.conversation)
        if "tag" in planned.options:
            self.tags[planned.options["tag"]] = self.recent.any[-1]
        return plaintext

    # ------------------------------------------------------------------ records

    def _key_version(self, index: int) -> int:
        """Version 1 before the rotation, 2 after, but a few late records still carry 1 (K1)."""
        if index < self.mid:
            return 1
        if index in self.late_v1 or self.rng.random() < 0.002:
            return 1
        return 2

    def _encrypt(self, body: bytes, version: int) -> tuple[str, str]:
        return encrypt_message(body, self.public[version], self.crypto_rng)

    def _random_key(self, encrypt_random_key: str, version: int) -> bytes:
        return self.keys[version].decrypt(base64.b64decode(encrypt_random_key), asympadding.PKCS1v15())

    def _corrupt(self, version: int) -> tuple[str, str]:
        """A record whose key opens but whose body does not: DecryptData returns 10006.

        The first 45 characters and the message length stay intact, so the real SDK
        parses the offsets normally (no abort) and fails on the body; the local model
        of DecryptData confirms the failure before the record is written.
        """
        body = dumps({"msgtype": "text", "text": {"content": "corrupted in transit"}})
        for _ in range(32):
            erk, ecm = self._encrypt(body, version)
            start, end = 60, len(ecm) - 20
            junk = "".join(
                self.rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
                for _ in range(end - start)
            )
            bad = ecm[:start] + junk + ecm[end:]
            try:
                decrypt_data(self._random_key(erk, version), bad)
            except DecryptDataError as exc:
                if exc.code == ERR_DECRYPT:
                    return erk, bad
        raise RuntimeError("could not build a corrupted record")  # 32 misses in a row: p < 2^-200

    def _bad_record(self, planned: Planned, version: int) -> tuple[int, str, str, str, str]:
        """(publickey_ver, msgid, encrypt_random_key, encrypt_chat_msg, reason) of a quarantine case."""
        kind = planned.options["bad"]
        draft = self._draft("text", planned)
        body = dumps(self.factory.plaintext("text", draft))
        if kind == "missing_key":
            erk, ecm = self._encrypt(body, MISSING_KEY_VERSION)
            reason = f"no private key for publickey_ver {MISSING_KEY_VERSION} (missing key version)"
            return MISSING_KEY_VERSION, draft.msgid, erk, ecm, reason
        if kind == "short":
            erk, _ = self._encrypt(body, version)
            return version, draft.msgid, erk, "short", "encrypt_chat_msg is 5 characters, too short to decrypt"
        if kind == "corrupt":
            erk, ecm = self._corrupt(version)
            return version, draft.msgid, erk, ecm, "DecryptData failed (10006): corrupted encrypt_chat_msg"
        erk, ecm = self._encrypt(b"\x00\x01<xml>not json</xml>\xff\xfe", version)
        return version, draft.msgid, erk, ecm, "decrypted plaintext is not JSON"

    def _emit(self, out: Outputs, index: int, planned: Planned) -> None:
        seq = self.seqs.next(index)
        if index == self.mid:
            self.rotation_seq = seq
        version = self._key_version(index)
        if planned.msgtype == "bad":
            version, msgid, erk, ecm, reason = self._bad_record(planned, version)
            answer = {"expected": "quarantined", "reason": reason, "kind": None, "plaintext": None}
            self.quarantined += 1
        else:
            plaintext = self._message(planned)
            msgid = plaintext["msgid"]
            erk, ecm = self._encrypt(dumps(plaintext), version)
            answer = {"expected": "archived", "reason": None, "kind": expected_kind(plaintext), "plaintext": plaintext}
            self.msgtypes.add(plaintext.get("msgtype", "switch"))
        record = {
            "seq": seq,
            "msgid": msgid,
            "publickey_ver": version,
            "encrypt_random_key": erk,
            "encrypt_chat_msg": ecm,
        }
        out.chatdata.write(_jsonl(record))
        out.answer.write(_jsonl({"seq": seq, "msgid": msgid, "publickey_ver": version, **answer}))

    def run(self, started: float) -> TenantSummary:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _clear_previous(self.out_dir)
        self._write_keys_and_secret()
        out = Outputs(self.out_dir)
        try:
            self.media = MediaStore(self.out_dir / "media", self.rng, out.media_index, out.media_answer)
            self.factory = ContentFactory(self.rng, self.corp, self.text, self.media)
            for index, planned in enumerate(Plan(self.n, self.rng)):
                self._emit(out, index, planned)
                if self.progress and (index + 1) % PROGRESS_EVERY == 0:
                    self.progress(index + 1)
        finally:
            out.close()
        self._write_tenant_json()
        if self.progress:
            self.progress(self.n)
        return TenantSummary(
            out_dir=self.out_dir,
            corp_id=self.corp.corp_id,
            seed=self.seed,
            messages=self.n,
            rotation_seq=self.rotation_seq,
            key_versions=list(KEY_VERSIONS),
            msgtypes=sorted(self.msgtypes),
            archived=self.n - self.quarantined,
            quarantined=self.quarantined,
            media_items=self.media.count,
            media_bytes=self.media.bytes,
            seconds=round(time.perf_counter() - started, 2),
        )


def generate_tenant(
    out_dir: Path,
    messages: int = 20000,
    seed: int = 7,
    *,
    progress: Callable[[int], None] | None = None,
) -> TenantSummary:
    """Write a simulated WeCom tenant (docs/simulator.md) into ``out_dir``.

    ``messages`` is the number of chatdata records (at least the number of forced
    scenarios, ~90). Files a previous run wrote into ``out_dir`` are replaced.
    ``progress`` is called with the number of records written so far.
    """
    started = time.perf_counter()
    if messages < minimum_messages():
        raise ValueError(f"a tenant needs at least {minimum_messages()} messages to hold every scenario")
    return TenantGenerator(Path(out_dir), messages, seed, progress).run(started)
