"""Who a request acts for, and which stored rows that lets it see.

Every response, conversation and conversation item has an owner: the owner of
the API key that made it (`None` for rows made with authentication off, and
for rows from before owners were kept). A caller sees its own rows; an admin
caller sees every row, whoever owns it. A row another owner holds is, to the
caller, a row that does not exist: the API answers 404, never 403, so that
nobody learns which ids others have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True, slots=True)
class Caller:
    """The owner a request acts for (what it makes is theirs), and whether it sees every owner's rows."""

    owner: str | None
    admin: bool = False

    def sees(self, owner: str | None) -> bool:
        return self.admin or (owner is not None and owner == self.owner)


# The caller of a server with authentication off: rows it makes have no owner, and it sees them all.
ANYONE = Caller(owner=None, admin=True)


def visible_to(column: Any, caller: Caller) -> Any:
    """The SQL condition that the row owned by `column` is the caller's to see.

    Rows with no owner (made with authentication off, or before owners were
    kept) are visible to admins only: whoever could read them then was anyone,
    and a key's owner is not that.
    """
    if caller.admin:
        return sa.true()
    if caller.owner is None:
        return sa.false()
    return column == caller.owner
