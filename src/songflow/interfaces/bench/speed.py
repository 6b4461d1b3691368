"""``songflow bench``: speed and memory of generation (a benchmark, not a test).

Prints seconds per DiT forward (conditional pass, and the batched guided pass), seconds per sampling
step, end-to-end seconds, real-time factor (audio seconds per wall second) and peak memory (RSS on the
CPU, ``torch.cuda.max_memory_allocated`` on CUDA). ``--config tiny|full`` builds the architecture with
random weights, the text encoder and lyric tokenizer replaced by stand-ins that return random states/ids
of realistic size (their cost is a few ms per song); ``songflow-tiny`` or a checkpoint folder loads real
weights with their own text encoder and tokenizer.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from songflow.errors import ConfigError
from songflow.tasks.plan import stack_conditions


@dataclass
class RandomTextEncoder:
    """Stand-in text encoder: random states [1, n_tokens, dim] and an all-ones mask."""

    dim: int
    n_tokens: int = 48
    num_layers: int = 12

    def encode(self, prompts: list[str], *, query_scale=None) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(0 if query_scale is None else 1)
        states = torch.randn(len(prompts), self.n_tokens, self.dim, generator=g)
        return states, torch.ones(len(prompts), self.n_tokens, dtype=torch.long)


@dataclass
class RandomLyricTokenizer:
    """Stand-in lyric tokenizer: ``n_tokens`` random ids (a typical 3-minute song has a few hundred)."""

    vocab_size: int
    n_tokens: int = 300

    def tokenize_lyrics(self, lyrics: str) -> list[int]:
        g = torch.Generator().manual_seed(0)
        return torch.randint(3, self.vocab_size, (self.n_tokens,), generator=g).tolist()


RANDOM_CONFIGS = ("tiny", "full")
"""``--config`` values that build random weights; anything else names a checkpoint."""


def _build_components(config: str, device: torch.device, dtype: torch.dtype):
    from songflow.models.acestep_v1.codec import MusicCodec
    from songflow.models.acestep_v1.dcae import DCAE, DCAEConfig
    from songflow.models.acestep_v1.transformer import ACEStepTransformer, TransformerConfig
    from songflow.models.acestep_v1.vocoder import Vocoder, VocoderConfig

    if config == "tiny":
        from songflow.checkpoint.random_checkpoint import tiny_configs

        tcfg, lcfg, dcfg, vcfg = tiny_configs()
    elif config == "full":
        tcfg, dcfg, vcfg, lcfg = TransformerConfig(), DCAEConfig(), VocoderConfig(), None
    else:
        raise ConfigError(f"--config must be 'tiny' or 'full', got {config!r}")
    # built on the meta device and materialised in the target dtype: no float32 copy of a 3.5B model
    with torch.device("meta"):
        transformer = ACEStepTransformer(tcfg, lcfg)
        codec = MusicCodec(DCAE(dcfg), Vocoder(vcfg))
    modules = []
    for module in (transformer, codec):
        module = module.to(dtype).to_empty(device=device).eval()
        _random_init(module)
        modules.append(module)
    return tuple(modules)


@torch.no_grad()
def _random_init(module: torch.nn.Module) -> None:
    """Weights N(0, 0.02), norm/gain vectors 1, other vectors 0: finite activations at any depth."""
    g = torch.Generator(device=next(module.parameters()).device).manual_seed(0)
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            p.normal_(0.0, 0.02, generator=g)
        elif name.endswith(("weight", "weight_g", "gamma")):
            p.fill_(1.0)
        else:
            p.zero_()
    for b in module.buffers():  # the vocoder's mel buffers; decoding does not read them
        if b.is_floating_point():
            b.copy_(torch.rand_like(b))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bench_pipeline(args, device: torch.device, dtype: torch.dtype):
    """(pipeline, DiT) for ``--config``: random weights with stand-in encoders, or a checkpoint's family."""
    if args.config not in RANDOM_CONFIGS:
        from songflow.families import load_pipeline

        pipe = load_pipeline(args.config, device=str(device), dtype=args.dtype, offload=args.offload)
        return pipe, pipe.transformer
    from songflow.families.acestep_v1 import build_pipeline

    transformer, codec = _build_components(args.config, device, dtype)
    cfg = transformer.config
    pipe = build_pipeline(
        transformer,
        codec,
        RandomTextEncoder(cfg.text_embedding_dim),
        RandomLyricTokenizer(cfg.lyric_encoder_vocab_size),
        device=device,
        dtype=dtype,
        offload=args.offload,
    )
    return pipe, transformer


def run_bench(args) -> dict[str, float]:
    from songflow.checkpoint.device import resolve_device, resolve_dtype
    from songflow.requests import GenerationParams, Text2Music

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    pipe, transformer = _bench_pipeline(args, device, dtype)
    request = Text2Music(
        tags="pop, 120 bpm, piano, drums, C major, energetic",
        lyrics="[verse]\nwe count the beats until the morning light",
        duration_s=args.duration,
        params=GenerationParams(steps=args.steps, seeds=(0,) * args.batch_size, batch_size=args.batch_size),
    )
    n_frames = pipe.geometry.frames_from_seconds(args.duration)
    conds = pipe.encode_conditions(request.tags, request.lyrics, request.params)
    x = torch.randn(args.batch_size, 8, 16, n_frames, device=device, dtype=dtype)
    sigma = torch.full((args.batch_size,), 0.5, device=device, dtype=dtype)

    def time_forward(batch_mult: int) -> float:
        xb, sb = x.repeat(batch_mult, 1, 1, 1), sigma.repeat(batch_mult)
        cond = stack_conditions([conds.cond] * batch_mult, conds.cond.mask)
        with torch.inference_mode():
            transformer(xb, sb, cond)  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                transformer(xb, sb, cond)
            _sync(device)
        return (time.perf_counter() - t0) / args.repeats

    fwd_s = time_forward(1)
    fwd_guided_s = time_forward(2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    result = pipe.generate(request)
    _sync(device)
    e2e_s = time.perf_counter() - t0
    audio_s = pipe.geometry.seconds_from_frames(n_frames) * args.batch_size
    figures = {
        "dit_forward_s": fwd_s,
        "dit_forward_guided_batch_s": fwd_guided_s,
        "step_s": result.timings_s["diffusion"] / args.steps,
        "preprocess_s": result.timings_s["preprocess"],
        "diffusion_s": result.timings_s["diffusion"],
        "decode_s": result.timings_s["decode"],
        "end_to_end_s": e2e_s,
        "real_time_factor": audio_s / e2e_s,
        "peak_memory_mb": _peak_memory_mb(device),
    }
    n_params = sum(p.numel() for p in transformer.parameters()) / 1e6
    print(
        f"config={args.config} ({n_params:.1f}M DiT params) device={device} dtype={str(dtype)[6:]} "
        f"duration={args.duration}s frames={n_frames} steps={args.steps} batch={args.batch_size}"
    )
    for key, value in figures.items():
        print(f"  {key:28s} {value:10.4f}")
    sys.stdout.flush()
    return figures
