"""The one model every exporter writes from: conversations, cut into slices, with people.

An exporter asks for the messages a query selects, grouped by conversation in time order and
cut into slices (at most ``max_events`` messages, at most ``max_bytes`` of text plus
attachments, and, if asked, one slice per local calendar day). Messages are streamed from
the catalog: only one slice is in memory at a time. People and conversations are looked up
in the catalog's directory tables (names as the archive knows them).
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from wxarchive.archive.catalog import schema as s
from wxarchive.search.query import Query, iter_results


@dataclass(frozen=True)
class Person:
    id: str
    display: str
    kind: str  # employee | external | robot | unknown | system


SYSTEM = Person("(system)", "System", "system")  # the sender of events that have none


@dataclass(frozen=True)
class Conversation:
    source: str
    id: str
    kind: str  # direct | group
    title: str | None

    @property
    def platform(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def key(self) -> str:
        """Stable short id of the conversation (file names, collection ids)."""
        return hashlib.sha256(f"{self.source}\0{self.id}".encode()).hexdigest()[:16]


@dataclass
class Slice:
    conversation: Conversation
    part: int  # 1, 2, ... within the conversation
    messages: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0  # bytes of text and attachments, as counted for max_bytes
    day: str | None = None  # the local date, when cut per day


class Directory:
    """Names of people and conversations, read once from the catalog: the directory's history
    (the name a person had at a given time) and the participants' current names."""

    def __init__(self, engine):
        self.people: dict[tuple[str, str], Person] = {}
        self.conversations: dict[tuple[str, str], Conversation] = {}
        self.history: dict[tuple[str, str], list[tuple[int, int | None, int | None, str]]] = {}
        with engine.connect() as c:
            for r in c.execute(select(s.participants)):
                self.people[(r.source, r.id)] = Person(r.id, r.display_name or r.id, r.kind)
            for r in c.execute(select(s.conversations)):
                self.conversations[(r.source, r.id)] = Conversation(r.source, r.id, r.kind, r.title)
            for r in c.execute(select(s.people).where(s.people.c.name.is_not(None))):
                rank = 0 if r.origin == "api" else 1  # the APIs' name first, then HR's
                self.history.setdefault((r.source, r.person), []).append((rank, r.valid_from, r.valid_to, r.name))

    def person(self, source: str, pid: str | None, at: int | None = None) -> Person:
        """Who ``pid`` is; with ``at`` (epoch ms), under the name they had then."""
        if not pid:
            return SYSTEM
        base = self.people.get((source, pid)) or Person(pid, pid, "unknown")
        if at is not None:
            valid = [(rank, -(start or 0), name) for rank, start, end, name in self.history.get((source, pid), [])
                     if (start is None or start <= at) and (end is None or at < end)]
            if valid:
                return Person(base.id, min(valid)[2], base.kind)
        return base

    def conversation(self, source: str, cid: str, kind: str) -> Conversation:
        return self.conversations.get((source, cid)) or Conversation(source, cid, kind, None)

    def title(self, conv: Conversation, members: list[str] | None = None) -> str:
        """What to call a conversation: its group name, else its members' names."""
        if conv.title:
            return conv.title
        if conv.kind == "system" and conv.id.startswith("switch:"):  # a WeCom user's account switches
            return f"account switches of {self.person(conv.source, conv.id.removeprefix('switch:')).display}"
        ids = members if members is not None else conv.id.split("|")
        return ", ".join(self.person(conv.source, i).display for i in ids) or conv.id


@dataclass
class Selection:
    """What every exporter starts from: the catalog, its directory, and the search count of
    the query (the number the manifest reconciles with), with a progress ticker."""

    engine: Any
    directory: Directory
    total: int
    progress: Callable[[int, int], None]
    done: int = 0

    def tick(self) -> None:
        self.done += 1
        if self.done % 500 == 0:
            self.progress(self.done, self.total)


def select_for_export(archive, q: Query, progress: Callable[[int, int], None]) -> Selection:
    from wxarchive.search.query import count

    engine = archive.catalog.engine
    return Selection(engine, Directory(engine), count(engine, q), progress)


