"""The ACE-Step 1.5 5 Hz LM planner network: a transformers ``Qwen3ForCausalLM`` with our own cache handling.

What the official ``LLMHandler`` ("pt" backend) runs (facts: ``../shared/acestep_v15/SPEC.md`` §7): the
folder's ``Qwen3ForCausalLM`` in float32 on the CPU (bf16 on CUDA), called with ``input_ids`` and a 0/1
``attention_mask`` and no ``position_ids`` (so positions are ``0..L-1`` *including* left padding), then
one token at a time with the KV cache. :class:`PlannerLM` does the same with three savings:

* only the last position goes through the LM head (the official prefill computes ``[B, L, V]`` logits and
  keeps one row);
* an LM head restricted to a given id set (:class:`RestrictedHead`): while generating audio codes only the
  64000 code ids + EOS are allowed, out of 217204 rows of the released head. The restricted logits are the
  full head's on those ids (one matmul over contiguous row ranges: views, no copy);
* the cache is a transformers ``DynamicCache`` (rows of finished requests can be dropped,
  :meth:`PlannerLM.select_rows`) or a ``StaticCache`` (``cache="static"``: preallocated, fixed shapes; on
  CUDA the one-token step can then be compiled, ``compile_step=True``).

This module reads no files: :func:`songflow.checkpoint.acestep_v15.load_v15_lm` builds the network from the
folder's ``config.json`` (:func:`build_qwen3_causal_lm` inside ``init_empty_weights``) and fills it strictly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from songflow.errors import ConfigError

logger = logging.getLogger(__name__)

CacheKind = Literal["dynamic", "static"]
MAX_HEAD_RUNS = 8
"""A restricted head over at most this many contiguous id ranges uses views of the head weight; more
fragmented id sets copy their rows once (kept with the :class:`RestrictedHead`)."""


def qwen3_config(config: Mapping[str, Any]) -> Any:
    """A ``transformers.Qwen3Config`` from a ``config.json`` dict (ConfigError when it is not a Qwen3 LM)."""
    from transformers import Qwen3Config

    model_type = config.get("model_type", "qwen3")
    if model_type != "qwen3":
        raise ConfigError(f"LM config: model_type {model_type!r} is not 'qwen3' (a Qwen3ForCausalLM)")
    architectures = config.get("architectures") or ["Qwen3ForCausalLM"]
    if "Qwen3ForCausalLM" not in architectures:
        raise ConfigError(f"LM config: architectures {architectures} do not include 'Qwen3ForCausalLM'")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"LM config: {key} must be a positive integer (got {value!r})")
    return Qwen3Config.from_dict(dict(config))


def build_qwen3_causal_lm(config: Mapping[str, Any]) -> Any:
    """A ``transformers.Qwen3ForCausalLM`` from a ``config.json`` dict (build it inside
    ``checkpoint.strict.init_empty_weights()`` to skip the random init), sdpa attention."""
    from transformers import Qwen3ForCausalLM

    cfg = qwen3_config(config)
    cfg._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(cfg)


def untie_lm_head(model: Any) -> bool:
    """Remove ``lm_head.weight`` from ``model`` when it is tied to the input embedding (the file then has no
    such key); returns whether it was tied. :func:`retie_lm_head` puts it back."""
    if not model.config.tie_word_embeddings:
        return False
    model.lm_head._parameters.pop("weight", None)
    return True


def retie_lm_head(model: Any) -> None:
    """Point ``lm_head.weight`` at the (loaded) input embedding again."""
    model.lm_head.weight = model.model.embed_tokens.weight


def _runs(ids: Tensor) -> list[tuple[int, int]]:
    """Sorted distinct ids ``[N]`` -> their maximal contiguous ranges ``[(start, stop), ...]``."""
    if ids.numel() == 0:
        return []
    breaks = torch.nonzero(ids[1:] - ids[:-1] != 1).flatten() + 1
    starts = torch.cat([ids[:1], ids[breaks]]).tolist()
    ends = torch.cat([ids[breaks - 1], ids[-1:]]).tolist()
    return [(int(a), int(b) + 1) for a, b in zip(starts, ends, strict=True)]


@dataclass
class RestrictedHead:
    """The LM head on a fixed set of token ids (``ids`` int64 ``[N]``, sorted, distinct).

    ``logits = hidden @ W[ids].T`` computed over the contiguous ranges of ``ids`` (views of ``W``) or, for
    fragmented sets, over a copy of those rows made once (``weight``). Build with
    :meth:`PlannerLM.restricted_head`.
    """

    ids: Tensor
    runs: list[tuple[int, int]]
    weight: Tensor | None = None  # [N, H] copied rows (only for fragmented id sets)

    def __call__(self, hidden: Tensor, full_weight: Tensor) -> Tensor:
        """``hidden`` ``[B, H]`` -> logits ``[B, N]`` (dtype of the weights)."""
        if self.weight is not None:
            return hidden @ self.weight.T
        parts = [hidden @ full_weight[a:b].T for a, b in self.runs]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class PlannerLM:
    """The 5 Hz LM (``Qwen3ForCausalLM``) + its tokenizer, with prefill/step over a KV cache.

    Args:
        model: a ``transformers.Qwen3ForCausalLM`` (eval mode, weights loaded).
        tokenizer: its Hugging Face tokenizer (``eos_token_id`` set; ``pad_token_id`` = ``<|endoftext|>``).
        cache: ``"dynamic"`` (default; finished rows can be dropped) or ``"static"`` (preallocated).
        compile_step: on CUDA with the static cache, ``torch.compile`` the one-token step
            (``mode="reduce-overhead"``: CUDA graphs); ignored elsewhere.

    Counters (for tokens/s), reset by :meth:`reset_counters`: ``prompt_tokens`` (prefilled, summed over
    rows), ``new_tokens`` (positions fed one at a time, summed over rows, CFG twins included), ``prefills``
    and ``steps`` (forward calls: each yields one token per row, so ``prefills + steps`` tokens per request)
    and ``forward_s`` (seconds in forwards).
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, cache: CacheKind = "dynamic", compile_step: bool = False
    ):
        if cache not in ("dynamic", "static"):
            raise ConfigError(f"unknown LM cache {cache!r}; use 'dynamic' or 'static'")
        if getattr(tokenizer, "eos_token_id", None) is None:
            raise ConfigError("the LM tokenizer has no eos token (expected <|im_end|>)")
        self.model = model
        self.tokenizer = tokenizer
        self.cache_kind: CacheKind = cache
        self.compile_step = compile_step
        self._compiled: Any = None
        self.reset_counters()

    # ---------------------------------------------------------------- facts

    @property
    def config(self) -> Any:
        """The ``Qwen3Config`` (the folder's ``config.json``)."""
        return self.model.config

    @property
    def vocab_size(self) -> int:
        """Width V of the logits (the head's rows; may exceed ``len(tokenizer)``)."""
        return int(self.model.lm_head.weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        """The padding id (``<|endoftext|>``; the eos id when the tokenizer has no pad token)."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad if pad is not None else self.eos_id)

    def reset_counters(self) -> None:
        self.prompt_tokens = 0
        self.new_tokens = 0
        self.prefills = 0
        self.steps = 0
        self.forward_s = 0.0

    def tokens_per_s(self) -> float:
        """Tokens per request per second of forward time (``(prefills + steps) / forward_s``) since
        :meth:`reset_counters` (0 when nothing ran)."""
        return (self.prefills + self.steps) / self.forward_s if self.forward_s > 0 else 0.0

    # ---------------------------------------------------------------- placement

    def to_device(self, device: str | torch.device, dtype: torch.dtype | None = None) -> PlannerLM:
        """Move the weights (and cast floating ones to ``dtype`` when given); returns self."""
        if dtype is None:
            self.model.to(device=device)
        else:
            self.model.to(device=device, dtype=dtype)
        self._compiled = None
        return self

    def offload(self) -> PlannerLM:
        """Move the weights to the CPU (free accelerator memory while the DiT runs); returns self."""
        return self.to_device("cpu")

    # ---------------------------------------------------------------- full forwards (tests, reference)

    @torch.inference_mode()
    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``last_hidden_state`` ``[B, L, H]`` of one uncached forward (model dtype)."""
        ids = input_ids.to(self.device)
        mask = attention_mask.to(self.device) if attention_mask is not None else None
        return self.model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    @torch.inference_mode()
    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, L, V]`` float32 of one uncached forward over every position."""
        hidden = self.hidden_states(input_ids, attention_mask)
        return self.model.lm_head(hidden).float()

    # ---------------------------------------------------------------- cached decoding

    def restricted_head(self, ids: Tensor) -> RestrictedHead:
        """The head restricted to ``ids`` (any order, duplicates dropped; sorted in the result)."""
        ids = torch.unique(ids.to(device=self.device, dtype=torch.long))
        runs = _runs(ids.cpu())
        weight = self.model.lm_head.weight
        copied = weight.index_select(0, ids) if len(runs) > MAX_HEAD_RUNS else None
        return RestrictedHead(ids=ids, runs=runs, weight=copied)

    def new_cache(self, batch: int, max_len: int) -> Any:
        """An empty KV cache for ``batch`` rows of up to ``max_len`` positions (prompt + new tokens)."""
        from transformers import DynamicCache, StaticCache

        if self.cache_kind == "dynamic":
            return DynamicCache()
        return StaticCache(
            config=self.config,
            max_batch_size=batch,
            max_cache_len=max_len,
            device=self.device,
            dtype=self.dtype,
        )

    def _last_logits(self, hidden: Tensor, head: RestrictedHead | None) -> Tensor:
        weight = self.model.lm_head.weight
        out = hidden @ weight.T if head is None else head(hidden, weight)
        return out.float()

    def _forward(self, ids: Tensor, mask: Tensor, cache: Any, positions: Tensor) -> Tensor:
        out = self.model.model(
            input_ids=ids,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            cache_position=positions,
        )
        return out.last_hidden_state[:, -1]

    @torch.inference_mode()
    def prefill(
        self, input_ids: Tensor, attention_mask: Tensor, cache: Any, head: RestrictedHead | None = None
    ) -> Tensor:
        """Run the prompts ``[B, L]`` (left padded, 0/1 mask) into ``cache``; last-position logits ``[B, V]``
        (or ``[B, N]`` over ``head.ids``) in float32."""
        t0 = time.perf_counter()
        ids, mask = input_ids.to(self.device), attention_mask.to(self.device)
        positions = torch.arange(ids.shape[1], device=self.device)
        hidden = self._forward(ids, self._cache_mask(mask, cache), cache, positions)
        logits = self._last_logits(hidden, head)
        self.prompt_tokens += int(mask.sum())
        self.prefills += 1
        self.forward_s += time.perf_counter() - t0
        return logits

    @torch.inference_mode()
    def step(
        self, tokens: Tensor, attention_mask: Tensor, cache: Any, head: RestrictedHead | None = None
    ) -> Tensor:
        """Feed one token per row (``tokens`` ``[B]``); ``attention_mask`` ``[B, P+1]`` covers every position
        so far, this one included. Returns the next logits ``[B, V]`` (or ``[B, N]``) in float32."""
        t0 = time.perf_counter()
        ids = tokens.to(self.device).view(-1, 1)
        mask = attention_mask.to(self.device)
        positions = torch.tensor([mask.shape[1] - 1], device=self.device)
        hidden = self._step_fn()(ids, self._cache_mask(mask, cache), cache, positions)
        logits = self._last_logits(hidden, head)
        self.new_tokens += ids.shape[0]
        self.steps += 1
        self.forward_s += time.perf_counter() - t0
        return logits

    def _cache_mask(self, mask: Tensor, cache: Any) -> Tensor:
        """A static cache sees a mask as long as the cache (zeros for the positions not written yet)."""
        if self.cache_kind != "static":
            return mask
        total = cache.get_max_cache_shape()
        if mask.shape[1] > total:
            raise ConfigError(f"the static LM cache holds {total} positions; {mask.shape[1]} were asked for")
        return torch.nn.functional.pad(mask, (0, total - mask.shape[1]))

    def _step_fn(self) -> Any:
        if not (self.compile_step and self.cache_kind == "static" and self.device.type == "cuda"):
            return self._forward
        if self._compiled is None:
            try:
                self._compiled = torch.compile(self._forward, mode="reduce-overhead", fullgraph=False)
            except Exception as exc:  # a torch without a working inductor: run eagerly
                logger.warning("torch.compile of the LM step failed (%s); running it eagerly", exc)
                self._compiled = self._forward
        return self._compiled

    def select_rows(self, cache: Any, rows: Tensor) -> Any:
        """Keep only ``rows`` (int64 indices) of a dynamic cache (finished requests dropped); returns it."""
        if self.cache_kind != "dynamic":
            raise ConfigError("rows can only be dropped from the dynamic LM cache")
        cache.batch_select_indices(rows.to(self.device))
        return cache
