"""Search never misses: every query's result set equals a brute-force scan of the same messages.

A 100,000-message hostile corpus (simulate/search_corpus.py) goes into a catalog through the
ingest's own insert path. Then: hundreds of random 1–6 character substrings of its texts
(any script, emoji, spaces, punctuation), words and fragments, numbers, the odd characters;
the same folded (case/width/Traditional-insensitive); AND/OR/NOT; and every filter, alone
and combined with text, from a table. Each is compared with Python's ``in`` over the list.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest

from wxarchive.archive.catalog.sqlite import Catalog
from wxarchive.search import text as textq
from wxarchive.search.query import Query, QueryError, count, matching_ids, search
from wxarchive.simulate.search_corpus import fill, generate

N = 100_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cat = Catalog.open(tmp_path_factory.mktemp("recall") / "catalog.db")
    msgs = list(generate(N, seed=5))
    fill(cat, msgs)
    yield cat.engine, msgs
    cat.close()


def _found(engine, q: Query) -> set[str]:
    got = [msgid for _, msgid in matching_ids(engine, q)]
    assert len(got) == len(set(got)) == count(engine, q)
    return set(got)


def _brute(msgs, pred) -> set[str]:
    return {m.msgid for m in msgs if pred(m)}


def _substrings(msgs, rng: random.Random, n: int) -> list[str]:
    texts = [m.text for m in msgs if m.text]
    out = []
    while len(out) < n:
        t = rng.choice(texts)
        k = rng.randint(1, 6)
        if len(t) >= k:
            start = rng.randrange(len(t) - k + 1)
            out.append(t[start : start + k])
    return out


SPECIAL = ["的", "合同", "钱", "Q3", "OK", "ok", "NDA", "voic", "ompli", "138", "2024-0", "¥1", "%", "1%", "👍",
           "👍🏻", "🏻", "❤️", "\ufe0f", "👨‍👩‍👧", "\u200d", "[强]", "强]", "Ｆｕｌｌ", "ｔｅｒｍ", "café", "e\u0301",
           "\u0301", "𠀀", "𪚥", "𠀀𠀁", "\t", "\n", "  ", " ", "Ω", "ß", "İ", "µ", "\u200b", "\ue000", "™", "①", "½",
           "——", "…", "“", "'", "，", "。", "a", "e", "1", "9", ".pdf", ".PDF", "xlsx", "\x00", "nul", "b\x00c",
           "\x00cd n", "\u2400", "cd nul", "é", "e\u0301"]


def test_every_substring_class_equals_a_brute_force_scan(corpus):
    engine, msgs = corpus
    rng = random.Random(7)
    queries = SPECIAL + _substrings(msgs, rng, 400)
    routes = {}
    for s in queries:
        got = _found(engine, Query(text=s, literal=True))
        want = _brute(msgs, lambda m, s=s: s in m.text)
        assert got == want, (repr(s), textq.route(s), len(got), len(want))
        routes[textq.route(s)] = routes.get(textq.route(s), 0) + 1
    assert set(routes) == {"trigram", "unigram", "scan"}  # every route was exercised


def test_folded_search_equals_a_folded_brute_force_scan(corpus):
    engine, msgs = corpus
    rng = random.Random(8)
    folded = {m.msgid: textq.fold(m.text) for m in msgs}
    for s in ["term", "TERM", "ｔｅｒｍ", "Ｆｕｌｌ", "full", "cafe", "ß", "ss", "µ", "開會", "开会", "nda", "é", "e\u0301",
              *_substrings(msgs, rng, 40)]:
        got = _found(engine, Query(text=s, literal=True, fold=True))
        f = textq.fold(s)
        assert got == _brute(msgs, lambda m: f in folded[m.msgid]), repr(s)
    assert _found(engine, Query(text="ｔｅｒｍ", literal=True, fold=True)) >= _found(engine, Query(text="term",
                                                                                                   literal=True))
    both = _found(engine, Query(text="é", literal=True, fold=True))  # precomposed and decomposed spellings meet
    assert both == _found(engine, Query(text="e\u0301", literal=True, fold=True))
    assert both >= _found(engine, Query(text="é", literal=True)) | _found(engine, Query(text="e\u0301", literal=True))


def test_operators_equal_their_brute_force_meaning(corpus):
    engine, msgs = corpus
    cases = {
        "合同 AND 的": lambda t: "合同" in t and "的" in t,
        "合同 OR 钱": lambda t: "合同" in t or "钱" in t,
        "NOT 的": lambda t: "的" not in t,
        "(invoice OR refund) AND NOT 的": lambda t: ("invoice" in t or "refund" in t) and "的" not in t,
        '"Q3" "OK"': lambda t: "Q3" in t and "OK" in t,
        'meeting ok': lambda t: "meeting ok" in t,
        '"AND" OR "NOT"': lambda t: "AND" in t or "NOT" in t,
        '"say ""hi"""': lambda t: 'say "hi"' in t,
    }
    for q, pred in cases.items():
        assert _found(engine, Query(text=q)) == _brute(msgs, lambda m: pred(m.text)), q


