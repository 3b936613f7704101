"""A conversation's turn, held as a lease on its row: turns on one conversation take turns across every process;
and a background response that a client follows through another server.

- `conversations.turn`: the token of the turn (of a server's turns on it) that holds the conversation, from
  reading its items until its append; null when none does.
- `conversations.turn_until`: when that hold runs out unless its server renews it (`storage.lease_seconds`): a
  server that dies leaves a hold that runs out.

It replaces a PostgreSQL advisory lock held in a transaction, which held a pooled connection for the whole turn,
and on SQLite nothing at all served two processes.

- `responses.follow_asked`: a client follows the running background response through a server that does not run
  it: the server that runs it writes its events at once from then on, rather than every 100 ms.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE, not batch mode: batch mode remakes the table on SQLite, and dropping the old one would
    # delete every conversation's items with it (`ON DELETE CASCADE`, foreign keys on).
    op.add_column("conversations", sa.Column("turn", sa.String(64), nullable=True))
    op.add_column("conversations", sa.Column("turn_until", sa.Float, nullable=True))
    op.add_column("responses", sa.Column("follow_asked", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("responses", "follow_asked")
    op.drop_column("conversations", "turn_until")
    op.drop_column("conversations", "turn")
