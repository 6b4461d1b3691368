"""The ACE-Step 1.5 DiT prompt strings: task instructions, the metas block, caption and lyric prompts.

Pure string building (rank 0, no torch). The official handler feeds the Qwen3 text encoder two strings per
item (facts: ``../shared/acestep_v15/SPEC.md`` §5):

* the **caption prompt** (``SFT_GEN_PROMPT``)::

      # Instruction
      {instruction ending in ':'}

      # Caption
      {caption}

      # Metas
      - bpm: {bpm | N/A}
      - timesignature: {time signature | N/A}
      - keyscale: {key | N/A}
      - duration: {int(seconds)} seconds
      <|endoftext|>

  tokenized with ``max_length=256``;
* the **lyric prompt** ``"# Languages\\n{language}\\n\\n# Lyric\\n{lyrics}<|endoftext|>"``
  (``max_length=2048``).

``<|endoftext|>`` is literal text here; the tokenizer maps it to its special id (the pad id of Qwen3).
The handler's recorded ``text_inputs`` string is ``caption_prompt + "\\n\\n" + lyrics_prompt``
(:func:`recorded_text_input`).

Which values the pipeline puts into the metas (official ``prepare_batch_data`` / ``_build_metadata_dict``):
the duration is the *source audio's* length in seconds when the task has source audio, otherwise the
requested ``audio_duration`` (when > 0), otherwise missing, which prints ``30 seconds``; it is never the
generated length (at least 128 latent frames = 5.12 s). ``int()`` truncates (1.5 s -> ``1 seconds``).
A falsy bpm (None, 0) prints ``N/A``; a blank key or time signature (or ``"N/A"``) prints ``N/A``; other
values are printed as given (not stripped). With the LM planner, its metas fill the fields the user left
empty. Caption and lyrics are used as given (an empty caption leaves an empty line); the task switch to
the cover instruction when audio codes are given, and ``is_covers``, are decided by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable

from songflow.errors import ConfigError

END_OF_TEXT = "<|endoftext|>"
"""Literal end marker the official prompts append (the Qwen3 pad token)."""

DEFAULT_DURATION_S = 30
"""Duration printed in the metas when none is known (official ``_dict_to_meta_string`` default)."""

MISSING = "N/A"

TASK_INSTRUCTIONS: dict[str, str] = {
    "text2music": "Fill the audio semantic mask based on the given conditions:",
    "repaint": "Repaint the mask area based on the given conditions:",
    "cover": "Generate audio semantic tokens based on the given conditions:",
    "extract": "Extract the {TRACK_NAME} track from the audio:",
    "extract_default": "Extract the track from the audio:",
    "lego": "Generate the {TRACK_NAME} track based on the audio context:",
    "lego_default": "Generate the track based on the audio context:",
    "complete": "Complete the input track with {TRACK_CLASSES}:",
    "complete_default": "Complete the input track:",
}
"""The official ``TASK_INSTRUCTIONS`` (placeholders filled by :func:`instruction_for`)."""

DEFAULT_DIT_INSTRUCTION = TASK_INSTRUCTIONS["text2music"]
"""The instruction ``generate_music`` uses when the caller passes none, for every task."""

TASKS = ("text2music", "repaint", "cover", "extract", "lego", "complete")

_CAPTION_TEMPLATE = "# Instruction\n{}\n\n# Caption\n{}\n\n# Metas\n{}" + END_OF_TEXT + "\n"
_LYRICS_TEMPLATE = "# Languages\n{}\n\n# Lyric\n{}" + END_OF_TEXT


def instruction_for(task: str, track: str | None = None, classes: Iterable[str] = ()) -> str:
    """The instruction the official UI passes for ``task`` (``AceStepHandler.generate_instruction``).

    Args:
        task: one of :data:`TASKS`; any other name gives the text2music instruction, as the official does.
        track: track name for ``extract`` / ``lego`` (upper-cased, e.g. ``"vocals"`` -> ``VOCALS``); empty
            or None gives the ``*_default`` instruction.
        classes: track classes for ``complete``, upper-cased and joined by ``" | "``; none gives
            ``complete_default``.
    """
    if task in ("extract", "lego"):
        if track:
            return TASK_INSTRUCTIONS[task].format(TRACK_NAME=track.upper())
        return TASK_INSTRUCTIONS[f"{task}_default"]
    if task == "complete":
        names = [c.upper() for c in classes]
        if names:
            return TASK_INSTRUCTIONS["complete"].format(TRACK_CLASSES=" | ".join(names))
        return TASK_INSTRUCTIONS["complete_default"]
    return TASK_INSTRUCTIONS[task] if task in ("repaint", "cover") else DEFAULT_DIT_INSTRUCTION


def format_instruction(instruction: str) -> str:
    """``instruction`` with a trailing ``":"`` added when it lacks one (official ``_format_instruction``)."""
    return instruction if instruction.endswith(":") else instruction + ":"


def _text_or_missing(value: str | None, *, na_is_missing: bool = False) -> str:
    if value is None or not str(value).strip() or (na_is_missing and value == MISSING):
        return MISSING
    return str(value)


def metas_block(
    bpm: int | float | str | None = None,
    time_signature: str | int | None = None,
    key_scale: str | None = None,
    duration_s: float | None = None,
) -> str:
    """The ``# Metas`` body: four ``- name: value`` lines, each ending in a newline.

    Args:
        bpm: beats per minute; None/0/"" print ``N/A``, anything else prints as ``str(bpm)``.
        time_signature: beats per bar as the handler receives it (``"4"``); blank or ``"N/A"`` -> ``N/A``.
        key_scale: e.g. ``"C major"``; blank -> ``N/A``.
        duration_s: seconds; printed as ``int(duration_s)`` (truncated); None prints
            :data:`DEFAULT_DURATION_S`. See the module doc for which duration the pipeline passes.
    """
    if isinstance(duration_s, bool):
        raise ConfigError(f"duration_s must be a number of seconds, got {duration_s!r}")
    seconds = DEFAULT_DURATION_S if duration_s is None else int(duration_s)
    signature = None if time_signature is None else str(time_signature)
    return (
        f"- bpm: {bpm if bpm else MISSING}\n"
        f"- timesignature: {_text_or_missing(signature, na_is_missing=True)}\n"
        f"- keyscale: {_text_or_missing(key_scale)}\n"
        f"- duration: {seconds} seconds\n"
    )


def caption_prompt(instruction: str, caption: str, metas: str) -> str:
    """The text-encoder prompt (official ``SFT_GEN_PROMPT``); ``instruction`` gets a ``":"`` if missing.

    ``metas`` is a :func:`metas_block` string (or any metas text, used verbatim).
    """
    return _CAPTION_TEMPLATE.format(format_instruction(instruction), caption, metas)


def lyrics_prompt(language: str, lyrics: str) -> str:
    """The lyric prompt (official ``LYRIC_GEN_PROMPT``): language code header, then the lyrics as given."""
    return _LYRICS_TEMPLATE.format(language, lyrics)


def recorded_text_input(caption_text: str, lyrics_text: str) -> str:
    """The handler's per-item ``text_inputs`` record: caption prompt, a blank line, lyric prompt."""
    return caption_text + "\n\n" + lyrics_text
