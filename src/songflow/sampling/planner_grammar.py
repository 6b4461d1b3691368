"""Constrained decoding of the ACE-Step 1.5 5 Hz LM planner: the metadata grammar of one row.

The official planner (``MetadataConstrainedLogitsProcessor``, facts in ``../shared/acestep_v15/SPEC.md`` §7)
forces the CoT block ``<think>\\nbpm: N\\ncaption: ...\\nduration: N\\nkeyscale: K\\nlanguage: L\\n
timesignature: N\\n`` token by token: field names are fixed strings, user-given values are injected, numbers,
keys, languages and time signatures follow prefix trees of their valid values (built from the tokenizer's own
tokenization of ``"bpm: 120"`` etc.), then ``</think>`` (phase 1 stops with EOS there) or the audio codes
(phase 2: codes 0..63999 + EOS, EOS blocked until ``target_codes`` codes, then forced).

:class:`PlanGrammar` is that state machine for ONE row. ``legacy=True`` reproduces the official behaviour
exactly (the fixtures replay with it). The default (``legacy=False``) fixes two official bugs in the caption:

* SPEC §9.9: the official caption admits every token but audio codes and the backtick, so ``<|endoftext|>``,
  ``<|im_end|>``, ``<think>``, ``</think>``... end phase 1 in the middle of the caption and the user's later
  fields are lost. Fixed: the caption admits no added/special token and no token containing a backtick or
  ``<`` (so no special-token text can be spelled out either).
* SPEC §9.13: after a line break in the caption the official machine looks at the raw argmax and, when it
  does not start with a space, returns the scores unconstrained until some token holds a ``:``; the
  512-token cap no longer applies. Fixed: after a line break only an indented continuation line (a token
  starting with a space, YAML style) or the first token of the next expected field name is allowed (the
  latter once the caption has text); the cap always applies (then only a line break, then the field name).

Per tokenizer the token tables (code ids, prefix trees, fixed-string tokens, caption masks) are computed
once and cached (keyed by the tokenizer object), so a grammar is cheap to build for each request.
Genres are not supported (no genres vocabulary ships; the official planner skips them by default).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from songflow.errors import ConfigError
from songflow.requests_v15 import (
    BPM_RANGE,
    PLAN_DURATION_RANGE_S,
    VALID_KEYSCALES,
    VALID_LANGUAGES,
    VALID_TIME_SIGNATURES,
)

__all__ = ["MAX_AUDIO_CODE", "PlanGrammar", "PlannerVocab", "planner_field_order"]

MAX_AUDIO_CODE = 63999  # the official decoder allows codes 0..63999 only
BPM_MIN, BPM_MAX = BPM_RANGE
DURATION_MIN, DURATION_MAX = PLAN_DURATION_RANGE_S
TIME_SIGNATURES = tuple(int(v) for v in VALID_TIME_SIGNATURES)
CAPTION_MAX_TOKENS = 512  # official caption cap
_CODE_RE = re.compile(r"^<\|audio_code_(\d+)\|>$")
_FIELD_ORDER = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")
_NUMERIC = ("bpm", "duration", "timesignature")
_CAPTION_FORBIDDEN_CHARS = "`<"  # fixed mode: no code blocks, no special-token text


@dataclass(frozen=True)
class PlannerVocab:
    """Token facts of one LM tokenizer (computed once per tokenizer, see :meth:`from_tokenizer`).

    ``audio_code_ids``: int64 [N] token ids of codes 0..N-1 (ordered by code value, N ≤ 64000);
    ``code_of_id``: token id -> code value; ``vocab_size`` = ``len(tokenizer)``.
    """

    vocab_size: int
    eos_id: int
    pad_id: int | None
    think_start_id: int | None
    think_end_id: int | None
    newline_id: int
    audio_code_ids: torch.Tensor
    code_of_id: dict[int, int] = field(repr=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> PlannerVocab:
        """The vocab facts of ``tokenizer`` (an HF tokenizer), cached per tokenizer object."""
        return _tables(tokenizer).vocab

    def codes_mask(self, width: int | None = None) -> torch.Tensor:
        """bool [width] (default vocab_size): True at the audio-code ids and EOS."""
        mask = torch.zeros(width or self.vocab_size, dtype=torch.bool)
        mask[self.audio_code_ids] = True
        mask[self.eos_id] = True
        return mask


def _token_id(tokenizer: Any, text: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(text)
    if token_id is None or token_id == tokenizer.unk_token_id and text != tokenizer.unk_token:
        return None
    return int(token_id)


def _build_vocab(tokenizer: Any, encode: Callable[[str], list[int]]) -> PlannerVocab:
    """Audio codes: every vocabulary entry spelled ``<|audio_code_K|>`` with K ≤ 63999 (the official code
    decodes each id and matches that pattern; the entries are ASCII without spaces, so the vocabulary
    spelling is the decoded text)."""
    code_of_id: dict[int, int] = {}
    for text, token_id in tokenizer.get_vocab().items():
        match = _CODE_RE.match(text)
        if match and int(match.group(1)) <= MAX_AUDIO_CODE:
            code_of_id[int(token_id)] = int(match.group(1))
    by_code = sorted(code_of_id.items(), key=lambda item: item[1])
    if tokenizer.eos_token_id is None:
        raise ConfigError("the LM tokenizer has no eos token; use the tokenizer of an acestep-5Hz-lm folder")
    newline = encode("\n")
    if not newline:
        raise ConfigError("the LM tokenizer cannot encode a line break; use an acestep-5Hz-lm tokenizer")
    return PlannerVocab(
        vocab_size=len(tokenizer),
        eos_id=int(tokenizer.eos_token_id),
        pad_id=None if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id),
        think_start_id=_token_id(tokenizer, "<think>"),
        think_end_id=_token_id(tokenizer, "</think>"),
        newline_id=newline[-1],
        audio_code_ids=torch.tensor([token_id for token_id, _ in by_code], dtype=torch.long),
        code_of_id=code_of_id,
    )


PrefixTree = dict[tuple[int, ...], frozenset[int]]


class _Tables:
    """Everything the grammar needs from one tokenizer, computed on first use and kept."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = weakref.ref(tokenizer)  # the cache must not keep its key alive
        self.vocab = _build_vocab(tokenizer, self.encode)
        backtick = self.encode("`")
        self.backtick_id: int | None = backtick[-1] if backtick else None
        self.digit_ids = {d: self.encode(str(d))[-1] for d in range(10) if self.encode(str(d))}
        self._fixed: dict[tuple[str, int], list[int]] = {}
        self._trees: dict[tuple[str, int], PrefixTree] = {}
        self._texts: list[str] | None = None
        self._caption_masks: dict[str, torch.Tensor] | None = None
        self.legacy_caption_block = self._legacy_caption_block()
        self.codes_only = self.vocab.codes_mask()

    @property
    def tokenizer(self) -> Any:
        tokenizer = self._tokenizer()
        if tokenizer is None:  # pragma: no cover - the grammar holds the tokenizer while it runs
            raise RuntimeError("the planner tokenizer was freed")
        return tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_id: int) -> str:
        if self._texts is not None and 0 <= token_id < len(self._texts):
            return self._texts[token_id]
        return str(self.tokenizer.decode([token_id]))

    def texts(self) -> list[str]:
        """The decoded text of every id (one batched decode, ~0.1 s for 217k tokens)."""
        if self._texts is None:
            ids = [[i] for i in range(self.vocab.vocab_size)]
            backend = getattr(self.tokenizer, "_tokenizer", None)
            if backend is not None and not getattr(self.tokenizer, "clean_up_tokenization_spaces", False):
                self._texts = list(backend.decode_batch(ids, skip_special_tokens=False))
            else:
                self._texts = list(self.tokenizer.batch_decode(ids))
        return self._texts

    def _legacy_caption_block(self) -> torch.Tensor:
        """bool [V]: what the official caption forbids — the audio codes and the backtick token."""
        mask = torch.zeros(self.vocab.vocab_size, dtype=torch.bool)
        mask[self.vocab.audio_code_ids] = True
        if self.backtick_id is not None:
            mask[self.backtick_id] = True
        return mask

    def fixed_tokens(self, text: str, position: int) -> list[int]:
        """Official choice of the token(s) that continue the fixed string ``text`` at ``position``: the
        longest remaining prefix that encodes to one token, else every first token that matches."""
        key = (text, position)
        if key not in self._fixed:
            self._fixed[key] = self._fixed_tokens(text[position:])
        return self._fixed[key]

    def _fixed_tokens(self, remaining: str) -> list[int]:
        if not remaining:
            return []
        for end in range(len(remaining), 0, -1):
            ids = self.encode(remaining[:end])
            if len(ids) == 1:
                return ids
        best: dict[int, int] = {}
        for end in range(1, min(len(remaining) + 1, 20)):
            ids = self.encode(remaining[:end])
            if not ids:
                continue
            prefix = remaining[:end].lstrip().lower()
            decoded = self.decode(ids[0]).lstrip().lower()
            if decoded.startswith(prefix) or prefix.startswith(decoded):
                best[ids[0]] = max(end, best.get(ids[0], 0))
        return [t for t, _ in sorted(best.items(), key=lambda item: item[1], reverse=True)]

    def tree(self, name: str, max_duration_s: int = DURATION_MAX) -> PrefixTree:
        """Prefix tree (token-id prefix -> allowed next ids; complete values allow the line break) of a
        field's valid values, tokenized after ``"{name}: "`` as the official planner does."""
        key = (name, max_duration_s if name == "duration" else 0)
        if key not in self._trees:
            values = {
                "bpm": [str(v) for v in range(BPM_MIN, BPM_MAX + 1)],
                "duration": [str(v) for v in range(DURATION_MIN, max_duration_s + 1)],
                "timesignature": [str(v) for v in TIME_SIGNATURES],
                "keyscale": sorted(VALID_KEYSCALES),
                "language": list(VALID_LANGUAGES),
            }[name]
            self._trees[key] = self._build_tree(name, values)
        return self._trees[key]

    def _build_tree(self, name: str, values: Sequence[str]) -> PrefixTree:
        context = self.encode(f"{name}:")
        full = self.tokenizer([f"{name}: {v}" for v in values], add_special_tokens=False)["input_ids"]
        tree: dict[tuple[int, ...], set[int]] = {}
        for ids in full:
            if list(ids[: len(context)]) != context:
                continue
            value_ids = list(ids[len(context) :])
            if name in ("keyscale", "language") and not value_ids:
                continue
            if name == "keyscale" and self.decode(value_ids[0]).lstrip()[:1].upper() not in "ABCDEFG":
                continue
            for i in range(len(value_ids) + 1):
                nxt = value_ids[i] if i < len(value_ids) else self.vocab.newline_id
                tree.setdefault(tuple(value_ids[:i]), set()).add(nxt)
        return {prefix: frozenset(ids) for prefix, ids in tree.items()}

    def special_ids(self) -> frozenset[int]:
        """Every added/special token: the tokenizer's added tokens, codes, EOS, pad, think tags."""
        v = self.vocab
        ids = set(getattr(self.tokenizer, "added_tokens_decoder", {}) or {}) | set(v.code_of_id) | {v.eos_id}
        return frozenset(ids | {i for i in (v.pad_id, v.think_start_id, v.think_end_id) if i is not None})

    def caption_masks(self) -> dict[str, torch.Tensor]:
        """Fixed-mode caption masks (bool [V]): ``mid`` tokens allowed inside a line, ``start`` tokens that
        may open a continuation line (they start with a space)."""
        if self._caption_masks is None:
            added = self.special_ids()
            mid, start = [], []
            for token_id, text in enumerate(self.texts()):
                lines = text.split("\n")
                ok = token_id not in added and not any(c in text for c in _CAPTION_FORBIDDEN_CHARS)
                ok = ok and all(line == "" or line[0] == " " for line in lines[1:])
                mid.append(ok)
                start.append(ok and lines[0][:1] == " ")
            self._caption_masks = {
                "mid": torch.tensor(mid, dtype=torch.bool),
                "start": torch.tensor(start, dtype=torch.bool),
            }
        return self._caption_masks


