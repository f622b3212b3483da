"""verify --deep: the catalog rebuilt from the journal and compared, rows and full-text indexes.

Plain verify checks identities and counts; these edits of catalog.db pass it, and --deep
must name each one (exit 1). An untouched archive passes both.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wxarchive.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "WXARCHIVE_HOME": str(home)}, timeout=600)


@pytest.fixture
def home(ingested, tmp_path) -> Path:
    h = tmp_path / "home"
    shutil.copytree(ingested, h)
    return h


def _edit(home: Path, *sql: tuple) -> None:
    db = sqlite3.connect(home / "catalog.db")
    for stmt in sql:
        db.execute(*stmt) if isinstance(stmt, tuple) else db.execute(stmt)
    db.commit()
    db.close()


def _a_text_message(home: Path) -> tuple[int, str, str]:
    db = sqlite3.connect(home / "catalog.db")
    row = db.execute("SELECT id, msgid, text FROM messages WHERE kind = 'text' AND length(text) > 6 "
                     "ORDER BY id LIMIT 1").fetchone()
    db.close()
    return row


def _source(home: Path) -> str:
    db = sqlite3.connect(home / "catalog.db")
    try:
        return db.execute("SELECT source FROM messages LIMIT 1").fetchone()[0]
    finally:
        db.close()


def test_an_untouched_archive_passes_the_deep_check(home):
    done = _cli(home, "verify", "--deep", "--json")
    assert done.returncode == 0, done.stdout
    report = json.loads(done.stdout)
    assert report["ok"] and report["deep_checked"] == report["head_serial"]
    assert not list((home / "tmp").glob("deep-verify-*"))  # the scratch catalog is gone
    listed = _cli(home, "audit", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(ln)["query"] for ln in listed.stdout.splitlines()][0] == {"deep": True}


def test_an_altered_message_text_passes_plain_verify_but_not_deep(home):
    mid, msgid, text = _a_text_message(home)
    _edit(home, ("UPDATE messages SET text = ? WHERE id = ?", ("nothing to see here", mid)))
    assert _cli(home, "verify").returncode == 0  # identities and counts still agree
    bad = _cli(home, "verify", "--deep")
    assert bad.returncode == 1, bad.stdout
    assert "catalog: catalog.db/messages: row " in bad.stdout and f"/{msgid} altered (text differs)" in bad.stdout
    # the indexes still hold the journal's text (only the row was edited): they match
    assert "full-text index does not match" not in bad.stdout


def test_a_removed_index_entry_is_found(home):
    """A message taken out of the unigram index: its 1-2 character searches would miss it."""
    mid, msgid, text = _a_text_message(home)
    db = sqlite3.connect(home / "catalog.db")
    from wxarchive.archive.catalog.fts import unigram_text

    db.execute("INSERT INTO messages_uni(messages_uni, rowid, t) VALUES('delete', ?, ?)", (mid, unigram_text(text)))
    db.commit()
    db.close()
    assert _cli(home, "verify").returncode == 0
    bad = _cli(home, "verify", "--deep")
    assert bad.returncode == 1
    assert (f"catalog.db/messages_uni: message {_source(home)}/{msgid}: its unigram index entries are not what its "
            "text gives") in bad.stdout


def test_rows_added_removed_and_altered_elsewhere(home):
    db = sqlite3.connect(home / "catalog.db")
    att = db.execute("SELECT a.id, m.msgid, a.path FROM attachments a JOIN messages m ON m.id = a.message_id "
                     "WHERE a.file_name IS NOT NULL LIMIT 1").fetchone()
    conv = db.execute("SELECT source, id FROM conversations LIMIT 1").fetchone()
    db.close()
    _edit(home, ("UPDATE attachments SET file_name = ? WHERE id = ?", ("harmless.txt", att[0])),
          ("DELETE FROM conversations WHERE source = ? AND id = ?", conv),
          ("INSERT INTO holds (name, reason, filters, created_by, created_at, created_serial) "
           "VALUES ('forged', 'x', '{}', 'nobody', 0, 1)",))
    bad = _cli(home, "verify", "--deep")
    assert bad.returncode == 1
    assert "catalog.db/attachments: row " in bad.stdout and f"/{att[1]}/{att[2]} altered (file_name differs)" in bad.stdout
    assert f"catalog.db/conversations: row {conv[0]}/{conv[1]} missing (the journal gives it)" in bad.stdout
    assert "catalog.db/holds: row forged not what the journal gives (added or altered)" in bad.stdout


def test_deep_refuses_to_go_with_no_catalog(home):
    done = _cli(home, "verify", "--deep", "--no-catalog")
    assert done.returncode == 2 and "--deep compares the catalog" in done.stderr


def test_duplicated_rows_and_the_catalog_notes_are_compared(home, tenant):
    from test_directory import _sync

    _sync(home, tenant)  # people, consent, departments
    assert _cli(home, "verify", "--deep").returncode == 0
    db = sqlite3.connect(home / "catalog.db")
    cols = [r[1] for r in db.execute("PRAGMA table_info(people)") if r[1] != "row"]
    db.execute(f"INSERT INTO people ({', '.join(cols)}) SELECT {', '.join(cols)} FROM people ORDER BY row LIMIT 1")
    key = db.execute("SELECT key FROM meta WHERE key LIKE 'departments:%' LIMIT 1").fetchone()[0]
    db.execute("UPDATE meta SET value = '{}' WHERE key = ?", (key,))
    db.commit()
    db.close()
    bad = _cli(home, "verify", "--deep")
    assert bad.returncode == 1
    assert "catalog.db/people: " in bad.stdout and "(rows duplicated)" in bad.stdout
    assert f"catalog.db/meta: row {key} altered (value differs)" in bad.stdout


@pytest.mark.parametrize("damage", ["DROP TABLE holds", "ALTER TABLE messages DROP COLUMN folded",
                                    "DROP TABLE messages_uni"])
def test_a_damaged_schema_is_a_finding_not_a_traceback(home, damage):
    _edit(home, damage)
    bad = _cli(home, "verify", "--deep")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr and "catalog: catalog.db: its tables or indexes are damaged" in bad.stdout


def test_an_altered_applied_serial_is_a_finding(home):
    _edit(home, "UPDATE meta SET value = 'abc' WHERE key = 'applied_serial'")
    bad = _cli(home, "verify")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "its applied serial is not a number" in bad.stdout


def test_the_scratch_catalog_is_never_written_through_a_symlink(home, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    (home / "tmp").mkdir(exist_ok=True)
    shutil.rmtree(home / "tmp")
    (home / "tmp").symlink_to(elsewhere)
    done = _cli(home, "verify", "--deep")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "not a folder (a symlink or a file?)" in done.stderr
    assert not list(elsewhere.iterdir())


def test_a_scratch_file_left_by_a_killed_run_is_removed(home):
    import socket

    host = "".join(c for c in socket.gethostname() if c.isalnum()) or "host"
    (home / "tmp").mkdir(mode=0o700, exist_ok=True)
    left = home / "tmp" / f"deep-verify-{host}-999999999.db"  # no such pid
    left.write_bytes(b"left by a killed run")
    assert _cli(home, "verify", "--deep").returncode == 0
    assert not left.exists()


@pytest.mark.parametrize("edit", ["move", "swap"])
def test_a_message_moved_under_the_index_is_found(home, edit):
    """Changing ids hides a message from search (or shows another in its place) though every
    row still says the same: the per-message index check catches it."""
    db = sqlite3.connect(home / "catalog.db")
    (a, _), (b, _) = db.execute("SELECT id, msgid FROM messages WHERE kind = 'text' AND length(text) > 4 "
                                "ORDER BY id LIMIT 2").fetchall()
    db.execute("PRAGMA foreign_keys = OFF")
    if edit == "move":
        db.execute("UPDATE messages SET id = 10000000 WHERE id = ?", (a,))
    else:
        db.execute("UPDATE messages SET id = -1 WHERE id = ?", (a,))
        db.execute("UPDATE messages SET id = ? WHERE id = ?", (a, b))
        db.execute("UPDATE messages SET id = ? WHERE id = -1", (b,))
    db.commit()
    db.close()
    bad = _cli(home, "verify", "--deep")
    assert bad.returncode == 1, bad.stdout
    assert "index entries are not what its text gives" in bad.stdout or "holds entries for ids no message has" in bad.stdout


def test_an_export_of_an_edited_catalog_row_is_refused(home, tmp_path):
    """Plain verify checks which rows exist, not what they say: an export, which the archive
    signs, checks what it is made of against the journal first."""
    h = home
    out = tmp_path / "before"
    ok = subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(h), "export", "--format", "csv",
                         "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    with sqlite3.connect(h / "catalog.db") as db:
        msgid = db.execute("SELECT msgid FROM messages WHERE text != '' ORDER BY id LIMIT 1").fetchone()[0]
        db.execute("UPDATE messages SET text = '客户同意保本，我已承诺10%收益' WHERE msgid = ?", (msgid,))
    for fmt in ("csv", "rsmf", "jsonl"):
        out = tmp_path / f"after-{fmt}"
        done = subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(h), "export", "--format", fmt,
                               "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-800:]
        assert f"message {msgid}" in done.stderr and "text differ from the journal" in done.stderr
        assert not out.exists()
