"""Figures for 1.5 FlowEdit (task "edit"; not run in CI), on tiny random turbo and base checkpoints (or
``--checkpoint DIR``, one variant).

    python scripts/v15_edit_figures.py [--checkpoint DIR] [--device cpu] [--seconds 10]

Per variant and edit preset (``only_lyrics`` 0.6-1.0, ``remix`` 0.2-0.4, and 0-1): the edit steps, the DiT
rows evaluated (guided runs double them) against a text2music run of the same schedule, the diffusion
seconds, the largest ``|edited - source|`` latent gap for identical prompts (0 = the source exactly) and for
another caption. Prints one JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

PRESETS = {"only_lyrics": (0.6, 1.0), "remix": (0.2, 0.4), "full": (0.0, 1.0)}
SR = 48000


def _source(folder: Path, seconds: float) -> str:
    t = np.arange(int(seconds * SR)) / SR
    wav = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 277 * t)], 1)
    path = folder / "source.wav"
    sf.write(str(path), wav.astype(np.float32), SR, subtype="FLOAT")
    return str(path)


def _counting(pipe) -> list[int]:
    rows: list[int] = []
    velocity = pipe.dit.velocity

    def counted(x, *args, **kwargs):
        rows.append(x.shape[0])
        return velocity(x, *args, **kwargs)

    pipe.dit.velocity = counted
    return rows


def _gap(result, pipe, source: str, seed: int) -> float:
    from songflow.tasks.acestep_v15 import inputs

    pipe._vae_calls = {}
    src = pipe.encode_source(source, (seed,))
    src = inputs.pad_with_silence(src, pipe.silence_latent, inputs.generated_frames(src.shape[1]))
    return float((result.latents - src.float().cpu()).abs().max())


def figures(pipe, source: str) -> dict:
    from songflow.requests_v15 import Edit15, Params15, Text2Music15

    rows = _counting(pipe)
    params = Params15(seeds=(3,))
    song = {"caption": "warm synth pop", "lyrics": "[verse]\nla la"}
    base = pipe.generate(Text2Music15(**song, duration_s=5.0, params=params))
    out: dict = {"variant": pipe.variant, "text2music_rows": sum(rows), "steps": base.request.params.steps}
    for name, (lo, hi) in PRESETS.items():
        rows.clear()
        kw = {"source_path": source, "n_min_frac": lo, "n_max_frac": hi, "params": params, **song}
        same = pipe.generate(Edit15(**kw, target_caption=song["caption"]))
        same_rows = sum(rows)
        t0 = time.perf_counter()
        other = pipe.generate(Edit15(**kw, target_caption="dark heavy rock"))
        out[name] = {
            "rows": same_rows,
            "diffusion_s": round(other.timings_s["diffusion"], 3),
            "total_s": round(time.perf_counter() - t0, 3),
            "identical_prompts_max_gap": _gap(same, pipe, source, 3),
            "other_caption_max_gap": round(_gap(other, pipe, source, 3), 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint
    from songflow.families import load_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = _source(folder, args.seconds)
        roots = [args.checkpoint] if args.checkpoint else [
            build_random_v15_checkpoint(folder / v / "ckpt", variant=v, seed=0) for v in ("turbo", "base")
        ]  # fmt: skip
        report = [figures(load_pipeline(r, device=args.device), source) for r in roots]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
