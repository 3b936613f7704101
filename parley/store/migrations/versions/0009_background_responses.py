"""Background responses: a response row is also the job that produces it, and its events are kept.

- `responses.job`: what a background response runs (its request, its input, its caller), sealed with the
  server's key (parley.engine.background), since a request may carry secrets (an MCP server's authorization);
  null once the job has ended, and for every response that is not a background one.
- `responses.claim`: which server runs it (its token), with `lease_until` as for any response in progress;
  `attempts`: how many times a server took it; `cancel_requested`: a cancel asked of another server's run.
- `ix_responses_queued`: the queued jobs, oldest first, as the workers take them.
- `response_events`: a background response's stream, in batches (`first` to `last` sequence numbers), for
  `GET /v1/responses/{id}?stream=true` to replay from any point.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE, not batch mode: batch mode remakes the table on SQLite, and dropping the old one would
    # delete every response's items with it (`ON DELETE CASCADE`, foreign keys on).
    op.add_column("responses", sa.Column("job", sa.Text, nullable=True))
    op.add_column("responses", sa.Column("claim", sa.String(64), nullable=True))
    op.add_column("responses", sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
    op.add_column("responses", sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("ix_responses_queued", "responses", ["status", "seq"])
    op.create_table(
        "response_events",
        sa.Column("response_id", sa.String(64), sa.ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("first", sa.Integer, primary_key=True),
        sa.Column("last", sa.Integer, nullable=False),
        # The batch's events as `[[type, data], ...]` in JSON: each `data` the event's JSON as it was sent.
        sa.Column("events", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("response_events")
    op.drop_index("ix_responses_queued", "responses")
    for column in ("cancel_requested", "attempts", "claim", "job"):
        op.drop_column("responses", column)
