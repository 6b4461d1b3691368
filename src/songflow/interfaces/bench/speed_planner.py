"""``songflow bench --planner <LM folder or 1.5 root>``: load time and the wall time / tokens per second of
planning one song with the 5 Hz LM (phase 1 metadata, phase 2 ``5 x duration`` audio codes), with and
without CFG.

The request matches the side-by-side official run (``scripts/bench_planner_side_by_side.sh``,
``scripts/planner_official_bench.py``): a fixed caption and lyrics, ``duration`` given (so phase 2 makes
exactly ``5 x duration`` codes), caption not generated (``use_cot_caption=False``: a random LM would write
captions of random length), language generated, temperature 0.85, top-p 0.9, one seed for both phases.
The flow is ``songflow.tasks.acestep_v15.planner.plan_song``. One JSON line per CFG scale goes to stdout
(and ``--json-out``).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch

CAPTION = "upbeat synth pop, female vocal, bright drums"
LYRICS = "[verse]\nneon lights are calling me\n[chorus]\nwe dance until the morning"
SEED = 42
TEMPERATURE = 0.85
TOP_P = 0.9
DEFAULT_DURATION_S = 60.0


def _rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def resolve_lm_folder(path: str | Path) -> Path:
    """An ``acestep-5Hz-lm-*`` folder as given, or the LM folder of a 1.5 ``checkpoints/`` root."""
    from songflow.checkpoint import acestep_v15 as ck
    from songflow.errors import CheckpointError

    folder = Path(path).expanduser()
    config = folder / ck.CONFIG_NAME
    if config.is_file() and "Qwen3ForCausalLM" in config.read_text(encoding="utf-8", errors="replace"):
        return folder
    found = ck.lm_folders(folder)
    if not found:
        raise CheckpointError(
            f"{folder} is neither a 5 Hz LM folder nor a checkpoints/ root holding one (acestep-5Hz-lm-*)"
        )
    return found[0]


def _plan_with_flow(lm: Any, duration_s: float, cfg_scale: float, res: dict[str, Any]) -> dict[str, Any]:
    """The planner flow of ``tasks.acestep_v15.planner``; the phases are told apart by the LM's prefills
    (phase 1 = up to the second prefill)."""
    from songflow.tasks.acestep_v15 import planner

    options = planner.PlannerOptions(
        temperature=TEMPERATURE, cfg_scale=cfg_scale, top_p=TOP_P, use_cot_caption=False
    )
    starts: list[float] = []
    prefill = lm.prefill

    def timed_prefill(*args: Any, **kwargs: Any) -> Any:
        starts.append(time.perf_counter())
        return prefill(*args, **kwargs)

    lm.prefill = timed_prefill
    t0 = time.perf_counter()
    try:
        plan = planner.plan_song(
            lm,
            caption=CAPTION,
            lyrics=LYRICS,
            user_metadata={"duration": int(duration_s)},
            target_duration_s=duration_s,
            options=options,
            seeds=[SEED],
        )[0]
    finally:
        del lm.prefill
    end = time.perf_counter()
    codes = list(plan.audio_codes or ())
    if len(starts) >= 2:
        res["phase1_s"], res["phase2_s"] = round(starts[1] - t0, 3), round(end - starts[1], 3)
        res["phase2_tokens_per_s"] = round((len(codes) + 1) / max(end - starts[1], 1e-9), 2)
    metadata = {
        "bpm": plan.bpm,
        "keyscale": plan.keyscale,
        "timesignature": plan.timesignature,
        "language": plan.language,
        "duration": plan.duration_s,
    }
    return {"n_codes": len(codes), "metadata": metadata, "codes_head": codes[:8]}


def bench_one(lm: Any, duration_s: float, cfg_scale: float) -> dict[str, Any]:
    """Plan one song; figures of that run (wall time, tokens, tokens/s)."""
    res: dict[str, Any] = {"impl": "songflow", "cfg_scale": cfg_scale, "duration_s": duration_s}
    lm.reset_counters()
    t0 = time.perf_counter()
    res.update(_plan_with_flow(lm, duration_s, cfg_scale, res))
    res["plan_s"] = round(time.perf_counter() - t0, 3)
    res["tokens"] = lm.prefills + lm.steps
    res["tokens_per_s"] = round(res["tokens"] / max(res["plan_s"], 1e-9), 2)
    res["forward_tokens_per_s"] = round(lm.tokens_per_s(), 2)
    res["peak_rss_gib"] = _rss_gib()
    return res


def run_planner_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Load the LM once, then plan a ``--duration`` song (default 60 s) per ``--cfg`` value (default 1 and
    2); prints one JSON line per run."""
    import transformers.models.qwen3.modeling_qwen3  # noqa: F401 (import time is not load time)

    from songflow.checkpoint.acestep_v15 import load_v15_lm
    from songflow.checkpoint.device import resolve_device

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    folder = resolve_lm_folder(args.planner)
    device = resolve_device(getattr(args, "device", "cpu") or "cpu")
    dtype = getattr(args, "dtype", None) or "auto"
    t0 = time.perf_counter()
    lm = load_v15_lm(folder, device=device, dtype=dtype)
    load_s = round(time.perf_counter() - t0, 3)
    t1 = time.perf_counter()
    _grammar_tables(lm)
    setup_s = round(time.perf_counter() - t1, 3)
    duration_s = float(args.duration) if getattr(args, "duration", None) else DEFAULT_DURATION_S
    scales = args.cfg if getattr(args, "cfg", None) else [1.0, 2.0]
    common = {
        "lm": str(folder),
        "device": str(device),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "grammar_setup_s": setup_s,
    }
    results = []
    for scale in scales:
        res = {**bench_one(lm, duration_s, float(scale)), **common}
        print(json.dumps(res), flush=True)
        if getattr(args, "json_out", None):
            with open(args.json_out, "a", encoding="utf-8") as f:
                f.write(json.dumps(res) + "\n")
        results.append(res)
    return results


def _grammar_tables(lm: Any) -> None:
    """Build the per-tokenizer grammar tables once (outside the timed plans, reported as setup)."""
    from songflow.sampling.planner_grammar import PlanGrammar, PlannerVocab

    vocab = PlannerVocab.from_tokenizer(lm.tokenizer)
    PlanGrammar(
        vocab,
        lm.tokenizer,
        phase="cot",
        user_metadata=None,
        skip_caption=True,
        skip_language=False,
        stop_at_reasoning=True,
        target_codes=None,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m songflow.interfaces.bench.speed_planner LM_FOLDER [--cfg 1 2] [--duration 60]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("planner", help="acestep-5Hz-lm-* folder or a 1.5 checkpoints/ root")
    parser.add_argument("--cfg", type=float, nargs="+", default=None, help="CFG scales (default: 1 2)")
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S, help="song seconds (default 60)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json-out", default=None)
    run_planner_bench(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
