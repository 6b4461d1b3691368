"""Print the windows ACE-Step 1.5 extend runs for a few requests, and optionally time one on a checkpoint.

    python scripts/v15_extend_windows.py                       # the window plans (no model needed)
    python scripts/v15_extend_windows.py --checkpoint DIR --source s.wav --left-s 10 --right-s 30

For each request: the result's length, the DiT runs (windows), the frames they sample in all (the cost,
in multiples of the result's new frames) and the least context a window sees.
"""

from __future__ import annotations

import argparse
import time

from songflow.tasks.acestep_v15 import extend as extend15
from songflow.tasks.acestep_v15 import inputs

CASES = [  # (source s, left s, right s)
    (180.0, 0.0, 30.0),
    (180.0, 30.0, 30.0),
    (300.0, 0.0, 300.0),
    (240.0, 600.0, 600.0),
    (600.0, 0.0, 1200.0),
    (200.0, 1200.0, 1200.0),
]


def plan_table() -> None:
    rate, hop = inputs.SAMPLE_RATE_HZ, inputs.HOP_SAMPLES
    print(f"window: {extend15.WINDOW_FRAMES} frames ({extend15.WINDOW_FRAMES / inputs.FRAMES_PER_S:g} s)")
    print("source_s  left_s  right_s  result_s  windows  sampled/new  min_context_s")
    for source_s, left_s, right_s in CASES:
        n = int(source_s * rate)
        span = extend15.extend_span(n, n // hop, left_s, right_s)
        windows = extend15.plan_windows15(span)
        new = span.left_frames + span.right_frames
        sampled = sum(max(inputs.MIN_FRAMES, w.n_frames) for w in windows)
        context = min(w.n_frames - w.new_left - w.new_right for w in windows)
        print(
            f"{source_s:8g}  {left_s:6g}  {right_s:7g}  {span.n_samples / rate:8.2f}  {len(windows):7d}  "
            f"{sampled / new:11.2f}  {context / inputs.FRAMES_PER_S:13.1f}"
        )


def time_one(args: argparse.Namespace) -> None:
    from songflow.families import load_pipeline
    from songflow.requests_v15 import Extend15, Params15

    pipe = load_pipeline(args.checkpoint, device=args.device)
    params = Params15(seeds=(0,), timesteps=tuple(args.timesteps or ()))
    request = Extend15(source_path=args.source, left_s=args.left_s, right_s=args.right_s, params=params)
    t0 = time.perf_counter()
    result = pipe.generate(request)
    wall = time.perf_counter() - t0
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings_s.items())
    print(
        f"extend {args.left_s:g} + source + {args.right_s:g} s: "
        f"{result.audio.shape[-1]} samples in {wall:.2f} s"
    )
    print(f"  {timings}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint")
    parser.add_argument("--source")
    parser.add_argument("--left-s", type=float, default=0.0)
    parser.add_argument("--right-s", type=float, default=30.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--timesteps", type=float, nargs="*")
    args = parser.parse_args()
    plan_table()
    if args.checkpoint:
        if not args.source:
            parser.error("--checkpoint needs --source (the song to extend)")
        time_one(args)


if __name__ == "__main__":
    main()
