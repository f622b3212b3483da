"""HR import: what the WeCom APIs no longer return (mobile numbers and e-mail since 2022), and
history they never had, from a CSV the HR system exports.

Columns (a header row, UTF-8 with or without BOM; extra columns are ignored):
``id`` (the WeCom userid / external userid) is required; ``name``, ``mobile``, ``email``,
``department``, ``organisation``, ``position``, ``kind`` (employee | external | robot) are
optional; ``valid_from`` / ``valid_to`` (a date or ISO time, zone-less = the archive's zone;
empty = open) give the stretch of time a row was true. Several rows per id are a history.
A person's rows replace what an earlier import said of them (re-importing changes nothing).

The file's bytes are journaled as they are (kind ``directory.import``) before the catalog reads
them; rows that cannot be read are reported with their line number and left out.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wxarchive.model import mobile_digits

FIELDS = ("name", "mobile", "email", "department", "organisation", "position", "kind")


class HrImportError(ValueError):
    """The file is not a usable HR export; the message names the file and what is wrong."""


@dataclass
class HrRows:
    people: dict[str, list[tuple[dict[str, Any], int | None, int | None]]] = field(default_factory=dict)
    rows: int = 0
    problems: list[str] = field(default_factory=list)  # "line N: what is wrong"


def when_in(tz: str) -> Callable[[str, bool], int]:
    """'2024-03-10' or an ISO time (zone-less: ``tz``) → epoch ms; a bare date as an end is
    the end of that day."""
    from datetime import date, datetime, time as dtime, timedelta
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)

    def when(value: str, end: bool) -> int:
        try:
            if len(value) == 10:
                d = date.fromisoformat(value)
                dt = datetime.combine(d + timedelta(days=1) if end else d, dtime(0), zone)
            else:
                dt = datetime.fromisoformat(value)
                dt = dt if dt.tzinfo else dt.replace(tzinfo=zone)
            return int(dt.timestamp() * 1000)
        except ValueError:
            raise ValueError(f"{value!r} is not a date or ISO time (e.g. 2024-03-10)") from None
        except OverflowError:
            raise ValueError(f"{value!r} is out of range (use an empty valid_to for 'still true')") from None

    return when


def parse(data: bytes, when: Callable[[str, bool], int], name: str = "the file") -> HrRows:
    """Rows by person; ``when(text, end)`` turns a date/time into epoch ms (ValueError on a
    bad one): see ``when_in``."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise HrImportError(f"{name}: not UTF-8 (byte {e.start}); export the CSV as UTF-8") from None
    csv.field_size_limit(1 << 24)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        cols = [c.strip().lower() for c in reader.fieldnames or []]
    except csv.Error as e:
        raise HrImportError(f"{name}: not a CSV header ({e})") from None
    if "id" not in cols:
        raise HrImportError(f"{name}: no 'id' column in the header (found: {', '.join(cols) or 'nothing'})")
    dupes = sorted({c for c in cols if c and cols.count(c) > 1})
    if dupes:
        raise HrImportError(f"{name}: column(s) {', '.join(dupes)} appear twice in the header")
    reader.fieldnames = cols
    out = HrRows()
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as e:
            raise HrImportError(f"{name}: line {reader.line_num}: {e}") from None
        line = reader.line_num
        pid = (row.get("id") or "").strip()
        if not pid:
            out.problems.append(f"line {line}: no id")
            continue
        fields: dict[str, Any] = {k: (row.get(k) or "").strip() or None for k in FIELDS}
        if fields["kind"] not in (None, "employee", "external", "robot"):
            out.problems.append(f"line {line}: kind {fields['kind']!r} is not employee, external or robot")
            continue
        if fields["email"]:
            fields["email"] = fields["email"].lower()
        fields["mobile_digits"] = mobile_digits(fields["mobile"])
        try:
            start = when(row["valid_from"].strip(), False) if (row.get("valid_from") or "").strip() else None
            end = when(row["valid_to"].strip(), True) if (row.get("valid_to") or "").strip() else None
        except ValueError as e:
            out.problems.append(f"line {line}: {e}")
            continue
        if start is not None and end is not None and end <= start:
            out.problems.append(f"line {line}: valid_to is not after valid_from")
            continue
        out.people.setdefault(pid, []).append((fields, start, end))
        out.rows += 1
    return out
