"""Bring a catalog database to the current schema with Alembic (programmatic, no ini file)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest revision in MIGRATIONS (a test checks it is Alembic's head): a catalog already at it
# is opened without loading Alembic and its scripts (~100 ms of every command's start).
HEAD = "0005"


def current(engine: Engine) -> str | None:
    """The catalog's revision (None: no Alembic version table, e.g. a new, empty file)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception as e:  # noqa: BLE001 - sqlite3's or sqlcipher3's OperationalError (the dialect knows one)
            if "no such table: alembic_version" in str(e):
                return None
            raise


def upgrade(engine: Engine) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
