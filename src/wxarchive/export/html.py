"""HTML transcripts for people: one self-contained file per conversation.

Safe by construction: every value is HTML-escaped; the page carries no script and a
Content-Security-Policy that forbids any (and any remote load); a link is made clickable
only when it is ``http(s)://`` (``javascript:``, ``data:`` and the rest are shown as text);
media are copied beside the pages as ``media/<sha256><ext>`` and shown inline (images,
audio, video) or linked (files). File names are portable and unique (a hash of the
conversation id beside its readable name).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wxarchive.export.conversations import (
    Directory, link_quotes, media_extension, members, safe_name, select_for_export, slices,
)
from wxarchive.export.manifest import prepare_out, write_manifest
from wxarchive.search.query import Query

FORMAT = "wxarchive-export-html/1"
_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_STYLE = """body{font:14px/1.45 system-ui,"PingFang SC","Microsoft YaHei",sans-serif;margin:0 auto;max-width:60em;padding:1em;color:#222}
header{border-bottom:1px solid #ccc;margin-bottom:1em}h1{font-size:1.3em;margin:.2em 0}.meta{color:#666;font-size:.9em}
.msg{padding:.35em .6em;margin:.25em 0;border-left:3px solid #ddd}.msg.out{border-color:#6a9}.who{font-weight:600}
.when{color:#777;font-size:.85em;margin-left:.5em}.body{white-space:pre-wrap;word-wrap:break-word}
.recalled{background:#fff4f4;border-color:#d66}.tag{font-size:.8em;color:#a33;margin-left:.5em}
.quote{color:#555;border-left:2px solid #bbb;padding-left:.5em;margin:.2em 0;white-space:pre-wrap}
.att{font-size:.9em;color:#444}img.media{max-width:24em;max-height:24em;display:block}.day{color:#888;text-align:center;margin:1em 0 .3em}
"""


@dataclass
class HtmlResult:
    out: Path
    messages: int = 0
    conversations: int = 0
    media: int = 0
    file_list: list[dict[str, Any]] = field(default_factory=list)


_C0 = {c: 0x2400 + c for c in range(32) if c not in (9, 10, 13)}  # control characters shown as ␀ ␁ …


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True).translate(_C0)


def safe_href(url: Any) -> str | None:
    """The URL if a browser may follow it from a transcript (http/https only), else None."""
    if not isinstance(url, str):
        return None
    u = url.strip()
    try:
        scheme = urlsplit(u).scheme.lower()
    except ValueError:
        return None
    return u if scheme in ("http", "https") and not any(c in u for c in "\r\n\t\0") else None


def media_name(a: dict[str, Any]) -> str:
    ext = ""
    if a["file_name"] and "." in a["file_name"]:
        ext = "." + safe_name(a["file_name"].rsplit(".", 1)[1], limit=10)
    elif a["media_type"]:
        ext = media_extension(a["media_type"])
    return f"{a['sha256']}{ext}"


def _attachment(a: dict[str, Any], copy: Callable[[dict[str, Any]], str]) -> str:
    label = esc(a["file_name"] or a["kind"])
    if a["state"] != "present" or not a["sha256"]:
        why = f": {esc(a['reason'])}" if a["reason"] else ""
        return f'<div class="att">[{esc(a["kind"])}] {label} — not stored ({esc(a["state"])}{why})</div>'
    href = esc("media/" + copy(a))
    mt = (a["media_type"] or "").split("/")[0]
    size = f" ({a['size']:,} bytes)" if a["size"] is not None else ""
    if a["reason"]:  # e.g. only the thumbnail was on the device, a checksum that differs
        size += f' <span class="note">— {esc(a["reason"])}</span>'

    if mt == "image":  # an image kept as found (not unwrapped) is a download, not a picture
        return f'<div class="att"><img class="media" src="{href}" alt="{label}"><a href="{href}">{label}</a>{size}</div>'
    if mt in ("audio", "video") and a["kind"] != "voice":
        return (f'<div class="att"><{mt} controls preload="none" src="{href}"></{mt}> '
                f'<a href="{href}">{label}</a>{size}</div>')
    return f'<div class="att">[{esc(a["kind"])}] <a href="{href}">{label}</a>{size}</div>'


def _extra(m: dict[str, Any]) -> str:
    """What a message's content adds to its text: a link's target, a quote."""
    c = m["content"] if isinstance(m["content"], dict) else {}
    out = []
    link = c.get("link") if isinstance(c.get("link"), dict) else None
    if link:
        url = link.get("link_url")
        href = safe_href(url)
        out.append(f'<div class="att">link: <a href="{esc(href)}" rel="noopener noreferrer">{esc(url)}</a></div>' if href
                   else f'<div class="att">link (not followed): {esc(url)}</div>')
    quote = c.get("quote") if isinstance(c.get("quote"), dict) else None
    if quote:
        ref = f' <a href="#m-{esc(m["reply_to"])}">(message)</a>' if m["reply_to"] else ""
        out.append(f'<div class="quote">{esc(quote.get("quoted_sender") or "")}：{esc(quote.get("quoted_text"))}'
                   f'{ref}</div>')
    return "".join(out)


def render_message(m: dict[str, Any], directory: Directory, custodian: str | None,
                   copy: Callable[[dict[str, Any]], str], recall: dict[str, Any] | None) -> str:
    who = directory.person(m["source"], m["sender"], m.get("sent_at_ms"))
    cls = "msg" + (" out" if m["sender"] == custodian else "") + (" recalled" if recall else "")
    tags = ""
    if recall:
        tags += f'<span class="tag">recalled {esc(recall["sent_at"] or "")}</span>'
    if m["recalls"]:
        tags += f'<span class="tag">recall of <a href="#m-{esc(m["recalls"])}">{esc(m["recalls"])}</a></span>'
    if m["kind"] not in ("text", "recall"):
        tags += f'<span class="tag">[{esc(m["kind"])}]</span>'
    atts = "".join(_attachment(a, copy) for a in m["attachments"])
    return (f'<div class="{cls}" id="m-{esc(m["msgid"])}"><span class="who" title="{esc(who.id)}">{esc(who.display)}'
            f'</span><span class="when">{esc(m["sent_at"] or "time unknown")}</span>{tags}'
            f'<div class="body">{esc(m["text"])}</div>{_extra(m)}{atts}</div>\n')


def _write_index(out: Path, pages: list, res: HtmlResult) -> None:
    """index.html: every transcript of the export, by name."""
    items = "".join(f'<li><a href="{esc(name)}">{esc(title)}</a> <span class="meta">{esc(conv.platform)} · '
                    f'{esc(conv.kind)} · {esc(conv.id)}</span></li>\n'
                    for name, title, conv in sorted(pages, key=lambda p: p[1]))
    (out / "index.html").write_text(
        f'<!DOCTYPE html>\n<html lang="zh"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}"><title>Transcripts</title>'
        f"<style>{_STYLE}</style></head><body><header><h1>Transcripts</h1><div class=\"meta\">"
        f"{res.conversations} conversation(s), {res.messages} message(s)</div></header><ul>\n{items}</ul>"
        "</body></html>\n", encoding="utf-8")


def export_html(archive, q: Query, out: Path, *, query_text: dict[str, Any], tz: str = "UTC",
                progress: Callable[[int, int], None] = lambda done, total: None) -> HtmlResult:
    prepare_out(out, "media")
    sel = select_for_export(archive, q, progress)
    engine, directory, total = sel.engine, sel.directory, sel.total
    res = HtmlResult(out)
    copied: set[str] = set()

    def copy(a: dict[str, Any]) -> str:
        name = media_name(a)
        if name not in copied:
            (out / "media" / name).write_bytes(archive.blobs.get(a["sha256"]))
            copied.add(name)
        return name

    f = None
    current: tuple[str, str] | None = None
    pages: list = []
    try:
        for sl in slices(engine, q, directory, tz, on_message=sel.tick):
            conv = sl.conversation
            link_quotes(sl, directory)
            ids = members(sl)
            people = [directory.person(conv.source, i) for i in ids]
            custodian = next((p.id for p in people if p.kind == "employee"), None)
            if (conv.source, conv.id) != current:
                if f is not None:
                    f.write("</main></body></html>\n")
                    f.close()
                current = (conv.source, conv.id)
                title = directory.title(conv, ids)
                name = f"{safe_name(title, limit=60, unicode=True)}_{conv.key}.html"
                pages.append((name, title, conv))
                f = open(out / name, "w", encoding="utf-8")
                f.write(f'<!DOCTYPE html>\n<html lang="zh"><head><meta charset="utf-8">'
                        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
                        f'<meta name="referrer" content="no-referrer"><title>{esc(title)}</title>'
                        f"<style>{_STYLE}</style></head><body><header><h1>{esc(title)}</h1>"
                        f'<div class="meta">{esc(conv.platform)} · {esc(conv.kind)} · {esc(conv.id)} · '
                        f'participants: {esc(", ".join(p.display for p in people))}</div></header><main>\n')
                res.conversations += 1
                day = None
            by_id = {m["msgid"]: m for m in sl.messages}
            recalls = {m["recalls"]: m for m in sl.messages if m["recalls"] in by_id}
            for m in sl.messages:
                d = (m["sent_at"] or "")[:10] or "time unknown"
                if d != day:
                    f.write(f'<div class="day">{esc(d)}</div>\n')
                    day = d
                f.write(render_message(m, directory, custodian, copy, recalls.get(m["msgid"])))
                res.messages += 1
    finally:
        if f is not None:
            f.write("</main></body></html>\n")
            f.close()
    progress(total, total)
    _write_index(out, pages, res)
    res.media = len(copied)
    manifest = write_manifest(archive, out, fmt=FORMAT, query=query_text, counts={
        "messages": res.messages, "search_count": total, "reconciled": res.messages == total,
        "conversations": res.conversations, "media_files": res.media})
    res.file_list = manifest["files"]
    return res
