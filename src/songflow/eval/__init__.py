"""Offline adherence metrics: tempo, key, instruments, vocals, sung pitch, loudness/clipping, lyric WER.

>>> from songflow.eval import check_tempo, evaluate, items_from_corpus, summarize
>>> reports = evaluate(items_from_corpus("corpus/"))        # doctest: +SKIP
>>> summarize(reports)["tempo_acc_octave"]                 # doctest: +SKIP
"""

from songflow.eval.checkers import (
    CheckResult,
    available_backends,
    check_clipping,
    check_instruments,
    check_key,
    check_loudness,
    check_pitch,
    check_tempo,
    check_vocals,
    check_wer,
    estimate_key,
    estimate_tempo,
    instrument_family,
    integrated_loudness,
    key_score,
    parse_key,
    tempo_accuracy,
    word_error_rate,
)
from songflow.eval.report import (
    ClipReport,
    EvalItem,
    evaluate,
    evaluate_item,
    format_table,
    items_from_corpus,
    items_from_jsonl,
    summarize,
    write_csv,
    write_json,
    write_plots,
)

__all__ = [
    "CheckResult",
    "ClipReport",
    "EvalItem",
    "available_backends",
    "check_clipping",
    "check_instruments",
    "check_key",
    "check_loudness",
    "check_pitch",
    "check_tempo",
    "check_vocals",
    "check_wer",
    "estimate_key",
    "estimate_tempo",
    "evaluate",
    "evaluate_item",
    "format_table",
    "instrument_family",
    "integrated_loudness",
    "items_from_corpus",
    "items_from_jsonl",
    "key_score",
    "parse_key",
    "summarize",
    "tempo_accuracy",
    "word_error_rate",
    "write_csv",
    "write_json",
    "write_plots",
]
