"""Text queries: their little language, and which index answers each substring without missing.

Language (dtSearch-like, as reviewers know it from Relativity):
- words typed together are **one substring**, spaces included: ``term sheet`` finds the
  text "term sheet" (not "term" and "sheet" apart);
- ``AND``, ``OR``, ``NOT`` (upper case, on their own) and parentheses combine substrings;
  two quoted phrases side by side mean AND; ``NOT`` binds tightest, then ``AND``, then ``OR``;
- ``"..."`` quotes a substring that holds operator words, parentheses or quotes (a quote
  inside is written twice: ``"say ""hi"" now"``);
- ``literal=True`` takes the whole text as one substring, whatever it holds.

Routing (measured in docs/search-and-storage.md; every route is exact — compared with a
brute-force scan in tests/test_search_recall.py):
- 3+ code points → the trigram index (case-sensitive), re-checked with ``instr``;
- 1–2 code points, none an ASCII letter or digit → the unigram index, as a phrase of single
  characters (exact as it is when no character is case-folded by the tokenizer, else
  re-checked);
- 1–2 code points with an ASCII letter or digit (``OK``, ``Q3``, ``5%``) → an ``instr`` scan of
  the rows the other filters leave.

``fold=True`` (the documented option): case-, width- and Traditional/Simplified-insensitive,
by a per-character normalisation of both sides (``fold`` in archive/catalog/fts.py: NFKD,
case fold, OpenCC's t2s of the character), so that it is still a substring relation:
answered by a scan of the folded text the catalog keeps, over the rows the other filters
leave.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from wxarchive.archive.catalog.fts import PLACEHOLDER, fold, is_token_char, unigram_tokens

__all__ = ["fold", "parse", "route", "terms", "unigram_exact", "unigram_phrase", "TextQueryError"]


class TextQueryError(ValueError):
    """A text query that cannot be read; the message says where and how to quote it."""


@dataclass(frozen=True)
class Term:
    text: str


@dataclass(frozen=True)
class Not:
    part: object


@dataclass(frozen=True)
class And:
    parts: tuple


@dataclass(frozen=True)
class Or:
    parts: tuple


MAX_TERMS = 256  # substrings per query (SQLite's expression depth is 1,000)
MAX_DEPTH = 64  # nested parentheses / NOTs
_LEX = re.compile(r'\s+|\(|\)|"(?:[^"]|"")*"|"|[^\s()"]+')
_OPS = {"AND", "OR", "NOT"}


def parse(query: str, *, literal: bool = False):
    """The query as a tree of Term / Not / And / Or."""
    if literal and query:
        return Term(query)
    if not query or not query.strip():
        raise TextQueryError("empty text query (to find spaces, pass the text as a literal)")
    toks: list[tuple[str, str, int, int]] = []  # (kind, value, start, end)
    for m in _LEX.finditer(query):
        tok = m.group()
        if tok.isspace():
            continue
        if tok in ("(", ")"):
            toks.append((tok, tok, m.start(), m.end()))
        elif tok == '"':
            raise TextQueryError(f"unclosed quote at character {m.start() + 1} (write a quote inside a phrase twice)")
        elif tok.startswith('"'):
            inner = tok[1:-1].replace('""', '"')
            if not inner:
                raise TextQueryError(f"empty phrase \"\" at character {m.start() + 1}")
            toks.append(("phrase", inner, m.start(), m.end()))
        elif tok in _OPS:
            toks.append(("op", tok, m.start(), m.end()))
        else:
            toks.append(("word", tok, m.start(), m.end()))
    # adjacent bare words are one substring, with the spacing typed between them
    merged: list[tuple[str, str, int, int]] = []
    for t in toks:
        if t[0] == "word" and merged and merged[-1][0] == "word":
            k, _, start, _ = merged[-1]
            merged[-1] = ("word", query[start : t[3]], start, t[3])
        else:
            merged.append(t)
    if sum(1 for t in merged if t[0] in ("word", "phrase")) > MAX_TERMS:
        raise TextQueryError(f"more than {MAX_TERMS} substrings in one query: split it, or export and filter")
    pos = 0
    depth = 0

    def peek():
        return merged[pos] if pos < len(merged) else None

    def take():
        nonlocal pos
        pos += 1
        return merged[pos - 1]

    def or_expr():
        parts = [and_expr()]
        while (t := peek()) and t[:2] == ("op", "OR"):
            take()
            parts.append(and_expr())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_expr():
        parts = [not_expr()]
        while (t := peek()) and (t[:2] == ("op", "AND") or t[0] in ("word", "phrase", "(") or t[:2] == ("op", "NOT")):
            if t[:2] == ("op", "AND"):
                take()
            parts.append(not_expr())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def deeper():
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise TextQueryError(f"nested more than {MAX_DEPTH} deep (parentheses or NOT)")

    def shallower():
        nonlocal depth
        depth -= 1

    def not_expr():
        t = peek()
        if t and t[:2] == ("op", "NOT"):
            take()
            deeper()
            node = Not(not_expr())
            shallower()
            return node
        return primary()

    def primary():
        t = peek()
        if t is None:
            raise TextQueryError("the query ends where a word, phrase or '(' was expected "
                                 "(quote AND/OR/NOT to search them as words)")
        take()
        if t[0] in ("word", "phrase"):
            return Term(t[1])
        if t[0] == "(":
            deeper()
            inner = or_expr()
            if not (peek() and peek()[0] == ")"):
                raise TextQueryError(f"'(' at character {t[2] + 1} is never closed (quote it to search it)")
            take()
            shallower()
            return inner
        raise TextQueryError(f"unexpected {t[1]!r} at character {t[2] + 1} (quote it to search it as text)")

    tree = or_expr()
    if pos != len(merged):
        t = merged[pos]
        raise TextQueryError(f"unexpected {t[1]!r} at character {t[2] + 1} (quote it to search it as text)")
    return tree


def terms(tree) -> list[str]:
    """Every substring of a query, in order (for highlighting)."""
    if isinstance(tree, Term):
        return [tree.text]
    if isinstance(tree, Not):
        return []  # what must not be there is not highlighted
    return [t for p in tree.parts for t in terms(p)]


# ---- routing --------------------------------------------------------------------------------


def route(s: str) -> str:
    """Which index answers substring ``s`` exactly: "trigram", "unigram" or "scan"."""
    if len(s) >= 3:
        return "trigram"
    if any(c.isascii() and c.isalnum() for c in s):
        return "scan"
    if all(t == PLACEHOLDER for t in unigram_tokens(s)):
        return "scan"  # only spaces or controls: the placeholder token is far too common to help
    return "unigram"


def unigram_phrase(s: str) -> str:
    """The FTS5 phrase query for a substring routed to the unigram index."""
    return '"' + " ".join(unigram_tokens(s)).replace('"', '""') + '"'


def unigram_exact(s: str) -> bool:
    """Whether the unigram phrase alone is exact for ``s``: every character is its own token
    (none stands as the placeholder, which several share) and none is case-folded by the
    tokenizer. Then no re-check of the rows is needed."""
    return all(c != PLACEHOLDER and is_token_char(c) and c.lower() == c == c.upper() for c in s)