@pytest.mark.parametrize("bad", ["(合同", "合同)", '"unclosed', "AND", "合同 OR", "NOT", '""', "   ",
                                 " OR ".join(["ab"] * 300), "(" * 100 + "ab" + ")" * 100, "NOT " * 100 + "ab"])
def test_malformed_text_queries_are_refused_clearly(corpus, bad):
    engine, _ = corpus
    with pytest.raises(QueryError) as e:
        count(engine, Query(text=bad))
    assert any(w in str(e.value) for w in ("quote", "empty", "more than 256 substrings", "nested more than 64"))


def _ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp() * 1000)


def _filters(msgs):
    m0 = next(m for m in msgs if m.conversation_kind == "group")
    someone = m0.sender
    ext = next(m for m in msgs if m.sender and m.sender.startswith("wm")).sender
    recalled = {m.recalls for m in msgs if m.recalls}
    has_file = [m for m in msgs if m.attachments]
    name_bit = has_file[0].attachments[0].file_name[:2]
    lo, hi = _ms("2024-03-01"), _ms("2024-06-01")

    def is_ext(p: str | None) -> bool:
        return bool(p) and p.startswith(("wm", "wo"))

    return [
        ({"sender": someone}, lambda m: m.sender == someone),
        ({"participant": someone}, lambda m: m.sender == someone or someone in m.recipients),
        ({"kind": "file"}, lambda m: m.kind.value == "file"),
        ({"kind": "revoke"}, lambda m: m.source_type == "revoke"),
        ({"conversation": m0.conversation_id}, lambda m: m.conversation_id == m0.conversation_id),
        ({"external": True}, lambda m: is_ext(m.sender) or any(is_ext(r) for r in m.recipients)),
        ({"external": False}, lambda m: not (is_ext(m.sender) or any(is_ext(r) for r in m.recipients))),
        ({"since": lo}, lambda m: m.sent_at is not None and m.sent_at >= lo),
        ({"until": hi}, lambda m: m.sent_at is not None and m.sent_at < hi),
        ({"since": lo, "until": hi}, lambda m: m.sent_at is not None and lo <= m.sent_at < hi),
        ({"has_attachment": True}, lambda m: bool(m.attachments)),
        ({"attachment_ext": "pdf"}, lambda m: any((a.file_name or "").lower().endswith(".pdf") for a in m.attachments)),
        ({"attachment_ext": ".PDF"}, lambda m: any((a.file_name or "").lower().endswith(".pdf") for a in m.attachments)),
        ({"attachment_name": name_bit}, lambda m: any(name_bit.lower() in (a.file_name or "").lower()
                                                      for a in m.attachments)),
        ({"min_size": 10_000}, lambda m: any((a.size or a.declared_size or -1) >= 10_000 for a in m.attachments)),
        ({"max_size": 1_000}, lambda m: any(a.size is not None and a.size <= 1_000 for a in m.attachments)),
        ({"recalled": True}, lambda m: m.msgid in recalled),
        ({"recalled": False}, lambda m: m.msgid not in recalled),
        ({"source": "wecom:wwsearchbench"}, lambda m: True),
        ({"source": "wecom:other"}, lambda m: False),
        ({"sender": ext, "since": lo, "until": hi}, lambda m: m.sender == ext and m.sent_at is not None
         and lo <= m.sent_at < hi),
        ({"participant": someone, "kind": "text", "external": False},
         lambda m: (m.sender == someone or someone in m.recipients) and m.kind.value == "text"
         and not (is_ext(m.sender) or any(is_ext(r) for r in m.recipients))),
    ]