def message_size(m: dict[str, Any]) -> int:
    return len(m["text"].encode()) + sum(a["size"] or 0 for a in m["attachments"] if a["state"] == "present")


def slices(engine, q: Query, directory: Directory, tz: str, *, max_events: int = 10_000,
           max_bytes: int | None = None, per_day: bool = False,
           on_message: Callable[[], None] = lambda: None,
           skip: Callable[[dict[str, Any]], bool] | None = None) -> Iterator[Slice]:
    """The selected messages as slices, conversation by conversation, each in time order
    (``skip``: leave out the messages it is true for, e.g. those already delivered)."""
    cur: Slice | None = None
    for m in iter_results(engine, q, tz, by_conversation=True):
        on_message()
        if skip is not None and skip(m):
            continue
        day = (m["sent_at"] or "")[:10] if per_day else None
        size = message_size(m)
        if cur is not None and (cur.conversation.source, cur.conversation.id) == (m["source"], m["conversation"]):
            full = len(cur.messages) >= max_events or (max_bytes is not None and cur.size + size > max_bytes)
            if full or (per_day and day != cur.day):
                yield cur
                cur = Slice(cur.conversation, cur.part + 1, day=day)
        else:
            if cur is not None:
                yield cur
            cur = Slice(directory.conversation(m["source"], m["conversation"], m["conversation_kind"]), 1, day=day)
        cur.messages.append(m)
        cur.size += size
    if cur is not None:
        yield cur


def members(sl: Slice) -> list[str]:
    """Everyone in a slice (senders, then recipients), in order of first appearance."""
    seen: dict[str, None] = {}
    for m in sl.messages:
        for pid in [m["sender"], *m["recipients"]]:
            if pid:
                seen.setdefault(pid, None)
    return list(seen)


def link_quotes(sl: Slice, directory: Directory) -> None:
    """Give quoted replies whose source names no quoted message (WeCom sends only the quoted
    text and its sender's display name) a ``reply_to``: the latest earlier message of the slice
    with exactly that text, preferring one by a sender of that name. Marked ``reply_inferred``."""
    latest: dict[str, list[dict[str, Any]]] = {}  # text -> earlier messages with it, in order
    for m in sl.messages:
        quote = m["content"].get("quote") if isinstance(m["content"], dict) else None
        if m["reply_to"] is None and isinstance(quote, dict) and quote.get("quoted_text"):
            candidates = latest.get(quote["quoted_text"], [])
            named = [c for c in candidates
                     if quote.get("quoted_sender") in (c["sender"], directory.person(c["source"], c["sender"]).display)]
            pick = (named or candidates)[-1:]
            if pick:
                m["reply_to"] = pick[0]["msgid"]
                m["reply_inferred"] = True
        latest.setdefault(m["text"], []).append(m)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


# media types the chat sources use that Python's table does not map to an extension
_EXTENSIONS = {"audio/silk": ".silk", "audio/amr": ".amr", "audio/wav": ".wav", "image/x-wxgf": ".wxgf"}


def media_extension(media_type: str | None) -> str:
    """``.png`` for ``image/png``: the extension review tools and browsers go by ("" if none)."""
    if not media_type:
        return ""
    mt = media_type.split(";")[0].strip().lower()
    return _EXTENSIONS.get(mt) or mimetypes.guess_extension(mt) or ""


def safe_name(*parts: str, limit: int = 60, unicode: bool = False) -> str:
    """A portable file-name fragment: letters and digits (ASCII only, or with ``unicode`` any
    script's), '.', '_' and '-'; never empty, never starting with a dot, never a Windows
    device name, at most ``limit`` characters (uniqueness comes from a hash beside it)."""
    text = "_".join(p for p in parts if p)
    if unicode:
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in text)
    else:
        name = _UNSAFE.sub("_", text)
    name = re.sub(r"[._]{2,}", "_", name).strip("._") or "x"
    if name.split(".")[0].upper() in _RESERVED:
        name = "_" + name
    return name[:limit]
