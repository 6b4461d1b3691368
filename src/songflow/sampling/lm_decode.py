"""The 5 Hz LM decode loop: KV-cached, batched, with classifier-free guidance, constrained decoding and
per-row seeded sampling (facts: ``../shared/acestep_v15/SPEC.md`` §7, the official
``_generate_with_constrained_decoding`` / ``_generate_with_cfg_custom``).

Rows: ``n`` conditional prompts (a batch of requests, each with its own grammar and generator) and, with
CFG (``cfg_scale > 1``), their ``n`` unconditional twins, all in one forward: the batch is
``[cond_0..cond_{n-1}, uncond_0..uncond_{n-1}]``, left padded with the pad id, with a 0/1 attention mask and
no position ids (positions ``0..L-1`` include the padding, as upstream). Per step and row, in this order:

1. the model's last-position logits (float32);
2. CFG ``uncond + s * (cond - uncond)``: only on the ids of ``grammar.codes_only()`` when that is not None
   (all other ids ``-inf``), else over the whole vocabulary followed by ``nan_to_num(nan=-inf)``;
3. ``grammar.constrain(scores)``;
4. repetition penalty (transformers ``RepetitionPenaltyLogitsProcessor``: over the row's prompt and generated
   ids, ``s < 0 ? s * p : s / p``);
5. top-k, then 6. top-p on the *un-tempered* scores (sorted descending, float32 softmax, cumulative sum,
   keep up to the first id past ``p``);
7. temperature and ``multinomial(softmax)`` with the row's generator, or argmax when temperature <= 0;
8. ``grammar.advance(token)``; the row stops on EOS or the pad id (the stop token is part of its output).

Savings over upstream: while every live row is in the codes phase only the allowed ids go through the LM
head (:class:`~songflow.models.acestep_v15.lm.RestrictedHead`; same logits on those ids); rows that stopped
are dropped from the batch and its KV cache (dynamic cache) or forced to EOS (static cache, as upstream);
the last sampled token is never fed back.

This module does not import the model: anything with the methods of :class:`DecodeModel` decodes
(``PlannerLM`` does), and any object with the methods of :class:`Grammar` constrains
(``songflow.sampling.planner_grammar.PlanGrammar`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from songflow.errors import ConfigError
from songflow.requests_v15 import PLAN_DURATION_RANGE_S

CODES_PER_S = 5
"""5 Hz: audio codes per second of music."""
MAX_MODEL_LEN = 4096
"""The official pt backend's context budget (``LLMHandler.max_model_len``); new tokens stay 64 below it."""


class Grammar(Protocol):
    """The constrained-decoding state machine of one row (``PlanGrammar``)."""

    def codes_only(self) -> Tensor | None:
        """bool ``[V]`` of the ids allowed while generating codes (codes + EOS); None in other states."""
        ...

    def constrain(self, scores: Tensor) -> Tensor:
        """``scores`` float32 ``[V]`` -> the same with every forbidden id ``-inf`` (may work in place)."""
        ...

    def advance(self, token_id: int) -> None:
        """Move past the chosen token."""
        ...


class DecodeModel(Protocol):
    """What :func:`decode` needs from the LM (``songflow.models.acestep_v15.lm.PlannerLM``)."""

    cache_kind: str

    @property
    def vocab_size(self) -> int: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    def restricted_head(self, ids: Tensor) -> Any: ...
    def new_cache(self, batch: int, max_len: int) -> Any: ...
    def prefill(self, input_ids: Tensor, attention_mask: Tensor, cache: Any, head: Any = None) -> Tensor: ...
    def step(self, tokens: Tensor, attention_mask: Tensor, cache: Any, head: Any = None) -> Tensor: ...
    def select_rows(self, cache: Any, rows: Tensor) -> Any: ...


