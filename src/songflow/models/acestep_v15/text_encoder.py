"""ACE-Step 1.5 text side: Qwen3-Embedding-0.6B (transformers ``Qwen3Model``) plus its tokenizer.

What the official handler does (facts: ``../shared/acestep_v15/SPEC.md`` §5):

* **Tokenization**: every prompt is tokenized on its own (``truncation=True``, ``max_length`` 256 for the
  caption prompt, 2048 for the lyric prompt; no special tokens are added by Qwen3's tokenizer), then the
  batch is right-padded to its longest item with the tokenizer's ``pad_token_id`` (``<|endoftext|>``) and a
  0/1 mask. :meth:`Qwen3TextEncoder.tokenize_captions` / :meth:`~Qwen3TextEncoder.tokenize_lyrics`.
* **Caption states**: ``Qwen3Model(input_ids=ids).last_hidden_state`` with **no attention mask** (the
  model's own causal mask still applies; right padding therefore never changes the states of real
  tokens, only the pad positions get states). :meth:`~Qwen3TextEncoder.encode_text` reproduces that by
  default and takes ``attention_mask=`` to pass the padding mask instead.
* **Lyrics** are *not* run through the transformer: only the input embedding table,
  ``embed_tokens(ids)`` (:meth:`~Qwen3TextEncoder.embed_lyrics`); the DiT's lyric encoder contextualises.

Building: :meth:`Qwen3TextEncoder.from_config` makes the network from the folder's ``config.json`` dict
(inside ``checkpoint.strict.init_empty_weights()`` to skip the random init); ``encoder.model`` is the
module whose state dict matches the folder's ``model.safetensors`` (keys ``embed_tokens.weight``,
``layers.N.*``, ``norm.weight``), to be filled with ``load_state_dict_strict``. The tokenizer is any
Hugging Face tokenizer object (``transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)``
in the checkpoint loader). transformers is imported lazily; this module reads no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from songflow.errors import ConfigError

CAPTION_MAX_TOKENS = 256
"""Token limit of the caption/metas prompt (official ``max_length``; longer prompts are truncated)."""

LYRIC_MAX_TOKENS = 2048
"""Token limit of the lyric prompt."""


def build_qwen3_model(config: Mapping[str, Any]) -> Any:
    """A randomly initialised ``transformers.Qwen3Model`` from a ``config.json`` dict."""
    from transformers import Qwen3Config, Qwen3Model

    if config.get("model_type", "qwen3") != "qwen3":
        raise ConfigError(f"text encoder config: model_type {config.get('model_type')!r} is not 'qwen3'")
    return Qwen3Model(Qwen3Config.from_dict(dict(config)))


class Qwen3TextEncoder(nn.Module):
    """Caption prompts -> Qwen3 hidden states; lyric prompts -> Qwen3 token embeddings.

    Args:
        model: a ``transformers.Qwen3Model`` (or a module with the same ``forward`` / ``embed_tokens``).
        tokenizer: a Hugging Face tokenizer (``tokenizer(text, truncation=True, max_length=L)`` returns
            ``input_ids``; ``pad_token_id`` is set).
    """

    model: Any  # transformers Qwen3Model (its state dict = the folder's model.safetensors keys)

    def __init__(self, model: nn.Module, tokenizer: Any):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        if getattr(tokenizer, "pad_token_id", None) is None:
            raise ConfigError("the Qwen3 tokenizer has no pad token (expected <|endoftext|>)")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tokenizer: Any) -> Qwen3TextEncoder:
        """Build the network from a ``config.json`` dict (weights still to be loaded) around ``tokenizer``."""
        return cls(build_qwen3_model(config), tokenizer)

    @property
    def dim(self) -> int:
        """Width D of the hidden states and embeddings (1024 released, 32 in the fixtures)."""
        return int(self.model.config.hidden_size)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    # ---------------------------------------------------------------- tokenization

    def tokenize(self, texts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
        """Tokenize each text alone (truncated to ``max_length``), then right-pad to the batch maximum.

        Returns:
            ids ``[B, L]`` int64 (padding = :attr:`pad_token_id`), mask ``[B, L]`` int64 (1 token, 0 pad).
        """
        if isinstance(texts, str) or not texts:
            raise ConfigError("tokenize expects a non-empty list of strings")
        rows = [list(self.tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask

    def tokenize_captions(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Caption prompts (``text.acestep_v15_prompts.caption_prompt``) -> ids, mask ``[B, L <= 256]``."""
        return self.tokenize(prompts, CAPTION_MAX_TOKENS)

    def tokenize_lyrics(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Lyric prompts (``text.acestep_v15_prompts.lyrics_prompt``) -> ids, mask ``[B, L <= 2048]``."""
        return self.tokenize(prompts, LYRIC_MAX_TOKENS)

    # ---------------------------------------------------------------- states

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_text(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Caption hidden states ``last_hidden_state`` ``[B, L, D]`` (model dtype, model device).

        Args:
            ids: ``[B, L]`` token ids.
            attention_mask: None (default) = the official call, no padding mask (causal attention only);
                pass the ``[B, L]`` 0/1 mask to hide padding from the attention instead.
        """
        ids = ids.to(self._device())
        if attention_mask is None:
            return self.model(input_ids=ids).last_hidden_state
        return self.model(input_ids=ids, attention_mask=attention_mask.to(ids.device)).last_hidden_state

    def embed_lyrics(self, ids: Tensor) -> Tensor:
        """Lyric token embeddings ``embed_tokens(ids)`` ``[B, L, D]`` (no transformer layers)."""
        return self.model.embed_tokens(ids.to(self._device()))
