"""Catalog tables (SQLAlchemy Core). The catalog is derived from the journal and blobs:
``wxarchive reindex`` drops and rebuilds it. Migrations live in ``migrations/`` (Alembic)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String, nullable=False),
    Column("msgid", String, nullable=False),
    Column("seq", BigInteger),
    Column("conversation_id", String, nullable=False),
    Column("conversation_kind", String, nullable=False),
    Column("sender", String),
    Column("recipients", Text, nullable=False, default="[]"),  # JSON list
    Column("sent_at", BigInteger),  # epoch ms UTC, NULL = unknown
    Column("kind", String, nullable=False),
    Column("source_type", String, nullable=False),
    Column("action", String, nullable=False),
    Column("text", Text, nullable=False, default=""),
    Column("content", Text, nullable=False, default="{}"),  # JSON
    Column("reply_to", String),
    Column("recalls", String),  # for a recall: the original's msgid
    Column("recalled_by", String),  # for an original: the recall's msgid
    Column("flags", Text, nullable=False, default="[]"),
    Column("raw_serial", BigInteger),  # journal entry holding the raw record
    Column("serial", BigInteger, nullable=False),  # journal entry this row was derived from
    UniqueConstraint("source", "msgid", name="uq_messages_source_msgid"),
)
Index("ix_messages_sender_time", messages.c.sender, messages.c.sent_at)
Index("ix_messages_conv_time", messages.c.conversation_id, messages.c.sent_at, messages.c.seq)
Index("ix_messages_time", messages.c.sent_at)
Index("ix_messages_kind", messages.c.kind)
Index("ix_messages_recalls", messages.c.recalls)

attachments = Table(
    "attachments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", Integer, ForeignKey("messages.id"), nullable=False),
    Column("path", String, nullable=False),
    Column("kind", String, nullable=False),
    Column("file_name", Text),
    Column("media_type", String),
    Column("declared_size", BigInteger),
    Column("declared_md5", String),
    Column("source_ref", Text),  # WeCom sdkfileid: holds the media key (catalog exposure documented)
    Column("state", String, nullable=False),
    Column("reason", Text),
    Column("sha256", String),
    Column("size", BigInteger),
    UniqueConstraint("message_id", "path", name="uq_attachments_message_path"),
)
Index("ix_attachments_state", attachments.c.state)

records = Table(
    "records",
    metadata,
    Column("source", String, primary_key=True),
    Column("key", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("raw_serial", BigInteger, nullable=False),
    Column("cursor", String),
    Column("state", String, nullable=False),  # pending | archived | quarantined
    Column("reason", Text),
)
Index("ix_records_state", records.c.state)

cursors = Table(
    "cursors",
    metadata,
    Column("source", String, primary_key=True),
    Column("cursor", String, nullable=False),
    Column("serial", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", BigInteger, primary_key=True),  # journal serial of the run.start entry
    Column("source", String, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("ended_at", BigInteger),
    Column("status", String, nullable=False),
    Column("error", Text),
    Column("pulled", Integer, nullable=False, default=0),
    Column("archived", Integer, nullable=False, default=0),
    Column("duplicates", Integer, nullable=False, default=0),
    Column("quarantined", Integer, nullable=False, default=0),
    Column("recovered", Integer, nullable=False, default=0),  # left pending by an interrupted run
    Column("start_cursor", String),
    Column("end_cursor", String),
)

conversations = Table(
    "conversations",
    metadata,
    Column("source", String, primary_key=True),
    Column("id", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("title", Text),
    Column("first_at", BigInteger),
    Column("last_at", BigInteger),
    Column("message_count", Integer, nullable=False, default=0),
)

participants = Table(
    "participants",
    metadata,
    Column("source", String, primary_key=True),
    Column("id", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("display_name", Text),
    Column("first_seen", BigInteger),
    Column("last_seen", BigInteger),
    Column("message_count", Integer, nullable=False, default=0),
)

FTS_DDL = [
    # Trigram index: exact substring candidates for queries of 3+ characters; shorter
    # queries are routed to a filtered scan (docs/search-and-storage: trigram finds nothing
    # for 1-2 characters).
    "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5("
    "text, content='messages', content_rowid='id', tokenize='trigram case_sensitive 1')",
]

# Legal holds (derived from the journal's admin.hold.* events) and purges (from the
# admin.purge tombstones). A hold with no filter holds everything.
holds = Table(
    "holds",
    metadata,
    Column("name", String, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("filters", Text, nullable=False, default="{}"),  # JSON: sender, conversation, since, until, text
    Column("created_by", String, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("created_serial", BigInteger, nullable=False),
    Column("released_by", String),
    Column("released_at", BigInteger),
    Column("release_reason", Text),
)

purges = Table(
    "purges",
    metadata,
    Column("segment", String, primary_key=True),  # the journal segment whose data key is destroyed
    Column("tombstone_serial", BigInteger, nullable=False),
    Column("purged_at", BigInteger, nullable=False),
    Column("purged_by", String, nullable=False),
    Column("records", Integer, nullable=False),
    Column("retained", Integer, nullable=False),
)

Index("ix_messages_serial", messages.c.serial)
Index("ix_messages_raw_serial", messages.c.raw_serial)
