"""What is in the archive: counts, cursors, quarantine, media states, reconciliation."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from wxarchive.archive.catalog import schema as s
from wxarchive.model import iso_time

RUN_COUNTS = ("pulled", "recovered", "archived", "duplicates", "quarantined")


def status(engine, tz: str = "UTC", runs_shown: int = 10) -> dict[str, Any]:
    with engine.connect() as c:
        def grouped(col, table, where=None) -> dict[str, int]:
            q = select(col, func.count()).select_from(table).group_by(col)
            if where is not None:
                q = q.where(where)
            return {str(k): n for k, n in c.execute(q)}

        by_kind = grouped(s.messages.c.kind, s.messages)
        media = grouped(s.attachments.c.state, s.attachments)
        records = grouped(s.records.c.state, s.records)
        cursors = [
            {"source": src, "cursor": cur, "updated_at": iso_time(upd, tz)}
            for src, cur, upd in c.execute(select(s.cursors.c.source, s.cursors.c.cursor, s.cursors.c.updated_at))
        ]
        quarantine = [
            {"source": src, "key": key, "cursor": cur, "reason": reason, "journal_serial": ser}
            for src, key, cur, reason, ser in c.execute(
                select(s.records.c.source, s.records.c.key, s.records.c.cursor, s.records.c.reason,
                       s.records.c.raw_serial).where(s.records.c.state == "quarantined")
                .order_by(s.records.c.raw_serial)
            )
        ]
        runs = [dict(r) for r in c.execute(select(s.runs).order_by(s.runs.c.id)).mappings()]
        wechat = []
        for key, value in c.execute(select(s.meta.c.key, s.meta.c.value).where(s.meta.c.key.like("census:%"))):
            src = key.split(":", 1)[1]
            cen = json.loads(value)
            archived = c.execute(select(func.count()).select_from(s.messages).where(s.messages.c.source == src)).scalar()
            wechat.append({"source": src, "device": cen.get("device"), "format": cen.get("format"),
                           "read_at": iso_time(cen.get("at"), tz), "total": cen.get("total"),
                           "captured": cen.get("captured"), "excluded": cen.get("excluded"),
                           "work_conversations": cen.get("work_conversations"),
                           "personal_conversations": cen.get("personal_conversations"), "archived": archived,
                           "warnings": cen.get("warnings", []),
                           "reconciled": cen.get("captured", 0) + cen.get("excluded", 0) == cen.get("total")
                           and archived >= cen.get("captured", 0)})
        n_conv = c.execute(select(func.count()).select_from(s.conversations)).scalar()
        n_part = c.execute(select(func.count()).select_from(s.participants)).scalar()
        n_msg = sum(by_kind.values())
    totals = {k: sum(r[k] or 0 for r in runs) for k in RUN_COUNTS}
    for r in runs:
        r["reconciled"] = r["pulled"] + r["recovered"] == r["archived"] + r["duplicates"] + r["quarantined"]
        r["started_at"] = iso_time(r["started_at"], tz)
        r["ended_at"] = iso_time(r["ended_at"], tz)
    return {
        "cursors": cursors,
        "wechat": wechat,
        "messages": n_msg,
        "messages_by_kind": dict(sorted(by_kind.items())),
        "conversations": n_conv,
        "participants": n_part,
        "records": records,
        "quarantined": quarantine,
        "media": media,
        "runs": runs[-runs_shown:],
        "reconciliation": {
            **totals,
            "reconciled": totals["pulled"] + totals["recovered"] == totals["archived"] + totals["duplicates"] + totals["quarantined"],
            # every archived record is one catalog message, every unique record has one outcome
            "catalog_matches_records": n_msg == records.get("archived", 0),
            "pending_records": records.get("pending", 0),
        },
    }
