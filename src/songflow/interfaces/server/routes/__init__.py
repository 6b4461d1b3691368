"""The REST routes, one router per resource: system (health, models), jobs and their audio."""

from __future__ import annotations

from songflow.interfaces.server.routes.audio import router as audio_router
from songflow.interfaces.server.routes.jobs import router as jobs_router
from songflow.interfaces.server.routes.system import health_router, models_router

ROUTERS = (health_router, models_router, jobs_router, audio_router)

__all__ = ["ROUTERS"]
