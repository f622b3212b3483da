"""The directory with history (people) and consent states.

Revision ID: 0004
Revises: 0003
"""
from alembic import op

from wxarchive.archive.catalog import schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()  # 0001 creates the current schema on a new catalog: only add what is missing
    schema.people.create(bind, checkfirst=True)
    for ix in schema.people.indexes:
        ix.create(bind, checkfirst=True)
    schema.consent.create(bind, checkfirst=True)


def downgrade():
    schema.consent.drop(op.get_bind(), checkfirst=True)
    schema.people.drop(op.get_bind(), checkfirst=True)
