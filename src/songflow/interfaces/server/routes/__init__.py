"""The REST routes, one router per resource: system (health, models), jobs and their audio, the
ACE-Step 1.5 planner's answers (plan, format, understand) and the ACE-Step 1.5 REST dialect
(``/release_task``, ``/query_result``, ...) over the same jobs."""

from __future__ import annotations

from songflow.interfaces.server.routes.acestep15 import router as acestep15_router
from songflow.interfaces.server.routes.audio import router as audio_router
from songflow.interfaces.server.routes.jobs import router as jobs_router
from songflow.interfaces.server.routes.planner import router as planner_router
from songflow.interfaces.server.routes.system import health_router, models_router

ROUTERS = (health_router, models_router, jobs_router, audio_router)
#: added for a pipeline with a 5 Hz LM planner (ACE-Step 1.5)
PLANNER_ROUTERS = (planner_router,)
#: added for an ACE-Step 1.5 pipeline: the official 1.5 REST API's routes
ACESTEP15_ROUTERS = (acestep15_router,)

__all__ = ["ACESTEP15_ROUTERS", "PLANNER_ROUTERS", "ROUTERS"]