@dataclass(frozen=True)
class DecodeSettings:
    """Sampling settings shared by every row of one :func:`decode` call.

    ``temperature`` <= 0 is greedy (argmax); ``top_k`` None/0 and ``top_p`` None (or outside ``(0, 1)``)
    are off; ``cfg_scale`` > 1 turns CFG on (needs the unconditional prompts); ``max_new_tokens`` bounds the
    tokens per row (the stop token included).
    """

    temperature: float = 0.85
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    cfg_scale: float = 1.0
    max_new_tokens: int = 4096

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and self.temperature < float("inf")):
            raise ConfigError(f"LM temperature must be a finite number >= 0 (got {self.temperature})")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"LM top_k must be >= 0 or None (got {self.top_k})")
        if self.top_p is not None and not 0.0 <= self.top_p <= 1.0:
            raise ConfigError(f"LM top_p must be within [0, 1] or None (got {self.top_p})")
        if not (0.0 < self.repetition_penalty < float("inf")):
            raise ConfigError(f"LM repetition_penalty must be > 0 (got {self.repetition_penalty})")
        if not (0.0 <= self.cfg_scale < float("inf")):
            raise ConfigError(f"LM cfg_scale must be a finite number >= 0 (got {self.cfg_scale})")
        if self.max_new_tokens < 1:
            raise ConfigError(f"LM max_new_tokens must be >= 1 (got {self.max_new_tokens})")

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale > 1.0


@dataclass
class DecodeStep:
    """One recorded step: ``rows`` (indices of the live conditional rows), ``raw`` the model's last-position
    logits ``[2n or n, V]`` (cond rows then uncond rows), ``final`` the scores handed to sampling ``[n, V]``
    (after CFG, grammar, penalty, top-k/top-p; ``-inf`` = forbidden), ``tokens`` ``[n]``. With
    ``DecodeTrace.top`` set, ``raw``/``final`` hold the top values and ``raw_ids``/``final_ids`` their ids."""

    rows: list[int]
    raw: Tensor
    final: Tensor
    tokens: list[int]
    raw_ids: Tensor | None = None
    final_ids: Tensor | None = None


@dataclass
class DecodeTrace:
    """Collects :class:`DecodeStep` records (tests, debugging). ``top``: keep only the top-``top`` values
    per row (None: whole vectors). ``full_head``: compute the full LM head even where a restricted one
    would do, so ``raw`` covers every id."""

    top: int | None = None
    full_head: bool = True
    steps: list[DecodeStep] = field(default_factory=list)

    def record(self, rows: list[int], raw: Tensor, final: Tensor, tokens: list[int]) -> None:
        if self.top is None:
            self.steps.append(
                DecodeStep(rows, raw.detach().cpu().clone(), final.detach().cpu().clone(), tokens)
            )
            return
        raw_top = torch.topk(raw.detach().float().cpu(), min(self.top, raw.shape[-1]), dim=-1)
        final_top = torch.topk(final.detach().float().cpu(), min(self.top, final.shape[-1]), dim=-1)
        self.steps.append(
            DecodeStep(rows, raw_top.values, final_top.values, tokens, raw_top.indices, final_top.indices)
        )


# --------------------------------------------------------------------------------------------------------
# budgets
# --------------------------------------------------------------------------------------------------------


def max_new_tokens_for(
    target_duration_s: float | None,
    phase: Literal["cot", "codes"],
    *,
    max_duration_s: float = 600,
    fallback: int | None = 4096,
    max_model_len: int = MAX_MODEL_LEN,
) -> int:
    """The official token budget of one LM call (``_compute_max_new_tokens``).

    With a target duration (clamped to ``[10, max_duration_s]`` s; the GPU tier's maximum upstream) the
    budget is ``int(5 * duration)`` codes + 10 (codes phase) or + 500 (CoT phase); without one it is
    ``fallback`` (the model config's ``max_new_tokens``, else 4096), or ``max_model_len - 64`` when None.
    Always capped at ``max_model_len - 64``.
    """
    if phase not in ("cot", "codes"):
        raise ConfigError(f"unknown LM phase {phase!r}; use 'cot' or 'codes'")
    if target_duration_s is not None and target_duration_s > 0:
        duration_s = max(PLAN_DURATION_RANGE_S[0], min(max_duration_s, target_duration_s))
        n_codes = int(duration_s * CODES_PER_S)
        budget = n_codes + (10 if phase == "codes" else 500)
    else:
        budget = fallback if fallback is not None else max_model_len - 64
    return min(budget, max_model_len - 64)


