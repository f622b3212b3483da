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
    Column("external", Integer, nullable=False, default=0),  # 1: an external contact takes part (0003)
    Column("folded", Text),  # fts.fold(text) when it differs from text, for fold=True searches (0003)
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

# The directory, with history: one row per person per stretch of time in which what a source
# (the WeCom APIs: origin "api"; an HR import: "hr") said of them stayed the same. valid_to
# NULL: still current. Filled from the journal's wecom.directory / directory.import entries.
people = Table(
    "people",
    metadata,
    Column("row", Integer, primary_key=True, autoincrement=True),
    Column("source", String, nullable=False),
    Column("person", String, nullable=False),  # the participant id
    Column("origin", String, nullable=False),  # api | hr
    Column("kind", String),  # employee | external | robot
    Column("name", Text),
    Column("alias", Text),
    Column("mobile", Text),
    Column("mobile_digits", String),  # national number, digits only (search by any formatting)
    Column("email", Text),  # lower case
    Column("department", Text),
    Column("organisation", Text),
    Column("position", Text),
    Column("valid_from", BigInteger),  # epoch ms; NULL: since before anything we know
    Column("valid_to", BigInteger),  # epoch ms, exclusive; NULL: current
    Column("serial", BigInteger, nullable=False),
)
Index("ix_people_person", people.c.source, people.c.person, people.c.origin)
Index("ix_people_name", people.c.name)
Index("ix_people_mobile", people.c.mobile_digits)
Index("ix_people_email", people.c.email)

# Consent to archiving (WeCom check_single_agree / check_room_agree), latest known state.
consent = Table(
    "consent",
    metadata,
    Column("source", String, primary_key=True),
    Column("external_id", String, primary_key=True),
    Column("scope", String, primary_key=True),  # the employee userid (1:1) or the roomid (group)
    Column("status", String, nullable=False),  # Agree | Disagree | Default_Agree
    Column("changed_at", BigInteger),  # epoch ms
    Column("checked_at", BigInteger, nullable=False),
    Column("serial", BigInteger, nullable=False),
)

from wxarchive.archive.catalog.fts import DDL as FTS_DDL  # noqa: E402,F401 (trigram + unigram: see fts.py; 0001 uses it)

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
# pages of text searches: hits sorted by time from this, not from the rows (0005)
Index("ix_messages_id_time", messages.c.id, messages.c.sent_at, messages.c.seq)
Index("ix_messages_raw_serial", messages.c.raw_serial)
