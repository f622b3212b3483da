"""Legal holds and purges; indexes on the journal serials messages derive from.

Revision ID: 0002
Revises: 0001
"""
from alembic import op

from wxarchive.archive.catalog import schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_INDEXES = ("ix_messages_serial", "ix_messages_raw_serial")


def upgrade():
    bind = op.get_bind()  # 0001 creates the current schema on a new catalog: only add what is missing
    schema.holds.create(bind, checkfirst=True)
    schema.purges.create(bind, checkfirst=True)
    for ix in schema.messages.indexes:
        if ix.name in _INDEXES:
            ix.create(bind, checkfirst=True)


def downgrade():
    for name in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    schema.purges.drop(op.get_bind(), checkfirst=True)
    schema.holds.drop(op.get_bind(), checkfirst=True)
