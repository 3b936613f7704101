"""Vector stores' logic, below the API and above the store: a file's text (`parsing`), its chunks
(`chunking`), ingestion, the chunk index and search. No FastAPI here."""
