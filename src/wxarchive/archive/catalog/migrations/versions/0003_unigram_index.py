"""Search: the unigram full-text index (messages_uni, for 1–2 character queries in any
script), and per message an ``external`` flag and its ``folded`` text (fold=True searches).

Revision ID: 0003
Revises: 0002
"""
import json

from alembic import op
from sqlalchemy import text

from wxarchive.archive.catalog import fts
from wxarchive.model import participant_kind

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    cols = {r[1] for r in bind.execute(text("PRAGMA table_info(messages)"))}
    if "external" in cols:
        return  # a new catalog: 0001 made the current schema
    op.execute("ALTER TABLE messages ADD COLUMN external INTEGER NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE messages ADD COLUMN folded TEXT")
    op.execute(fts.DDL[1])
    raw = bind.connection.driver_connection.cursor()
    rows = raw.execute("SELECT id, text, sender, recipients FROM messages").fetchall()
    raw.executemany("INSERT INTO messages_uni(rowid, t) VALUES (?, ?)",
                    [(i, fts.unigram_text(t)) for i, t, _, _ in rows if t])
    raw.executemany("UPDATE messages SET external = ?, folded = ? WHERE id = ?", [
        (int(any(participant_kind(p) == "external" for p in (sender, *json.loads(rcpt or "[]")))),
         fts.folded_or_none(t or ""), i) for i, t, sender, rcpt in rows])


def downgrade():
    op.execute("DROP TABLE IF EXISTS messages_uni")