@pytest.mark.parametrize("text", [None, "的", "合同", "Q3", "ok", "invoice"])
def test_every_filter_alone_and_with_text_equals_brute_force(corpus, text):
    engine, msgs = corpus
    for kwargs, pred in _filters(msgs):
        q = Query(text=text, **kwargs)
        want = _brute(msgs, lambda m: pred(m) and (text is None or text in m.text))
        assert _found(engine, q) == want, (kwargs, text)


def _brute_page(msgs, pred, offset: int, limit: int) -> list[str]:
    hits = sorted((m for m in msgs if pred(m)),
                  key=lambda m: (m.sent_at is None, m.sent_at or 0, m.seq or 0))
    return [m.msgid for m in hits[offset: offset + limit]]


@pytest.mark.parametrize("walk", ["walk", "indexes", "interrupted"])
def test_pages_of_common_and_rare_terms_equal_brute_force_order(corpus, walk, monkeypatch):
    """A page (search --limit/--offset) is the brute-force hits in time order, whether the walk
    in time order answers it (common terms) or the indexes do (rare ones, or a walk that ran
    out of time) — each route forced in turn, and left to choose."""
    from wxarchive.search import query as qmod

    engine, msgs = corpus
    if walk != "indexes":  # every text query tries the walk, with all the time it needs, or none
        monkeypatch.setattr(qmod, "WALK_FROM", 0)
        monkeypatch.setattr(qmod, "_walk_ratio", lambda total: 0.0)
        monkeypatch.setattr(qmod, "WALK_MS", 60_000.0 if walk == "walk" else 0.0)
        monkeypatch.setattr(qmod, "WALK_MS_MAX", 60_000.0 if walk == "walk" else 0.0)
    walked = []
    real = qmod._walk_page if walk == "walk" else (lambda c, q: None)
    monkeypatch.setattr(qmod, "_walk_page", lambda c, q: walked.append(r := real(c, q)) or r)
    cases = [("的", {}), ("ok", {}), ("invoice", {}), ("合同", {}), ("👍", {}), ("1", {}), ("e", {"kind": "text"}),
             ("的", {"since": _ms("2024-03-01")}), ("的 OR invoice", {}), ("的 AND NOT 合同", {}), ("a", {"external": True}),
             ("zzz-not-there", {})]
    for text, kw in cases:
        pred = {"的 OR invoice": lambda m: "的" in m.text or "invoice" in m.text,
                "的 AND NOT 合同": lambda m: "的" in m.text and "合同" not in m.text}.get(
            text, lambda m, t=text: t in m.text)
        full = lambda m, p=pred, kw=kw: p(m) and all(  # noqa: E731
            (k != "kind" or m.kind.value == v) and (k != "since" or (m.sent_at is not None and m.sent_at >= v))
            and (k != "external" or (m.sender or "").startswith(("wm", "wo")) or any(r.startswith(("wm", "wo"))
                                                                                    for r in m.recipients))
            for k, v in kw.items())
        for offset, limit in ((0, 50), (50, 50), (990, 10), (0, 1)):
            got = [r["msgid"] for r in search(engine, Query(text=text, offset=offset, limit=limit, **kw))]
            assert got == _brute_page(msgs, full, offset, limit), (text, kw, offset, limit)
    if walk == "walk":
        assert sum(1 for r in walked if r is not None) >= 20  # the walk itself answered most pages
    if walk == "interrupted":  # cut off at once: the indexes answered, on the same connection
        assert sum(1 for r in walked if r is None) >= 20


def test_count_and_page_equal_the_count_and_the_page_apart(corpus):
    """What `search` shows (count in a thread beside the page) is the two answers taken apart."""
    from wxarchive.search.query import count_and_page

    engine, msgs = corpus
    for text, kw in (("的", {}), ("invoice", {}), ("👍", {"kind": "text"}), ("ok", {}), ("zzz-not-there", {})):
        q = Query(text=text, limit=50, **kw)
        n, rows = count_and_page(engine, q)
        assert n == count(engine, q) == len(_found(engine, Query(text=text, **kw)))
        assert [r["msgid"] for r in rows] == [r["msgid"] for r in search(engine, q)]
    with pytest.raises(QueryError):  # a query that cannot run fails as it does alone
        count_and_page(engine, Query(text="(合同", limit=50))
