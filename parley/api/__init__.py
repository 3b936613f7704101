"""HTTP routes, SSE framing, WebSocket mode and the OpenAI error body."""

from parley.api.chat import router as chat_router
from parley.api.conversations import router as conversations_router
from parley.api.embeddings import router as embeddings_router
from parley.api.errors import install_error_handlers
from parley.api.files import router as files_router
from parley.api.health import router as health_router
from parley.api.models import router as models_router
from parley.api.responses import router as responses_router
from parley.api.vector_stores import router as vector_stores_router

routers = (
    health_router,
    models_router,
    chat_router,
    embeddings_router,
    responses_router,
    conversations_router,
    files_router,
    vector_stores_router,
)

__all__ = ["install_error_handlers", "routers"]
