"""Catalog schema revisions: writers migrate, readers never do (they hold no writer lock)."""

from __future__ import annotations

import sqlite3

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from wxarchive.archive.archive import Archive
from wxarchive.archive.catalog import migrate
from wxarchive.archive.catalog.sqlite import CatalogError


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrate.MIGRATIONS))
    return cfg


def test_head_constant_is_alembics_head():
    assert ScriptDirectory.from_config(_config()).get_current_head() == migrate.HEAD


def _tables(path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}


def test_a_reader_refuses_an_older_catalog_and_a_writer_migrates_it(tmp_path):
    home = tmp_path / "home"
    with Archive.open(home, create=True):
        pass
    db = home / "catalog.db"
    db.unlink()
    engine = create_engine(f"sqlite:///{db}")  # a catalog an older wxarchive wrote (revision 0004)
    with engine.begin() as conn:
        cfg = _config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
    engine.dispose()
    with sqlite3.connect(db) as con:  # as every catalog is
        con.execute("PRAGMA journal_mode=WAL")
    before = db.read_bytes()
    with pytest.raises(CatalogError, match=r"catalog schema revision 0004, this wxarchive uses 0005: run a command "
                                           r"that writes .* once to migrate it"):
        Archive.open(home, readonly=True)
    assert db.read_bytes() == before  # the reader changed nothing
    with Archive.open(home):  # a writer migrates
        pass
    assert "ix_messages_id_time" in _tables(db)  # what 0005 adds
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [("0005",)]
    with Archive.open(home, readonly=True) as ar:
        assert migrate.current(ar.catalog.engine) == migrate.HEAD


def test_a_reader_names_a_newer_catalog(tmp_path):
    home = tmp_path / "home"
    with Archive.open(home, create=True):
        pass
    with sqlite3.connect(home / "catalog.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(CatalogError, match="revision 0099, this wxarchive uses 0005: .*newer wxarchive"):
        Archive.open(home, readonly=True)


@pytest.mark.parametrize("damage", ["missing", "no revision table", "unknown revision", "empty revision"])
def test_odd_catalogs_are_clear_errors_for_readers_and_writers(tmp_path, damage):
    """A reader never answers from a catalog it would have to make (it would look like an empty
    archive); a writer makes or migrates one, or names a revision it does not know."""
    home = tmp_path / "home"
    with Archive.open(home, create=True):
        pass
    db = home / "catalog.db"
    if damage == "missing":
        for p in home.glob("catalog.db*"):
            p.unlink()
    else:
        with sqlite3.connect(db) as con:
            if damage == "no revision table":
                con.execute("DROP TABLE alembic_version")
            else:
                con.execute("UPDATE alembic_version SET version_num = ?", ("zzzz" if damage == "unknown revision" else "",))
    with pytest.raises(CatalogError, match="run 'wxarchive reindex'|run a command that writes"):
        Archive.open(home, readonly=True)
    assert db.exists() == (damage != "missing")  # the reader made nothing
    if damage in ("unknown revision", "empty revision"):
        with pytest.raises(CatalogError, match=r"revision '(zzzz)?' is unknown to this wxarchive.*move it aside"):
            Archive.open(home)
    else:
        with Archive.open(home):  # a writer makes or migrates one
            pass
        with Archive.open(home, readonly=True) as ar:
            assert migrate.current(ar.catalog.engine) == migrate.HEAD
