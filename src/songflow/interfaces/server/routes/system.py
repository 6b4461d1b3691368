"""``/health`` (no key needed), ``/v1/models`` and ``/v1/loras``: the server's liveness, the loaded model
and the LoRA adapters a job may name."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from songflow.audio.io import SUPPORTED_FORMATS
from songflow.interfaces.server.acestep15_api import envelope
from songflow.interfaces.server.deps import Context, Store, require_api_key
from songflow.interfaces.server.loras import NO_LORA_DIR
from songflow.interfaces.server.schemas import Health, LoraList, ModelList, WorkerList, error_responses

health_router = APIRouter(tags=["system"])
models_router = APIRouter(prefix="/v1", tags=["system"], dependencies=[Depends(require_api_key)])


@health_router.get("/health", response_model=Health)
def health(store: Store, context: Context) -> dict[str, Any]:
    from songflow.interfaces.server.routes.acestep15 import upstream_health

    return {
        "status": "ok",
        "worker_alive": context.worker.alive,
        "workers": len(store.live_workers()),
        "queued": store.count("queued"),
        "running": store.count("running"),
        **envelope(upstream_health(context)),
    }


@models_router.get("/models", response_model=ModelList, responses=error_responses(401))
def models(context: Context) -> dict[str, Any]:
    from songflow.interfaces.server.routes.acestep15 import upstream_inventory

    runtime = context.runtime
    model = {
        "name": runtime["checkpoint"],
        "family": context.family,
        "device": runtime["device"],
        "dtype": runtime["dtype"],
        "sample_rate_hz": getattr(context.pipeline, "output_sample_rate_hz", None),
        "tasks": sorted(context.tasks),
        "audio_formats": list(SUPPORTED_FORMATS),
    }
    return {"models": [model], **envelope(upstream_inventory(context))}


@models_router.get(
    "/loras",
    response_model=LoraList,
    responses=error_responses(401),
    description="The adapters of `songflow serve --lora-dir DIR`; a job's `loras` items name them "
    '(`{"name": ..., "weight": ...}`). Without --lora-dir there are none, and a job naming one is refused.',
)
def loras(context: Context) -> dict[str, Any]:
    if context.loras is None:
        return {"enabled": False, "loras": [], "hint": NO_LORA_DIR}
    return {"enabled": True, "loras": [{"name": name} for name in context.loras.paths]}


@models_router.get(
    "/workers",
    response_model=WorkerList,
    responses=error_responses(401),
    description="The workers serving this queue (this process's and `songflow worker`s on any machine), "
    "with the checkpoints they hold; a job waits for a worker that holds its model.",
)
def workers(store: Store) -> dict[str, Any]:
    return {"workers": store.live_workers()}
