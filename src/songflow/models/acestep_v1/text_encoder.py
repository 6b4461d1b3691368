"""Text (tag/caption) encoders: the :class:`TextEncoder` protocol and the lazy UMT5 adapter.

ERG-tag query scaling: docs/reference_behaviour.md#r6.

The official pipeline encodes the prompt with ``transformers.UMT5EncoderModel`` (``last_hidden_state``,
after the final layer norm) and the tokenizer of the ``umt5-base`` folder (``padding=True,
truncation=True, max_length=256``). For the "ERG for tag" null condition it registers forward hooks that
multiply the output of ``encoder.block[i].layer[0].SelfAttention.q`` by tau (0.01 on blocks 8 and 9). Here
that is a feature of the encoder instead: ``encode(prompts, query_scale={8: 0.01, 9: 0.01})``. T5 applies no
1/sqrt(d) scaling, so shrinking q flattens those layers' attention; the relative position bias is unchanged.

transformers is imported only when the model is first needed; nothing is ever downloaded (the folder must be
local) and only safetensors weights are read.
"""

from __future__ import annotations

import gc
import json
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from songflow.errors import CheckpointError, ConfigError

# The one key transformers may report missing: it is tied to (and loaded as) ``shared.weight``.
_TIED_KEYS = frozenset({"encoder.embed_tokens.weight"})
MAX_PROMPT_TOKENS = 256


