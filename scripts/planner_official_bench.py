"""The official 5 Hz LM planner timed on the same request as ``songflow bench --planner`` (run with the
official environment's python; see scripts/bench_planner_side_by_side.sh).

    OFFICIAL_VENV/bin/python scripts/planner_official_bench.py --code DIR --lm LM_FOLDER [--cfg 1 2]

``--code``: a folder holding the official ``acestep`` package (exported from the official repository at
783bb36; it is imported from there, never from this repository). The request mirrors
``songflow.interfaces.bench.speed_planner``: ``LLMHandler.initialize(..., backend="pt", device="cpu")``, then
per CFG scale ``torch.manual_seed(42)`` and ``generate_with_stop_condition(caption, lyrics, "llm_dit",
temperature=0.85, top_p=0.9, cfg_scale, target_duration, user_metadata={"duration": ...},
use_cot_caption=False, use_cot_language=True)``. One JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time

CAPTION = "upbeat synth pop, female vocal, bright drums"
LYRICS = "[verse]\nneon lights are calling me\n[chorus]\nwe dance until the morning"
SEED = 42


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", required=True, help="folder with the official acestep package")
    parser.add_argument("--lm", required=True, help="acestep-5Hz-lm-* folder")
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("ACESTEP_DISABLE_TQDM", "1")
    sys.path.insert(0, os.path.abspath(args.code))
    import torch

    torch.set_num_threads(args.threads)
    from acestep.llm_inference import LLMHandler

    folder = os.path.abspath(args.lm)
    handler = LLMHandler()
    t0 = time.perf_counter()
    status, ok = handler.initialize(
        os.path.dirname(folder), os.path.basename(folder), backend="pt", device="cpu"
    )
    load_s = round(time.perf_counter() - t0, 3)
    if not ok:
        print(status, file=sys.stderr)
        return 1
    for scale in args.cfg:
        torch.manual_seed(SEED)
        t1 = time.perf_counter()
        out = handler.generate_with_stop_condition(
            CAPTION,
            LYRICS,
            "llm_dit",
            temperature=0.85,
            cfg_scale=scale,
            top_p=0.9,
            target_duration=args.duration,
            user_metadata={"duration": int(args.duration)},
            use_cot_caption=False,
            use_cot_language=True,
            use_constrained_decoding=True,
        )
        plan_s = round(time.perf_counter() - t1, 3)
        codes = [int(c) for c in re.findall(r"<\|audio_code_(\d+)\|>", out.get("audio_codes") or "")]
        costs = out.get("extra_outputs", {}).get("time_costs", {})
        res = {
            "impl": "official",
            "cfg_scale": scale,
            "duration_s": args.duration,
            "plan_s": plan_s,
            "phase1_s": round(costs.get("phase1_time", 0.0), 3),
            "phase2_s": round(costs.get("phase2_time", 0.0), 3),
            "n_codes": len(codes),
            "codes_head": codes[:8],
            "metadata": out.get("metadata"),
            "phase2_tokens_per_s": round((len(codes) + 1) / max(costs.get("phase2_time", 0.0), 1e-9), 2),
            "load_s": load_s,
            "threads": torch.get_num_threads(),
            "success": out.get("success"),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        }
        print(json.dumps(res, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
