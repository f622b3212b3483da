"""The catalog's full-text indexes over message text (the query side is search/text.py).

Two FTS5 indexes, because no single one finds every substring (measured in
docs/search-and-storage.md):

- ``messages_fts``: trigram, case-sensitive, external content (the messages table). Exact for
  any query of 3 or more code points; finds nothing for 1–2.
- ``messages_uni``: contentless, over a *unigram split* of the text: every character that is
  not an ASCII letter or digit is its own token (so Chinese, emoji and their modifiers,
  punctuation and symbols of any length are found as phrases of single characters), ASCII
  letter/digit runs stay words (they are found through the trigram index or a scan), and
  every character the tokenizer would drop (spaces, controls, joiners) becomes a placeholder
  token, so that two characters are adjacent tokens only if they are adjacent in the text.

Both are written in the same transaction as the message row and deleted with it (purge).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

PLACEHOLDER = "\ue000"  # a private-use character (category Co): a token standing for a dropped one
UNIGRAM_TOKENIZE = "unicode61 remove_diacritics 0 categories 'L* N* P* S* M* Co'"
_TOKEN_CATEGORIES = ("L", "N", "P", "S", "M")
_PIECES = re.compile(r"[0-9A-Za-z]+|.", re.S)
_kept: dict[str, bool] = {}

DDL = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5("
    "text, content='messages', content_rowid='id', tokenize='trigram case_sensitive 1')",
    "CREATE VIRTUAL TABLE IF NOT EXISTS messages_uni USING fts5("
    f"t, content='', columnsize=0, tokenize=\"{UNIGRAM_TOKENIZE}\")",
]
TABLES = ("messages_fts", "messages_uni")


def is_token_char(ch: str) -> bool:
    """Whether the unigram tokenizer keeps ``ch`` (else it stands as PLACEHOLDER)."""
    kept = _kept.get(ch)
    if kept is None:
        cat = unicodedata.category(ch)
        kept = _kept[ch] = cat.startswith(_TOKEN_CATEGORIES) or cat == "Co"
    return kept


def unigram_tokens(text: str) -> list[str]:
    # pieces longer than one character are ASCII letter/digit runs (kept); single characters
    # are looked up in the cache first (the hot path of every message written)
    kept = _kept
    return [p if len(p) > 1 or kept.get(p) or (p not in kept and is_token_char(p)) else PLACEHOLDER
            for p in _PIECES.findall(text)]


def unigram_text(text: str) -> str:
    """The text as the unigram index stores it: its tokens, space-separated."""
    return " ".join(unigram_tokens(text))


NUL_STAND_IN = "\u2400"  # SYMBOL FOR NULL: FTS5 reads text as C strings and would stop at a NUL


def trigram_text(text: str) -> str:
    """The text as the trigram index gets it: a NUL would end it there (and hide the rest)."""
    return text.replace("\0", NUL_STAND_IN) if "\0" in text else text


def index_rows(cur, rows: list[tuple[int, str]]) -> None:
    """Index new messages' text (``(rowid, text)``; empty texts are skipped)."""
    rows = [(i, t) for i, t in rows if t]
    if rows:
        cur.executemany("INSERT INTO messages_fts(rowid, text) VALUES (?, ?)", [(i, trigram_text(t)) for i, t in rows])
        cur.executemany("INSERT INTO messages_uni(rowid, t) VALUES (?, ?)", [(i, unigram_text(t)) for i, t in rows])


def unindex_row(cur, rowid: int, text: str) -> None:
    """Remove one message's text from both indexes (it must be the text that was indexed)."""
    if text:
        cur.execute("INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', ?, ?)",
                    (rowid, trigram_text(text)))
        cur.execute("INSERT INTO messages_uni(messages_uni, rowid, t) VALUES ('delete', ?, ?)",
                    (rowid, unigram_text(text)))


# ---- folding (the search option fold=True) ---------------------------------------------


@lru_cache(maxsize=1)
def _t2s() -> dict[str, str]:
    """Traditional → Simplified, character by character: OpenCC's own TSCharacters table (first
    candidate), read as data from the pure-Python ``opencc-python-reimplemented`` package (the
    native OpenCC wheel and the WeCom SDK abort when loaded in one process)."""
    from importlib import resources

    try:
        table = resources.files("opencc").joinpath("dictionary", "TSCharacters.txt").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RuntimeError("the package opencc-python-reimplemented is needed for folded search "
                           f"(pip install opencc-python-reimplemented): {e}") from None
    out: dict[str, str] = {}
    for line in table.splitlines():
        trad, _, simp = line.partition("\t")
        if len(trad) == 1 and simp.split():
            out[trad] = simp.split()[0]
    return out


class _FoldTable(dict):
    """str.translate table computed per character on first sight."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        out = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", ch).casefold())
        if any(ord(c) > 0x2E7F for c in out):
            t2s = _t2s()
            out = "".join(t2s.get(c, c) for c in out)
        self[code] = out
        return out


_FOLD = _FoldTable()


def fold(text: str | None) -> str:
    """Per character: compatibility decomposition (NFKD: full-width → ASCII, 'é' → 'e' + the
    accent, so precomposed and decomposed spellings meet), case fold, Traditional→Simplified.
    Character by character, so a substring of the text folds to a substring of the folded
    text: folded search still never misses."""
    return text.translate(_FOLD) if text else ""


def folded_or_none(text: str) -> str | None:
    """What the catalog keeps in ``messages.folded``: the folded text when it differs."""
    f = fold(text)
    return f if f != text else None