@runtime_checkable
class TextEncoder(Protocol):
    """Turns prompts into the token states the DiT's genre embedder reads."""

    @property
    def dim(self) -> int:
        """Width D of the returned hidden states (768 for umt5-base)."""
        ...

    def encode(
        self, prompts: list[str], *, query_scale: dict[int, float] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encode a batch of prompts.

        Args:
            prompts: B strings, used as typed.
            query_scale: ``{block_index: tau}``: scale the attention queries of those encoder blocks by tau
                for this call only (ERG-tag null condition: ``{8: 0.01, 9: 0.01}``); None = plain pass.

        Returns:
            hidden ``[B, Lt, D]`` floating, in the encoder's dtype;
            mask ``[B, Lt]`` int64 (1 = token, 0 = padding).
        """
        ...


class _QueryScaledLinear(nn.Linear):
    """``nn.Linear`` whose output is multiplied by ``output_scale`` when it is set (None = plain Linear).

    Instances are made by swapping the class of an existing Linear (same parameters, same state-dict keys).
    """

    output_scale: float | Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        return y if self.output_scale is None else y * self.output_scale


class _OutputScale(nn.Module):
    """Fallback wrapper for a query projection that is not a plain ``nn.Linear``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.output_scale: float | Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        y = self.inner(x)
        return y if self.output_scale is None else y * self.output_scale


class UMT5TextEncoder:
    """UMT5 encoder + tokenizer loaded lazily from a local ``umt5-base`` folder.

    Args:
        folder: the ``umt5-base`` folder (``config.json``, ``model.safetensors``, tokenizer files).
        dtype: dtype of the weights and of the returned hidden states.
        device: where the model runs; :meth:`to` moves it later (offloading).
        max_length: tokenizer truncation length (official: 256 tokens).

    The model is loaded on the first :meth:`encode` (or an explicit :meth:`load`) and freed by
    :meth:`unload`. Calls are serialised by a lock, so a ``query_scale`` never leaks into another call.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        max_length: int = MAX_PROMPT_TOKENS,
    ):
        self.folder = Path(folder)
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise CheckpointError(
                f"text encoder folder {self.folder} has no config.json; expected the umt5-base folder of an "
                "ACE-Step checkpoint (download it with `songflow download`)"
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            self._dim = int(config["d_model"])
            self._num_layers = int(config["num_layers"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{config_path} is not a valid UMT5 config: {exc}") from exc
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_length = max_length
        self._model: nn.Module | None = None
        self._tokenizer: Any = None
        self._queries: list[_QueryScaledLinear | _OutputScale] = []
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- properties

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def module(self) -> nn.Module:
        """The underlying ``UMT5EncoderModel`` (loaded if needed). Offloading may move it with ``.to()``:
        :meth:`encode` runs wherever its parameters are."""
        self.load()
        assert self._model is not None
        return self._model

    model = module

    # ---------------------------------------------------------------- lifecycle

    def load(self) -> UMT5TextEncoder:
        """Load tokenizer and model now (no-op when loaded). Raises CheckpointError on any key mismatch."""
        with self._lock:
            if self._model is None:
                self._tokenizer = self._load_tokenizer()
                model = self._load_model()
                self._queries = self._install_query_scales(model)
                self._model = model
        return self

    def unload(self) -> None:
        """Free the model and tokenizer (they are reloaded on the next :meth:`encode`)."""
        with self._lock:
            self._model = None
            self._tokenizer = None
            self._queries = []
        gc.collect()
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def to(self, device: str | torch.device) -> UMT5TextEncoder:
        """Move the model (if loaded) to ``device``; later loads go there too."""
        with self._lock:
            self.device = torch.device(device)
            if self._model is not None:
                self._model.to(self.device)
        return self

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load the UMT5 tokenizer from {self.folder}: {exc}") from exc

    def _load_model(self) -> nn.Module:
        from safetensors import SafetensorError
        from transformers import UMT5EncoderModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-file progress bar is noise for a 1-file model

        if not (self.folder / "model.safetensors").is_file():
            pickles = sorted(p.name for p in self.folder.glob("*.bin"))
            extra = f" (found {', '.join(pickles)}: safetensors required)" if pickles else ""
            raise CheckpointError(f"{self.folder / 'model.safetensors'} is missing{extra}")
        try:
            model, info = UMT5EncoderModel.from_pretrained(
                str(self.folder),
                torch_dtype=self.dtype,
                use_safetensors=True,
                local_files_only=True,
                output_loading_info=True,
            )
        except SafetensorError as exc:
            raise CheckpointError(
                f"{self.folder / 'model.safetensors'} is damaged or incomplete ({exc}). Delete it and "
                "download it again (`songflow download`)."
            ) from exc
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot load the UMT5 encoder from {self.folder}: {exc}. If the file is damaged, delete it "
                "and download it again (`songflow download`)."
            ) from exc
        missing = sorted(set(info.get("missing_keys", ())) - _TIED_KEYS)
        unexpected = sorted(info.get("unexpected_keys", ()))
        mismatched = [
            f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in info.get("mismatched_keys", ())
        ]
        problems = [
            f"  {title} ({len(items)}): {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}"
            for title, items in (
                ("missing from the file", missing),
                ("unexpected in the file", unexpected),
                ("shape mismatches", mismatched),
                ("load errors", list(info.get("error_msgs", ()))),
            )
            if items
        ]
        if problems:
            raise CheckpointError(
                f"{self.folder / 'model.safetensors'} does not match its config.json (UMT5EncoderModel):\n"
                + "\n".join(problems)
            )
        model.to(self.device)
        model.eval()
        model.requires_grad_(False)
        return model

    @staticmethod
    def _install_query_scales(model: nn.Module) -> list[_QueryScaledLinear | _OutputScale]:
        """Make every block's self-attention q projection scalable (the ERG-tag feature); see module doc."""
        queries: list[_QueryScaledLinear | _OutputScale] = []
        for block in model.encoder.block:
            attention = block.layer[0].SelfAttention
            q = attention.q
            if type(q) is nn.Linear:
                q.__class__ = _QueryScaledLinear
                q.output_scale = None
            elif not isinstance(q, _QueryScaledLinear | _OutputScale):
                q = _OutputScale(q)
                attention.q = q
            queries.append(q)
        return queries

    # ---------------------------------------------------------------- encoding

    def _check_query_scale(
        self, query_scale: Mapping[int, float | Tensor] | None, batch: int
    ) -> dict[int, float | Tensor]:
        if not query_scale:
            return {}
        scales: dict[int, float | Tensor] = {}
        n = self._num_layers
        for block, tau in query_scale.items():
            if isinstance(block, bool) or not isinstance(block, int) or not -n <= block < n:
                raise ConfigError(
                    f"query_scale block {block!r} out of range: the encoder has {n} blocks "
                    "(negative indices count from the end)"
                )
            if isinstance(tau, Tensor):
                if tau.dim() != 3 or tau.shape[0] not in (1, batch) or tau.shape[1:] != (1, 1):
                    raise ConfigError(
                        f"query_scale[{block}] tensor must have shape [B, 1, 1] (B = {batch}), "
                        f"got {list(tau.shape)}"
                    )
                if not torch.isfinite(tau).all():
                    raise ConfigError(f"query_scale[{block}] holds non-finite values")
            else:
                tau = float(tau)
                if not math.isfinite(tau):
                    raise ConfigError(f"query_scale[{block}] = {tau} is not finite")
            scales[block % n] = tau
        return scales

    def encode(
        self, prompts: Sequence[str], *, query_scale: Mapping[int, float | Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encode ``prompts`` -> (hidden ``[B, Lt, D]`` in ``self.dtype``, mask ``[B, Lt]`` int64), on
        the model's device.

        ``query_scale`` = ``{block: tau}`` ERG-tag scaling for this call only; tau is a float, or a per-row
        tensor ``[B, 1, 1]`` so that plain and weakened prompts can share one batched call.
        """
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError("prompts must be a non-empty list of strings")
        scales = self._check_query_scale(query_scale, len(prompts))
        with self._lock:
            self.load()
            assert self._model is not None
            tokens = self._tokenizer(
                list(prompts),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            device = next(self._model.parameters()).device  # may differ from self.device when offloaded
            input_ids = tokens["input_ids"].to(device)
            mask = tokens["attention_mask"].to(device=device, dtype=torch.long)
            try:
                for block, tau in scales.items():
                    if isinstance(tau, Tensor):
                        tau = tau.to(device=device, dtype=self._model.dtype)
                    self._queries[block].output_scale = tau
                # no_grad, not inference_mode: the states feed a trainable DiT during fine-tuning
                with torch.no_grad():
                    hidden = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            finally:
                for block in scales:
                    self._queries[block].output_scale = None
        return hidden, mask
