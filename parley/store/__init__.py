"""Storage: SQLAlchemy tables, Alembic migrations and repositories, on SQLite or PostgreSQL."""

from parley.store.conversations import ConversationNotFound, ConversationStore, DuplicateItem
from parley.store.database import Database
from parley.store.keys import ApiKey, KeyStore
from parley.store.owners import ANYONE, Caller
from parley.store.pagination import Page, PageRequest
from parley.store.responses import ResponseStore

__all__ = [
    "ANYONE",
    "ApiKey",
    "Caller",
    "ConversationNotFound",
    "ConversationStore",
    "Database",
    "DuplicateItem",
    "KeyStore",
    "Page",
    "PageRequest",
    "ResponseStore",
]
