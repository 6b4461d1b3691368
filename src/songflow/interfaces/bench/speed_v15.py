"""``songflow bench --config <ACE-Step 1.5 folder>``: load time, per-step DiT time, VAE decode, end to end.

The figures match the shapes of the side-by-side official benchmark (``scripts/bench_v15_side_by_side.sh``):
the condition encoder sees 128 caption tokens and 512 lyric tokens; one DiT step is timed after a warm-up
step, with the cross-attention keys/values computed once per run as both implementations do; the VAE
decode is the tiled one (256-frame windows, 64 overlap); end to end is ``Pipeline15.generate`` of a
text2music request (8 turbo steps). Peak RSS comes from ``getrusage`` (run one configuration per process
for separate peaks). One JSON line per run goes to stdout (and ``--json-out``).
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from songflow.requests_v15 import Params15, Text2Music15

TEXT_TOKENS = 128
LYRIC_TOKENS = 512


def _rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 3)


def _load(root: Path, dtype: str, res: dict[str, Any]):
    import diffusers.models.autoencoders.autoencoder_oobleck  # noqa: F401 (import time is not load time)
    import transformers.models.qwen3.modeling_qwen3  # noqa: F401

    from songflow.checkpoint import acestep_v15 as ck
    from songflow.checkpoint.device import resolve_dtype
    from songflow.pipeline import Placement
    from songflow.pipeline_v15 import Components15, Pipeline15

    layout = ck.validate_v15(root)
    dt = resolve_dtype(dtype, torch.device("cpu"))
    dit, res["load_dit_s"] = _timed(lambda: ck.load_v15_dit(layout.dit_dir, dtype=dt, device="cpu"))
    silence = ck.load_silence_latent(layout.dit_dir)
    res["rss_after_dit_gib"] = _rss_gib()
    vae, res["load_vae_s"] = _timed(
        lambda: ck.load_v15_vae(layout.vae_dir, dtype=torch.float32, device="cpu")
    )
    text, res["load_text_s"] = _timed(
        lambda: ck.load_v15_text_encoder(layout.text_encoder_dir, dtype=dt, device="cpu")
    )
    res["peak_rss_after_load_gib"] = _rss_gib()
    pipe = Pipeline15(Components15(dit, vae, text, silence), Placement("cpu", dt), variant=dit.config.variant)
    return pipe


def _bench_steps(pipe: Any, n_frames: int, n_steps: int, res: dict[str, Any]) -> None:
    """Condition encoder + ``n_steps`` DiT steps after one warm-up, at the official benchmark's shapes."""
    dit, dtype = pipe.dit, pipe.dtype
    g = torch.Generator().manual_seed(0)
    text_dim = dit.config.text_hidden_dim
    text = torch.randn(1, TEXT_TOKENS, text_dim, generator=g).to(dtype)
    lyrics = torch.randn(1, LYRIC_TOKENS, text_dim, generator=g).to(dtype)
    refs = pipe.silence_latent[:, :750]
    total = max(128, n_frames)
    src = pipe.silence_latent[:, :total]
    ones = torch.ones(1, TEXT_TOKENS, dtype=torch.long), torch.ones(1, LYRIC_TOKENS, dtype=torch.long)

    def condition():
        enc, _ = dit.encode_conditions(text, ones[0], lyrics, ones[1], refs, torch.zeros(1, dtype=torch.long))
        ctx = pipe.context(src, torch.ones_like(src), torch.zeros(1))
        return enc, ctx

    (enc, ctx), res["condition_s"] = _timed(condition)
    res["encoder_tokens"] = int(enc.shape[1])
    x = torch.randn(1, total, dit.config.audio_acoustic_hidden_dim, generator=g).to(dtype)
    times = []
    cross = None  # computed in the warm-up step, as the official cache is filled there
    for i in range(1 + n_steps):
        t = torch.full((1,), (1.0, 0.9545454545454546, 0.9, 0.8333333333333334)[i % 4], dtype=dtype)
        t0 = time.perf_counter()
        if i == 0:
            cross = dit.precompute_cross(enc)
        v = dit.velocity(x, t, ctx, None, cross=cross)
        times.append(round(time.perf_counter() - t0, 3))
    res["step_v_finite"] = bool(torch.isfinite(v).all())
    res["step_first_s"], res["step_s"] = times[0], times[1:]
    res["step_median_s"] = round(statistics.median(times[1:]), 3)
    res["peak_rss_after_steps_gib"] = _rss_gib()


def _bench_e2e(pipe: Any, n_frames: int, res: dict[str, Any]) -> None:
    request = Text2Music15(
        caption="An energetic synth-pop song with bright pads, driving drums and a catchy vocal hook.",
        lyrics="[verse]\nWe ride the neon light tonight, hearts beating in the city\n" * 8,
        bpm=120,
        key_scale="C major",
        time_signature="4",
        duration_s=n_frames / 25,
        params=Params15(seeds=(42,)),
    )
    result, res["e2e_s"] = _timed(lambda: pipe.generate(request))
    res["e2e_timings_s"] = {k: round(v, 3) for k, v in result.timings_s.items()}
    res["e2e_finite"] = bool(torch.isfinite(result.audio).all())


def run_bench_v15(args: Any) -> dict[str, Any]:
    """Run the 1.5 benchmark of ``args.config`` (a 1.5 checkpoint folder); prints and returns the figures."""
    torch.set_num_threads(args.threads) if getattr(args, "threads", None) else None
    n_frames = int(args.duration * 25)
    res: dict[str, Any] = {
        "impl": "songflow",
        "dtype": args.dtype,
        "frames": n_frames,
        "audio_s": args.duration,
    }
    res["threads"] = torch.get_num_threads()
    t0 = time.perf_counter()
    with torch.inference_mode():
        pipe = _load(Path(args.config), args.dtype, res)
        if not getattr(args, "no_steps", False):
            _bench_steps(pipe, n_frames, args.repeats, res)
        if getattr(args, "vae", True):
            latents = torch.randn(
                1, n_frames, pipe.vae.latent_channels, generator=torch.Generator().manual_seed(3)
            )
            _, res["vae_decode_s"] = _timed(lambda: pipe.decode(latents))
            res["peak_rss_after_vae_gib"] = _rss_gib()
        if getattr(args, "e2e", True):
            _bench_e2e(pipe, n_frames, res)
    res["process_s"] = round(time.perf_counter() - t0, 3)
    res["peak_rss_gib"] = _rss_gib()
    line = json.dumps(res)
    print(line, flush=True)
    if getattr(args, "json_out", None):
        with open(args.json_out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return res
