"""The prompt strings of the ACE-Step 1.5 5 Hz LM planner, and the readers of its free-text answers.

Pure strings (rank 0, no torch). Facts: ``../shared/acestep_v15/SPEC.md`` §7 and the official
``acestep/llm_inference.py`` (``build_formatted_prompt*``, ``_extract_lyrics_from_output``).

Every prompt is a chat: a system turn ``"# Instruction\\n{instruction}\\n\\n"`` and a user turn, rendered by
the LM folder's chat template. The template is not ours: each builder takes ``render(messages,
add_generation_prompt) -> str``, which is ``tokenizer.apply_chat_template(messages, tokenize=False,
add_generation_prompt=...)`` (:func:`chat_renderer`). The prompts, by use:

* **planning, phase 1** (metadata as a CoT): user ``"# Caption\\n{caption}\\n\\n# Lyric\\n{lyrics}\\n"``, with
  the generation prompt (:func:`cot_prompt`). Its CFG twin (:func:`cot_uncond_prompt`: lyrics only, or the
  negative prompt as caption) exists upstream but phase 1 always runs without CFG;
* **planning, phase 2** (audio codes): the same user turn plus an assistant turn holding the CoT block,
  rendered *without* the generation prompt, plus ``"\\n"`` when the rendering does not end with one
  (:func:`codes_prompt`). With a Qwen3-style template that closes the assistant turn
  (``...</think>\\n\\n<|im_end|>\\n``; SPEC §9.12). CFG twin: empty CoT ``"<think>\\n</think>"`` and the
  original caption, or the negative prompt as caption when one is given (:func:`codes_uncond_prompt`);
* **understand** (audio codes -> metadata + lyrics): user = the code string (:func:`understand_prompt`);
* **inspiration / simple mode** (a description -> a whole song): user
  ``"{description}\\n\\ninstrumental: true|false"`` (:func:`inspiration_prompt`);
* **format** (tidy a caption and lyrics): user ``"# Caption\\n{caption}\\n\\n# Lyric\\n{lyrics}"`` (no
  final newline; :func:`format_prompt`).

The last three answer with a CoT block and then free text after ``</think>`` (lyrics), read by
:func:`extract_lyrics`. Upstream runs them without CFG, so they have no unconditional twins here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "DEFAULT_LM_INSTRUCTION",
    "EMPTY_COT",
    "LM_FORMAT_INSTRUCTION",
    "LM_INSPIRE_INSTRUCTION",
    "LM_UNDERSTAND_INSTRUCTION",
    "MAX_DESCRIPTION_CHARS",
    "NO_USER_INPUT",
    "Render",
    "chat_renderer",
    "codes_prompt",
    "codes_uncond_prompt",
    "cot_prompt",
    "cot_uncond_prompt",
    "extract_lyrics",
    "format_prompt",
    "has_negative_prompt",
    "inspiration_prompt",
    "understand_prompt",
]

DEFAULT_LM_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
"""System instruction of the planning prompts (official ``DEFAULT_LM_INSTRUCTION``)."""
LM_UNDERSTAND_INSTRUCTION = (
    "Understand the given musical conditions and describe the audio semantics accordingly:"
)
"""System instruction of the understand prompt (official ``DEFAULT_LM_UNDERSTAND_INSTRUCTION``)."""
LM_INSPIRE_INSTRUCTION = "Expand the user's input into a more detailed and specific musical description:"
"""System instruction of simple mode (official ``DEFAULT_LM_INSPIRED_INSTRUCTION``)."""
LM_FORMAT_INSTRUCTION = "Format the user's input into a more detailed and specific musical description:"
"""System instruction of the format use (official ``DEFAULT_LM_REWRITE_INSTRUCTION``)."""

NO_USER_INPUT = "NO USER INPUT"
"""The official placeholder for an empty field; as a negative prompt it means "none given"."""
EMPTY_COT = "<think>\n</think>"
"""The assistant turn of the phase-2 unconditional prompt."""
MAX_DESCRIPTION_CHARS = 4000
"""Longest simple-mode description accepted (ours; upstream has no limit)."""

Message = Mapping[str, str]
Render = Callable[[Sequence[Message], bool], str]
"""``render(messages, add_generation_prompt) -> prompt text`` (the LM folder's chat template)."""

_LYRIC_HEADER_RE = re.compile(r"^#\s*Lyri[c|cs]?\s*\n", re.IGNORECASE)


def chat_renderer(tokenizer: Any) -> Render:
    """The :data:`Render` of a Hugging Face tokenizer: its ``apply_chat_template`` as text."""

    def render(messages: Sequence[Message], add_generation_prompt: bool) -> str:
        return str(
            tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )

    return render


def has_negative_prompt(negative_prompt: str | None) -> bool:
    """True when ``negative_prompt`` says something (not empty, not :data:`NO_USER_INPUT`)."""
    text = (negative_prompt or "").strip()
    return bool(text) and text != NO_USER_INPUT


def _system(instruction: str) -> Message:
    return {"role": "system", "content": f"# Instruction\n{instruction}\n\n"}


def _caption_lyrics(caption: str, lyrics: str) -> str:
    return f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n"


def _ask(render: Render, instruction: str, user: str) -> str:
    """A system + user chat ending in the generation prompt (the model answers next)."""
    return render([_system(instruction), {"role": "user", "content": user}], True)


def cot_prompt(render: Render, caption: str, lyrics: str) -> str:
    """Phase-1 prompt: the model writes the metadata CoT for ``caption`` and ``lyrics``."""
    return _ask(render, DEFAULT_LM_INSTRUCTION, _caption_lyrics(caption, lyrics))


def cot_uncond_prompt(render: Render, lyrics: str, negative_prompt: str = NO_USER_INPUT) -> str:
    """Phase-1 CFG twin: the negative prompt as caption when one is given, else the lyrics alone."""
    if has_negative_prompt(negative_prompt):
        user = _caption_lyrics(negative_prompt, lyrics)
    else:
        user = f"# Lyric\n{lyrics}\n"
    return _ask(render, DEFAULT_LM_INSTRUCTION, user)


def _with_cot(render: Render, caption: str, lyrics: str, cot_text: str) -> str:
    messages = [
        _system(DEFAULT_LM_INSTRUCTION),
        {"role": "user", "content": _caption_lyrics(caption, lyrics)},
        {"role": "assistant", "content": cot_text},
    ]
    text = render(messages, False)
    return text if text.endswith("\n") else text + "\n"


def codes_prompt(render: Render, caption: str, lyrics: str, cot_text: str) -> str:
    """Phase-2 prompt: the chat with ``cot_text`` (``"<think>\\n...\\n</think>"``) as the assistant turn;
    the model writes the audio codes next."""
    return _with_cot(render, caption, lyrics, cot_text)


def codes_uncond_prompt(
    render: Render, caption: str, lyrics: str, negative_prompt: str = NO_USER_INPUT
) -> str:
    """Phase-2 CFG twin: an empty CoT, and the negative prompt as caption when one is given (else
    ``caption``)."""
    shown = negative_prompt if has_negative_prompt(negative_prompt) else caption
    return _with_cot(render, shown, lyrics, EMPTY_COT)


def understand_prompt(render: Render, codes_text: str) -> str:
    """Understand prompt: ``codes_text`` (``"<|audio_code_K|>..."``) -> metadata CoT, then lyrics."""
    return _ask(render, LM_UNDERSTAND_INSTRUCTION, codes_text)


def inspiration_prompt(render: Render, description: str, instrumental: bool) -> str:
    """Simple-mode prompt: a free description -> metadata CoT (caption included), then lyrics."""
    flag = "true" if instrumental else "false"
    return _ask(render, LM_INSPIRE_INSTRUCTION, f"{description}\n\ninstrumental: {flag}")


def format_prompt(render: Render, caption: str, lyrics: str) -> str:
    """Format prompt: the user's caption and lyrics -> metadata CoT (a richer caption), then lyrics."""
    return _ask(render, LM_FORMAT_INSTRUCTION, f"# Caption\n{caption}\n\n# Lyric\n{lyrics}")


def extract_lyrics(output_text: str, stop_texts: Sequence[str] = ("<|im_end|>",)) -> str:
    """The free text after the first ``</think>`` of an understand/simple/format answer, stripped, without
    a leading ``# Lyric`` header line (the official pattern ``Lyri[c|cs]?`` keeps ``# Lyrics``) and one
    trailing stop token (official: ``<|im_end|>`` only; pass the pad text too so a row that stopped on
    ``<|endoftext|>`` loses it); ``""`` when there is none (official ``_extract_lyrics_from_output``)."""
    _, found, after = output_text.partition("</think>")
    if not found:
        return ""
    text = after.strip()
    if not text:
        return ""
    text = _LYRIC_HEADER_RE.sub("", text, count=1)
    for stop in stop_texts:
        trailing = re.search(re.escape(stop) + r"\s*$", text)
        if trailing:
            text = text[: trailing.start()]
            break
    return text.strip()
