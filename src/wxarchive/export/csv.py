"""CSV for spreadsheets: ``messages.csv``, one row per message, UTF-8 with a BOM (so Excel
reads Chinese right), every field quoted, multi-line text kept intact inside its cell.

Formula injection is neutralised: a cell that a spreadsheet would run as a formula (one
starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return, also after leading
spaces, and their full-width forms) gets a leading apostrophe, as OWASP recommends. The
exact text is always in the JSONL export of record and in the RSMF/HTML exports.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wxarchive.export.conversations import select_for_export
from wxarchive.export.manifest import prepare_out, write_manifest
from wxarchive.search.query import Query, iter_results

FORMAT = "wxarchive-export-csv/1"
COLUMNS = ["sent_at", "conversation", "conversation_title", "conversation_kind", "sender", "sender_name",
           "sender_kind", "recipients", "kind", "msgtype", "text", "attachments", "recalled_at", "recalls",
           "reply_to", "flags", "msgid", "seq", "source"]
_FORMULA_START = tuple("=+-@\t\r＝＋－＠")


def cell(value: Any) -> str:
    """A value as a CSV cell that no spreadsheet will evaluate."""
    s = "" if value is None else str(value)
    return "'" + s if s.lstrip(" ").startswith(_FORMULA_START) else s


@dataclass
class CsvResult:
    out: Path
    messages: int = 0
    file_list: list[dict[str, Any]] = field(default_factory=list)


def _attachments(atts: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{a['kind']}: {a['file_name'] or '-'} ({a['size'] if a['size'] is not None else '?'} bytes, {a['state']}"
        + (f", sha256 {a['sha256']}" if a["sha256"] else "") + (f", {a['reason']}" if a["reason"] else "") + ")"
        for a in atts)


def export_csv(archive, q: Query, out: Path, *, query_text: dict[str, Any], tz: str = "UTC",
               progress: Callable[[int, int], None] = lambda done, total: None) -> CsvResult:
    prepare_out(out)
    sel = select_for_export(archive, q, progress)
    engine, directory, total = sel.engine, sel.directory, sel.total
    res = CsvResult(out)
    recall_times: dict[tuple[str, str], str | None] = {}
    with engine.connect() as c:  # when each recalled original was recalled
        for src, orig, at in c.exec_driver_sql("SELECT source, recalls, sent_at FROM messages WHERE recalls IS NOT NULL"):
            recall_times[(src, orig)] = at
    from wxarchive.model import iso_time

    with open(out / "messages.csv", "w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        w.writerow(COLUMNS)
        for m in iter_results(engine, q, tz):
            conv = directory.conversation(m["source"], m["conversation"], m["conversation_kind"])
            who = directory.person(m["source"], m["sender"], m["sent_at_ms"])
            recalled = (m["source"], m["msgid"]) in recall_times
            row = {
                "sent_at": m["sent_at"] or "time unknown", "conversation": m["conversation"],
                "conversation_title": directory.title(conv),
                "conversation_kind": m["conversation_kind"], "sender": m["sender"], "sender_name": who.display,
                "sender_kind": who.kind, "recipients": ", ".join(m["recipients"]), "kind": m["kind"],
                "msgtype": m["source_type"], "text": m["text"], "attachments": _attachments(m["attachments"]),
                "recalled_at": (iso_time(recall_times[(m["source"], m["msgid"])], tz) or "time unknown")
                if recalled else "",
                "recalls": m["recalls"], "reply_to": m["reply_to"], "flags": json.dumps(m["flags"]) if m["flags"] else "",
                "msgid": m["msgid"], "seq": m["seq"], "source": m["source"],
            }
            w.writerow([cell(row[k]) for k in COLUMNS])
            res.messages += 1
            if res.messages % 1000 == 0:
                progress(res.messages, total)
    progress(total, total)
    manifest = write_manifest(archive, out, fmt=FORMAT, query=query_text, counts={
        "messages": res.messages, "search_count": total, "reconciled": res.messages == total})
    res.file_list = manifest["files"]
    return res