# --------------------------------------------------------------------------------------------------------
# the per-step score rules (pure functions over [n, V] float32 scores)
# --------------------------------------------------------------------------------------------------------


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token rows -> (ids ``[B, L]`` int64 left padded with ``pad_id``, mask ``[B, L]`` int64 1 = token)."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ConfigError("every LM prompt needs at least one token")
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, length - len(row) :] = 1
    return ids, mask


def guide(cond: Tensor, uncond: Tensor, scale: float, allowed: Tensor | None = None) -> Tensor:
    """CFG on one row: ``uncond + scale * (cond - uncond)`` in float32 (``[V]``).

    ``allowed`` (int64 ids): computed only there, every other id ``-inf``; None: everywhere, then NaN
    (``-inf`` in both) becomes ``-inf``.
    """
    cond, uncond = cond.float(), uncond.float()
    if allowed is None:
        return torch.nan_to_num(uncond + scale * (cond - uncond), nan=float("-inf"))
    out = torch.full_like(cond, float("-inf"))
    out[allowed] = uncond[allowed] + scale * (cond[allowed] - uncond[allowed])
    return out


def repetition_penalty(scores: Tensor, seen_ids: Tensor, penalty: float) -> Tensor:
    """Penalise each id in ``seen_ids`` once: ``s * p`` where ``s < 0``, else ``s / p``."""
    if penalty == 1.0 or seen_ids.numel() == 0:
        return scores
    picked = scores[seen_ids]
    scores[seen_ids] = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores


def top_k_filter(scores: Tensor, k: int | None) -> Tensor:
    """Set every score below the k-th largest of its row to ``-inf`` (``[n, V]``, in place); None/0: off."""
    if k is None or k <= 0 or k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill_(scores < kth, float("-inf"))


def top_p_filter(scores: Tensor, p: float | None) -> Tensor:
    """Nucleus filter (``[n, V]``, in place): sort descending, float32 softmax, cumulative sum; drop the ids
    after the first whose cumulative probability exceeds ``p`` (the top id always stays). Off unless
    ``0 < p < 1``."""
    if p is None or not 0.0 < p < 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
    cumulative = torch.cumsum(torch.softmax(sorted_scores.float(), dim=-1), dim=-1)
    drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
    drop_sorted[..., 1:] = cumulative[..., :-1] > p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill_(drop, float("-inf"))


def sample(scores: Tensor, temperature: float, generator: torch.Generator | None) -> int:
    """One id from one row ``[V]``: argmax when ``temperature <= 0``, else
    ``multinomial(softmax(scores / temperature))`` drawn with ``generator`` (None: torch's global one)."""
    if temperature <= 0:
        return int(torch.argmax(scores))
    probs = torch.softmax(scores.float().unsqueeze(0) / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator)[0, 0])


# --------------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """The live rows of one decode: original indices, their histories, the batch mask."""

    live: list[int]  # original indices of the live conditional rows, in batch order
    seen: list[list[int]]  # per original row: real prompt ids + generated ids (repetition penalty)
    out: list[list[int]]  # per original row: the new tokens
    mask: Tensor  # [n_live * (2 if cfg else 1), P] int64
    finished: list[bool]


class _HeadChoice:
    """Decides per forward whether the restricted head applies, caching one head per set of masks."""

    def __init__(self, lm: DecodeModel, enabled: bool):
        self.lm, self.enabled = lm, enabled
        self._key: tuple[int, ...] | None = None
        self._masks: list[Tensor] = []  # keeps the masks alive so their ids stay unique
        self._head: Any = None

    def pick(self, masks: Sequence[Tensor | None]) -> Any:
        if not self.enabled or not masks or any(m is None for m in masks):
            return None
        key = tuple(id(m) for m in masks)
        if key != self._key:
            union = torch.zeros_like(masks[0], dtype=torch.bool)  # type: ignore[arg-type]
            for m in masks:
                union |= m.to(torch.bool)  # type: ignore[union-attr]
            self._key, self._masks = key, list(masks)  # type: ignore[arg-type]
            self._head = self.lm.restricted_head(torch.nonzero(union).flatten())
        return self._head