_CACHE: weakref.WeakKeyDictionary[Any, _Tables] = weakref.WeakKeyDictionary()


def _tables(tokenizer: Any) -> _Tables:
    try:
        return _CACHE[tokenizer]
    except KeyError:
        tables = _CACHE[tokenizer] = _Tables(tokenizer)
        return tables


def planner_field_order(*, skip_caption: bool, skip_language: bool, skip_genres: bool = True) -> list[str]:
    """The CoT fields the machine writes, in order (bpm, caption, duration, genres, keyscale, language,
    timesignature minus the skipped ones)."""
    skipped = {"caption": skip_caption, "language": skip_language, "genres": skip_genres}
    return [f for f in _FIELD_ORDER if not skipped.get(f, False)]


def _whitelist(scores: torch.Tensor, allowed: Sequence[int]) -> torch.Tensor:
    """``scores`` with every id outside ``allowed`` set to -inf (a new tensor)."""
    out = torch.full_like(scores, float("-inf"))
    if allowed:
        index = torch.as_tensor(list(allowed), dtype=torch.long, device=scores.device)
        out[index] = scores[index]
    return out


def _keep(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``scores`` where ``mask`` (bool [V], shorter masks padded with False) else -inf."""
    if mask.shape[0] < scores.shape[0]:
        mask = torch.cat([mask, mask.new_zeros(scores.shape[0] - mask.shape[0])])
    return scores.masked_fill(~mask.to(scores.device), float("-inf"))


class PlanGrammar:
    """The constrained-decoding state machine of ONE row (official ``MetadataConstrainedLogitsProcessor``).

    ``phase="cot"``: the CoT block from ``<think>`` on (user fields injected, the others constrained); with
    ``stop_at_reasoning`` the block ends with EOS where ``</think>`` would come, else ``</think>`` and then
    the codes. ``phase="codes"``: the prompt already holds the CoT (the official machine detects its
    ``</think>``), so only audio codes + EOS, EOS exactly after ``target_codes`` codes (None: EOS any time).
    In phase ``cot`` a ``target_codes`` forces the duration field to ``target_codes // 5`` (official
    ``target_duration``). ``user_metadata``: field -> value (str/int; None = generate). Per step the decode
    loop calls :meth:`constrain` on the row's scores (after CFG) and :meth:`advance` with the chosen token.
    """

    def __init__(
        self,
        vocab: PlannerVocab,
        tokenizer: Any,
        *,
        phase: Literal["cot", "codes"],
        user_metadata: Mapping[str, Any] | None,
        skip_caption: bool,
        skip_language: bool,
        skip_genres: bool = True,
        stop_at_reasoning: bool,
        target_codes: int | None,
        max_duration_s: int = DURATION_MAX,
        legacy: bool = False,
    ) -> None:
        if phase not in ("cot", "codes"):
            raise ConfigError(f"planner grammar phase {phase!r}: use 'cot' or 'codes'")
        if phase == "cot" and not skip_genres:
            raise ConfigError(
                "the planner grammar cannot generate genres (no genres vocabulary ships); skip them"
            )
        if not DURATION_MIN <= max_duration_s <= DURATION_MAX:
            raise ConfigError(f"max_duration_s {max_duration_s}: give {DURATION_MIN}..{DURATION_MAX} seconds")
        if target_codes is not None and target_codes < 0:
            raise ConfigError(f"target_codes {target_codes}: give a count >= 0 or None")
        self.vocab = vocab
        self._tokenizer = tokenizer  # the per-tokenizer tables only hold it weakly
        self._t = _tables(tokenizer)
        self.legacy = legacy
        self.stop_at_reasoning = stop_at_reasoning
        self.target_codes = target_codes
        self.max_duration_s = max_duration_s
        self.user = {k: v for k, v in (user_metadata or {}).items() if k in _FIELD_ORDER and v is not None}
        if not legacy:
            self._check_user_text()
        self._fixed = {"think": "<think>", "nl_think": "\n", "think_end": "</think>"}
        self._fixed |= {f"{f}_name": f"{f}:" for f in _FIELD_ORDER}
        self._next = self._transitions(skip_caption, skip_language, skip_genres)
        self._skips = {"caption": skip_caption, "language": skip_language, "genres": skip_genres}
        self.state = "codes" if phase == "codes" else "think"
        self.codes_count = 0
        self._reset_field()
        self._queue: list[int] = []
        self._queue_field: str | None = None
        self._stopped = False

    def _check_user_text(self) -> None:
        """Fixed mode: a user value must not hold special-token text (``<|im_end|>`` would end phase 1)."""
        added = self._t.special_ids()
        for key, value in self.user.items():
            bad = [self._t.decode(i) for i in self._t.encode(f" {value}\n") if i in added]
            if bad:
                raise ConfigError(f"planner field {key!r} holds special-token text {bad[0]!r}; remove it")

    # --- state bookkeeping -------------------------------------------------------------------------------

    def _transitions(self, skip_caption: bool, skip_language: bool, skip_genres: bool) -> dict[str, str]:
        """state -> next state (official ``_build_state_transitions``; skipped fields have no entries)."""
        order = planner_field_order(
            skip_caption=skip_caption, skip_language=skip_language, skip_genres=skip_genres
        )
        nxt = {"think": "nl_think", "nl_think": "bpm_name", "think_end": "codes"}
        for name in _FIELD_ORDER:
            if name in order:
                nxt[f"{name}_name"] = f"{name}_value"
                nxt[f"{name}_value"] = self._next_name(name, order)
        return nxt

    @staticmethod
    def _next_name(name: str, order: Sequence[str]) -> str:
        later = [f for f in order if _FIELD_ORDER.index(f) > _FIELD_ORDER.index(name)]
        return f"{later[0]}_name" if later else "think_end"

    def _reset_field(self) -> None:
        self.pos = 0
        self.acc_ids: list[int] = []
        self.acc_text = ""
        self.cap_after_newline = False
        self.cap_tokens = 0
        self.cap_ending = False
        self.cap_pending = ""
        self.cap_line_start = False

    def _set_state(self, state: str) -> None:
        self.state = state
        self._reset_field()

    def _transition(self) -> None:
        if self.state in self._next:
            self._set_state(self._next[self.state])

    @property
    def finished(self) -> bool:
        """True once the row chose EOS or pad (the decode loop stops there too) or the block ended."""
        return self._stopped or self.state == "done"

    def codes_only(self) -> torch.Tensor | None:
        """bool [V]: the ids allowed while generating codes (codes + EOS; shared, do not modify); None
        outside that state."""
        return self._t.codes_only if self.state == "codes" else None

    @property
    def _field(self) -> str:
        return self.state.rsplit("_", 1)[0]

    # --- constrain ---------------------------------------------------------------------------------------

    def constrain(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` (float32 [V], the row after CFG) with every id the grammar forbids at -inf (a new
        tensor; some states keep ``scores`` as they are)."""
        if scores.dim() != 1:
            raise ValueError(f"PlanGrammar.constrain takes one row [V], got shape {tuple(scores.shape)}")
        if self.state == "done":
            return scores
        if self.state == "codes":
            return self._constrain_codes(scores)
        if self._queue:
            return _whitelist(scores, [self._queue[0]])
        if self.state in self._fixed:
            return self._constrain_fixed(scores)
        field_name = self._field
        if field_name in self.user and not self._value_started():
            injected = self._start_injection(field_name)
            if injected is not None:
                return _whitelist(scores, [injected])
        if field_name == "caption":
            return self._constrain_caption_legacy(scores) if self.legacy else self._constrain_caption(scores)
        if field_name == "duration" and self.target_codes is not None:
            return self._constrain_target_duration(scores)
        if field_name == "genres":
            raise ConfigError("the planner grammar cannot generate genres (no genres vocabulary ships)")
        return self._constrain_tree_field(field_name, scores)

    def _constrain_codes(self, scores: torch.Tensor) -> torch.Tensor:
        out = _keep(scores, self._t.codes_only)
        eos = self.vocab.eos_id
        if self.target_codes is None:
            return out
        if self.codes_count < self.target_codes:
            out[eos] = float("-inf")
            return out
        return _whitelist(out, [eos])

    def _constrain_fixed(self, scores: torch.Tensor) -> torch.Tensor:
        text = self._fixed[self.state]
        allowed = self._t.fixed_tokens(text, self.pos)
        ending = self.state == "think_end" and self.stop_at_reasoning
        if ending and (not allowed or len(text) - self.pos <= 10):
            return _whitelist(scores, [self.vocab.eos_id])
        if allowed:
            return _whitelist(scores, allowed)
        # the fixed string is used up (not reached in practice): official moves on and restarts from zeros
        self._transition()
        if self.state in self._fixed:
            return scores
        return self.constrain(torch.zeros_like(scores))

    def _value_started(self) -> bool:
        return bool(self.acc_text) if self._field == "caption" else bool(self.acc_ids)

    def _start_injection(self, field_name: str) -> int | None:
        """Queue the user's value of ``field_name`` (``" {value}\\n"``) and return its first token."""
        value = self.user[field_name]
        if field_name == "caption" and not self.legacy:
            value = " ".join(line.strip() for line in str(value).split("\n") if line.strip())
        ids = self._t.encode(f" {value}\n")
        if not ids:
            return None
        self._queue, self._queue_field = ids, field_name
        return ids[0]

    def _constrain_target_duration(self, scores: torch.Tensor) -> torch.Tensor:
        target = str((self.target_codes or 0) // 5)
        if len(self.acc_text) < len(target):
            digit = int(target[len(self.acc_text)])
            return _whitelist(scores, [self._t.digit_ids[digit]]) if digit in self._t.digit_ids else scores
        return _whitelist(scores, [self.vocab.newline_id])

    def _constrain_tree_field(self, field_name: str, scores: torch.Tensor) -> torch.Tensor:
        tree = self._t.tree(field_name, self.max_duration_s)
        prefix = tuple(self.acc_ids)
        newline = self.vocab.newline_id
        allowed = sorted(tree.get(prefix, frozenset()))
        if field_name in ("bpm", "duration", "timesignature"):
            if field_name == "timesignature" and newline in allowed:
                return _whitelist(scores, [newline])
            return _whitelist(scores, allowed)
        if field_name == "language" and not prefix:
            if not allowed:
                return _whitelist(scores, [newline])
            candidates = torch.as_tensor(allowed, dtype=torch.long, device=scores.device)
            best = allowed[int(torch.argmax(scores[candidates]))]
            return _whitelist(scores, [best])
        if newline in allowed or not allowed:
            return _whitelist(scores, [newline])
        return _whitelist(scores, allowed)

    def _constrain_caption_legacy(self, scores: torch.Tensor) -> torch.Tensor:
        """Official caption: everything but audio codes and the backtick; after a line break whose raw argmax
        does not start with a space/tab, unconstrained until a ``:`` (SPEC §9.13); cap of 512 tokens."""
        if self.cap_after_newline:
            self.cap_after_newline = False
            top_text = self._t.decode(int(torch.argmax(scores)))
            if top_text and top_text[0] not in " \t":
                self.cap_ending, self.cap_pending = True, ""
                return scores
        if self.cap_ending:
            return scores
        out = _keep(scores, ~self._t.legacy_caption_block)
        if self.cap_tokens >= CAPTION_MAX_TOKENS:
            return _whitelist(out, [self.vocab.newline_id])
        return out

    def _next_field_tokens(self) -> list[int]:
        """The first token(s) of what follows the caption (the next field's name, or EOS at the end)."""
        nxt = self._next.get(self.state, "think_end")
        if nxt == "think_end" and self.stop_at_reasoning:
            return [self.vocab.eos_id]
        return self._t.fixed_tokens(self._fixed[nxt], 0)

    def _constrain_caption(self, scores: torch.Tensor) -> torch.Tensor:
        """Fixed caption (SPEC §9.9, §9.13): no special tokens; a new line is an indented continuation or
        the next field name (once the caption has text); the cap always applies."""
        masks = self._t.caption_masks()
        has_text = bool(self.acc_text.strip())
        capped = self.cap_tokens >= CAPTION_MAX_TOKENS
        if not self.cap_line_start:
            return _whitelist(scores, [self.vocab.newline_id]) if capped else _keep(scores, masks["mid"])
        allowed = torch.zeros_like(masks["start"]) if capped else masks["start"].clone()
        if has_text or capped or not allowed.any():
            allowed[self._next_field_tokens()] = True
        return _keep(scores, allowed)

    # --- advance -----------------------------------------------------------------------------------------

    def advance(self, token_id: int) -> None:
        """Update the state with the token the row chose (official ``update_state``)."""
        token_id = int(token_id)
        if token_id == self.vocab.eos_id or token_id == self.vocab.pad_id:
            self._stopped = True
        if self.state == "done":
            return
        if self.state == "codes":
            self.codes_count += 1
            return
        if self._queue:
            self._queue.pop(0)
            if not self._queue:
                self._set_state(self._next_name(self._queue_field or "bpm", self._order()))
                self._queue_field = None
            return
        text = self._t.decode(token_id)
        if self.state in self._fixed:
            self._advance_fixed(text)
        elif self._field == "caption":
            self._advance_caption(token_id, text)
        elif token_id == self.vocab.newline_id:
            self._transition()
        else:
            self.acc_ids.append(token_id)
            if self._field not in _NUMERIC:
                self.acc_text += text
            elif text.strip().isdigit():
                self.acc_text += text.strip()

    def _order(self) -> list[str]:
        return planner_field_order(
            skip_caption=self._skips["caption"],
            skip_language=self._skips["language"],
            skip_genres=self._skips["genres"],
        )

    def _advance_fixed(self, text: str) -> None:
        self.pos += len(text)
        if self.pos < len(self._fixed[self.state]):
            return
        if self.state == "think_end" and self.stop_at_reasoning:
            self._set_state("done")
        else:
            self._transition()

    def _advance_caption(self, token_id: int, text: str) -> None:
        self.cap_tokens += 1
        self.acc_text += text
        if not self.legacy:
            if self.cap_line_start and token_id in self._next_field_tokens():
                self._set_state(self._next.get(self.state, "think_end"))
                if self.state in self._fixed:
                    self._advance_fixed(text)
                return
            if "\n" in text:
                self.cap_line_start = text.split("\n")[-1] == ""
            elif text:
                self.cap_line_start = False
            return
        self.cap_after_newline = "\n" in text
        if not self.cap_ending:
            return
        self.cap_pending += text
        if ":" not in text:
            return
        name = self.cap_pending.strip().rstrip(":").strip().lower()
        if name in ("duration", "genres", "keyscale", "language", "timesignature"):
            self._set_state(f"{name}_value")
        else:
            self._transition()
