"""Initial catalog: messages, attachments, records, cursors, runs, conversations,
participants, and the trigram full-text index.

Revision ID: 0001
Revises:
"""
from alembic import op

from wxarchive.archive.catalog import schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    schema.metadata.create_all(bind)
    for ddl in schema.FTS_DDL:
        op.execute(ddl)


def downgrade():
    for table in ("messages_fts", "messages_uni"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    schema.metadata.drop_all(op.get_bind())
