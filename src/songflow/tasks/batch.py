"""Several requests as one sampling run (``Pipeline.generate_many``): which requests may share a run
(:func:`batch_key`) and their conditions stacked into one padded batch (:func:`concat_condition_sets`)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace

import torch

from songflow.models.acestep_v1.transformer import Conditions
from songflow.requests import Request, Text2Music
from songflow.tasks.plan import ConditionSet
from songflow.tasks.registry import TASK_SPECS

# the plan a batch of batchable requests runs (retake is text2music from mixed noise)
BATCH_PLAN = "text2music"


def batch_key(request: Request) -> Hashable | None:
    """Requests with equal keys can run as one ``Pipeline.generate_many`` batch; None: alone only.

    The key holds what one sampling run shares: the plan, the duration, the generation settings (minus
    seeds and ``batch_size``) and the LoRA set. Settings that couple batch items on purpose (the
    reference's whole-batch omega mean and shared ping-pong noise) never batch.
    """
    spec = TASK_SPECS.get(request.task)
    p = request.params
    if spec is None or not spec.batchable or not isinstance(request, Text2Music):  # Retake is one too
        return None
    if p.omega_mean_over != "sample" or p.legacy_batch_noise:
        return None
    return (BATCH_PLAN, float(request.duration_s), replace(p, seeds=None, batch_size=1), request.loras)


def _pad_conditions(c: Conditions, length: int) -> Conditions:
    """Right-pad ``states [B, S, D]`` / ``mask [B, S]`` to ``length`` with zeros (masked out)."""
    extra = length - c.states.shape[1]
    if extra == 0:
        return c
    states = torch.nn.functional.pad(c.states, (0, 0, 0, extra))
    return Conditions(states=states, mask=torch.nn.functional.pad(c.mask, (0, extra)))


def concat_condition_sets(sets: list[ConditionSet]) -> ConditionSet:
    """Stack per-request condition sets along the batch, right-padding the sequences to one length.

    Padding at the end keeps every real token's position (the cross-attention RoPE) and the mask hides
    the padding, so each row attends to exactly its own conditions.
    """
    length = max(s.cond.states.shape[1] for s in sets)

    def cat(name: str) -> Conditions | None:
        parts = [getattr(s, name) for s in sets]
        if parts[0] is None:
            return None
        padded = [_pad_conditions(c, length) for c in parts]
        return Conditions(
            states=torch.cat([c.states for c in padded]), mask=torch.cat([c.mask for c in padded])
        )

    cond = cat("cond")
    assert cond is not None
    return ConditionSet(
        cond=cond,
        uncond=cat("uncond"),
        text_only=cat("text_only"),
        uncond_query_scale=sets[0].uncond_query_scale,
    )