def _codes_masks(grammars: Sequence[Grammar | None], live: Sequence[int]) -> list[Tensor | None]:
    """Each live row's ``codes_only()`` mask (None for a row without a grammar or outside the codes)."""
    return [g.codes_only() if (g := grammars[row]) is not None else None for row in live]


def _expand(logits: Tensor, head: Any, vocab_size: int) -> Tensor:
    """Restricted logits ``[B, N]`` -> ``[B, V]``, ``-inf`` off ``head.ids`` (full logits unchanged)."""
    if head is None:
        return logits
    full = torch.full((logits.shape[0], vocab_size), float("-inf"), device=logits.device)
    full[:, head.ids] = logits
    return full


def _step_scores(
    logits: Tensor, rows: _Rows, grammars: Sequence[Grammar | None], settings: DecodeSettings
) -> Tensor:
    """Steps 2-6 for every live row: ``logits`` ``[B, V]`` -> the scores to sample from ``[n_live, V]``."""
    n = len(rows.live)
    out = []
    for b, row in enumerate(rows.live):
        grammar = grammars[row]
        if settings.uses_cfg:
            codes = grammar.codes_only() if grammar is not None else None
            allowed = torch.nonzero(codes.to(logits.device)).flatten() if codes is not None else None
            scores = guide(logits[b], logits[n + b], settings.cfg_scale, allowed)
        else:
            scores = logits[b].float().clone()
        if grammar is not None:
            scores = grammar.constrain(scores)
        if settings.repetition_penalty != 1.0:
            seen = torch.as_tensor(rows.seen[row], dtype=torch.long, device=scores.device)
            scores = repetition_penalty(scores, seen, settings.repetition_penalty)
        out.append(scores)
    stacked = torch.stack(out)
    top_k_filter(stacked, settings.top_k)
    return top_p_filter(stacked, settings.top_p)


def _choose(
    scores: Tensor,
    rows: _Rows,
    step: int,
    settings: DecodeSettings,
    generators: Sequence[torch.Generator | None],
    force_tokens: Sequence[Sequence[int]] | None,
    eos_id: int,
) -> list[int]:
    """Step 7 for every live row (finished rows of a static batch get EOS)."""
    tokens = []
    for b, row in enumerate(rows.live):
        if rows.finished[row]:
            scores[b] = float("-inf")
            scores[b, eos_id] = 0.0
            tokens.append(eos_id)
        elif force_tokens is not None and step < len(force_tokens[row]):
            tokens.append(int(force_tokens[row][step]))
        else:
            tokens.append(sample(scores[b], settings.temperature, generators[row]))
    return tokens


def _check_inputs(
    cond_prompts: Sequence[Sequence[int]],
    uncond_prompts: Sequence[Sequence[int]] | None,
    grammars: Sequence[Grammar | None],
    generators: Sequence[torch.Generator | None],
    force_tokens: Sequence[Sequence[int]] | None,
    settings: DecodeSettings,
) -> None:
    n = len(cond_prompts)
    if n == 0:
        raise ConfigError("decode needs at least one prompt")
    for name, seq in (("grammars", grammars), ("generators", generators), ("force_tokens", force_tokens)):
        if seq is not None and len(seq) != n:
            raise ConfigError(f"decode: {len(seq)} {name} for {n} prompts")
    if settings.uses_cfg and (uncond_prompts is None or len(uncond_prompts) != n):
        raise ConfigError(f"CFG (cfg_scale {settings.cfg_scale}) needs one unconditional prompt per prompt")


