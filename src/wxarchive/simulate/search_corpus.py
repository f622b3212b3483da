"""A large, hostile corpus of canonical messages for search recall tests and bench/search.py.

Fast to make (no encryption, no SDK: messages go straight to the catalog through the same
insert path the ingest uses) and built to break substring search: Chinese drawn with a
Zipf law over thousands of characters (so 1–2 character queries have hundreds to
thousands of hits), code-switched English in mixed case with words glued to numbers and
Chinese, phone numbers, amounts, order ids, emoji with skin tones, ZWJ families and
variation selectors, WeCom stickers, full-width letters, combining marks, characters
outside the BMP, tabs and newlines, and messages with file attachments of many types.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from wxarchive.model import Attachment, AttachmentState, Message, MessageKind

SOURCE = "wecom:wwsearchbench"
_EN = ("invoice meeting refund compliance contract Tencent approval rebate guarantee commission transfer "
       "account password client portfolio margin settlement offshore bonus urgent confidential report "
       "review deadline budget fund bond equity hedge NDA KYC AML Q3 OK ok PnL").split()
_EMOJI = ["👍", "👍🏻", "👍🏿", "❤️", "🔥", "😂", "🙏", "👨‍👩‍👧", "🇭🇰", "✅", "💰", "📈", "🧧", "🤝", "☕"]
_STICKERS = ["[强]", "[微笑]", "[OK]", "[抱拳]", "[红包]"]
_ODD = ["Ｆｕｌｌｗｉｄｔｈ", "ｔｅｒｍ", "café", "cafe\u0301", "𠀀𠀁", "𪚥", "\t", "\n", "  ", "Ω", "ß", "İ", "µ",
        "\u200b", "\ue000", "™", "①", "½", "¥1,234.50", "€", "％", "——", "……", "“引号”", "'", "ab\x00cd nul",
        "\u2400", "é", "e\u0301"]
_EXTS = ["pdf", "xlsx", "docx", "PDF", "jpg", "zip", "txt", "pptx", ""]


class _Zipf:
    def __init__(self, rng: random.Random, items: list[str], s: float = 1.05):
        self.items = items
        w = [1 / (i + 1) ** s for i in range(len(items))]
        total = sum(w)
        acc, self.cum = 0.0, []
        for x in w:
            acc += x / total
            self.cum.append(acc)
        self.rng = rng

    def draw(self) -> str:
        import bisect

        return self.items[min(bisect.bisect(self.cum, self.rng.random()), len(self.items) - 1)]


def fill(catalog, messages, batch: int = 5000, on_batch=None) -> int:
    """Insert messages into a catalog through the ingest's own path (Catalog.batch), ``batch``
    per transaction; ``on_batch(count)`` after each. Returns how many."""
    serial, chunk, n = 0, [], 0

    def flush() -> None:
        nonlocal serial
        serial += 1
        with catalog.batch(serial) as b:
            for x in chunk:
                b.message(x, serial, None)
        chunk.clear()
        if on_batch is not None:
            on_batch(n)

    for m in messages:
        chunk.append(m)
        n += 1
        if len(chunk) == batch:
            flush()
    if chunk:
        flush()
    return n


def generate(n: int, seed: int = 1, *, users: int = 500, conversations: int = 2000,
             start_ms: int = 1_704_038_400_000) -> Iterator[Message]:
    """``n`` messages over 2024 (UTC+8 new year to new year)."""
    rng = random.Random(seed)
    han = [chr(c) for c in range(0x4E00, 0x9FA6)]
    rng.shuffle(han)
    zh = _Zipf(rng, han[:7000], 0.85)  # ~7k characters as in real chat; the commonest in a few % of messages
    people = [f"user{i:04d}" for i in range(users)] + [f"wm{rng.getrandbits(60):015x}" for _ in range(users // 5)]
    convs = []
    for i in range(conversations):
        if i % 3 == 0:
            members = rng.sample(people, rng.randint(3, 12))
            convs.append((f"wr{i:08d}", "group", members))
        else:
            a, b = rng.sample(people, 2)
            convs.append(("|".join(sorted((a, b))), "direct", [a, b]))
    year_ms = 366 * 24 * 3600 * 1000
    recent: list[str] = []
    for i in range(n):
        cid, ckind, members = convs[rng.randrange(len(convs))]
        sender = rng.choice(members)
        text = _text(rng, zh)
        kind, attachments, recalls = MessageKind.TEXT, [], None
        r = rng.random()
        if r < 0.06:
            kind = MessageKind.FILE
            ext = rng.choice(_EXTS)
            name = f"{_text(rng, zh, short=True).strip() or 'file'}{'.' + ext if ext else ''}"
            size = rng.choice([12, 900, 15_000, 250_000, 3_000_000, None])
            attachments = [Attachment(path="file", kind="file", file_name=name, media_type=None, declared_size=size,
                                      state=rng.choice([AttachmentState.PRESENT, AttachmentState.EXPIRED]),
                                      size=size)]
            text = name
        elif r < 0.08 and recent:
            kind, recalls, text = MessageKind.RECALL, rng.choice(recent), ""
        msgid = f"{seed}-{i:09d}"
        recent.append(msgid)
        if len(recent) > 50:
            recent.pop(0)
        sent_at = None if rng.random() < 0.002 else start_ms + rng.randrange(year_ms)
        yield Message(source=SOURCE, msgid=msgid, conversation_id=cid, conversation_kind=ckind, kind=kind,
                      source_type=kind.value if kind != MessageKind.RECALL else "revoke",
                      action="recall" if recalls else "send", sender=sender,
                      recipients=[p for p in members if p != sender], sent_at=sent_at, seq=i + 1, text=text,
                      attachments=attachments, recalls=recalls)


def _text(rng: random.Random, zh: _Zipf, short: bool = False) -> str:
    parts: list[str] = []
    for _ in range(rng.randint(1, 3) if short else rng.randint(2, 9)):
        r = rng.random()
        if r < 0.55:
            parts.append("".join(zh.draw() for _ in range(rng.randint(1, 6))))
        elif r < 0.75:
            w = rng.choice(_EN)
            parts.append(w.upper() if rng.random() < 0.1 else w.capitalize() if rng.random() < 0.2 else w)
            if rng.random() < 0.3:
                parts.append(" ")
        elif r < 0.83:
            parts.append(rng.choice([f"1{rng.randint(3, 9)}{rng.randint(0, 999_999_999):09d}",
                                     f"+86 13{rng.randint(0, 9)} {rng.randint(0, 9999):04d} {rng.randint(0, 9999):04d}",
                                     f"¥{rng.randint(1, 99_999):,}.{rng.randint(0, 99):02d}",
                                     f"SO{rng.randint(0, 10**8):08d}", f"2024-{rng.randint(1, 12):02d}",
                                     f"{rng.randint(1, 99)}%"]))
        elif r < 0.9:
            parts.append(rng.choice(_EMOJI))
        elif r < 0.94:
            parts.append(rng.choice(_STICKERS))
        elif r < 0.98:
            parts.append(rng.choice(_ODD))
        else:
            parts.append(rng.choice(["，", "。", "！", "？", ",", ".", "!", " ", "：", "、"]))
    return "".join(parts)
