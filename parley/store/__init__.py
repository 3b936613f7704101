"""Storage: SQLAlchemy tables, Alembic migrations and repositories, on SQLite or PostgreSQL."""

from parley.store.blobs import BlobStore, DirectoryBlobStore
from parley.store.conversations import ConversationNotFound, ConversationStore, DuplicateItem, TurnLost
from parley.store.database import Database
from parley.store.files import FileStore
from parley.store.keys import ApiKey, KeyStore
from parley.store.owners import ANYONE, Caller
from parley.store.pagination import Page, PageRequest
from parley.store.responses import ResponseStore

__all__ = [
    "ANYONE",
    "ApiKey",
    "BlobStore",
    "Caller",
    "ConversationNotFound",
    "ConversationStore",
    "Database",
    "DirectoryBlobStore",
    "DuplicateItem",
    "FileStore",
    "KeyStore",
    "Page",
    "PageRequest",
    "ResponseStore",
    "TurnLost",
]
