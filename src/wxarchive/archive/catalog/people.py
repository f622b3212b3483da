"""Who a name means: the participant ids a sender/participant filter stands for, used alike by
search and by legal holds (a hold must hold whatever a search for the same person finds)."""

from __future__ import annotations

from sqlalchemy import func, or_, select

from wxarchive.archive.catalog import schema as s


def people_named(value: str):
    """Participant ids a sender/participant filter means: the id itself, or anyone who was ever
    called that (display name, a directory name or alias, current or past), or has that e-mail
    address (any case) or mobile number (any formatting: +86, spaces, dashes)."""
    from wxarchive.model import mobile_digits

    p, h = s.participants, s.people
    low = value.strip().lower()
    ids = select(p.c.id).where(or_(p.c.id == value, func.lower(p.c.display_name) == low))
    conds = [func.lower(h.c.name) == low, func.lower(h.c.alias) == low, h.c.email == low]
    digits = mobile_digits(value)
    if digits and len(digits) >= 5 and not any(c.isalpha() for c in value):
        conds.append(h.c.mobile_digits == digits)
    return ids.union(select(h.c.person).where(or_(*conds)))


def compiled(stmt) -> tuple[str, list]:
    """``stmt`` as SQLite SQL with ``?`` parameters and their values in order (for raw SQL)."""
    from sqlalchemy.dialects import sqlite

    c = stmt.compile(dialect=sqlite.dialect())
    return c.string, [c.params[k] for k in c.positiontup]