def _advance(rows: _Rows, tokens: list[int], grammars: Sequence[Grammar | None], stops: set[int]) -> None:
    """Step 8: grammars move on, outputs and histories grow, rows that chose a stop token finish."""
    for row, token in zip(rows.live, tokens, strict=True):
        if rows.finished[row]:
            continue
        grammar = grammars[row]
        if grammar is not None:
            grammar.advance(token)
        rows.out[row].append(token)
        rows.seen[row].append(token)
        rows.finished[row] = token in stops


def _compact(lm: DecodeModel, rows: _Rows, cache: Any, cfg: bool) -> Tensor | None:
    """Drop finished rows from a dynamic batch; returns the kept batch indices (None when nothing changed)."""
    keep = [b for b, row in enumerate(rows.live) if not rows.finished[row]]
    if len(keep) == len(rows.live) or lm.cache_kind != "dynamic":
        return None
    n = len(rows.live)
    batch_keep = torch.tensor(keep + ([n + b for b in keep] if cfg else []), dtype=torch.long)
    lm.select_rows(cache, batch_keep)
    rows.live = [rows.live[b] for b in keep]
    rows.mask = rows.mask[batch_keep]
    return batch_keep


def decode(
    lm: DecodeModel,
    cond_prompts: Sequence[Sequence[int]],
    *,
    uncond_prompts: Sequence[Sequence[int]] | None = None,
    grammars: Sequence[Grammar | None] | None = None,
    settings: DecodeSettings = DecodeSettings(),
    generators: Sequence[torch.Generator | None] | None = None,
    force_tokens: Sequence[Sequence[int]] | None = None,
    trace: DecodeTrace | None = None,
) -> list[list[int]]:
    """Generate from every conditional prompt (token ids) at once; returns each row's new tokens, its stop
    token (EOS or pad) included when it stopped before ``settings.max_new_tokens``.

    ``uncond_prompts``: the CFG twins (used when ``settings.cfg_scale > 1``). ``grammars``/``generators``:
    one per row (None entries: unconstrained / torch's global generator). ``force_tokens``: per row, tokens
    to take instead of sampling for the first steps (teacher forcing; the scores are still computed).
    ``trace``: records every step (see :class:`DecodeTrace`).
    """
    n = len(cond_prompts)
    grammars = list(grammars) if grammars is not None else [None] * n
    generators = list(generators) if generators is not None else [None] * n
    _check_inputs(cond_prompts, uncond_prompts, grammars, generators, force_tokens, settings)
    cfg = settings.uses_cfg
    prompts = [*cond_prompts, *(uncond_prompts if cfg and uncond_prompts is not None else [])]
    ids, mask = left_pad(prompts, lm.pad_id)
    stops = {lm.eos_id, lm.pad_id}
    rows = _Rows(list(range(n)), [list(p) for p in cond_prompts], [[] for _ in range(n)], mask, [False] * n)
    cache = lm.new_cache(ids.shape[0], ids.shape[1] + settings.max_new_tokens)
    heads = _HeadChoice(lm, enabled=trace is None or not trace.full_head)
    head = heads.pick(_codes_masks(grammars, rows.live))
    logits = _expand(lm.prefill(ids, mask, cache, head), head, lm.vocab_size)
    for step in range(settings.max_new_tokens):
        scores = _step_scores(logits, rows, grammars, settings)
        tokens = _choose(scores, rows, step, settings, generators, force_tokens, lm.eos_id)
        if trace is not None:
            trace.record(list(rows.live), logits, scores, tokens)
        _advance(rows, tokens, grammars, stops)
        if all(rows.finished) or step == settings.max_new_tokens - 1:
            break
        fed = torch.tensor(tokens, dtype=torch.long)
        kept = _compact(lm, rows, cache, cfg)
        if kept is not None:
            fed = fed[kept[: len(rows.live)]]
        fed = torch.cat([fed, fed]) if cfg else fed
        rows.mask = torch.cat([rows.mask, torch.ones((rows.mask.shape[0], 1), dtype=torch.long)], dim=1)
        head = heads.pick(_codes_masks(grammars, rows.live))
        logits = _expand(lm.step(fed, rows.mask, cache, head), head, lm.vocab_size)
    return rows.out
