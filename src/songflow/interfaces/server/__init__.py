"""The REST server: FastAPI app factory, routers and the persistent job store."""
