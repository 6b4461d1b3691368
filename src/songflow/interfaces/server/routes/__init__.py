"""The REST routes, one router per resource: system (health, models), jobs and their audio, and the
ACE-Step 1.5 planner's answers (plan, format, understand)."""

from __future__ import annotations

from songflow.interfaces.server.routes.audio import router as audio_router
from songflow.interfaces.server.routes.jobs import router as jobs_router
from songflow.interfaces.server.routes.planner import router as planner_router
from songflow.interfaces.server.routes.system import health_router, models_router

ROUTERS = (health_router, models_router, jobs_router, audio_router)
#: added for a pipeline with a 5 Hz LM planner (ACE-Step 1.5)
PLANNER_ROUTERS = (planner_router,)

__all__ = ["PLANNER_ROUTERS", "ROUTERS"]
