"""A covering (id, sent_at, seq) index: a page of a search answered through a text index
sorts its hits by time from this small index instead of looking each row up (about 40 % less
per hit, measured in docs/search.md).

Revision ID: 0005
Revises: 0004
"""
from alembic import op

from wxarchive.archive.catalog import schema

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_INDEX = "ix_messages_id_time"


def upgrade():
    bind = op.get_bind()  # 0001 creates the current schema on a new catalog: only add what is missing
    for ix in schema.messages.indexes:
        if ix.name == _INDEX:
            ix.create(bind, checkfirst=True)


def downgrade():
    op.execute(f"DROP INDEX IF EXISTS {_INDEX}")
