"""The inference pipeline: components + ``generate(request) -> Result``.

Stages (each timed): 1. encode the tags with the text encoder (and the ERG-tag null states),
2. tokenize the lyrics, 3. encode the DiT conditions once, 4. build the task's plan and run the one
sampling loop, 5. decode latents to audio. The pipeline writes no files and parses no seed strings; the
interfaces do that.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from songflow.audio.geometry import OFFICIAL_GEOMETRY, LatentGeometry
from songflow.errors import ConfigError, SongflowError
from songflow.requests import Request, Text2Music
from songflow.sampling.noise import make_generators, parse_seeds, randn_per_sample
from songflow.tasks.plan import ConditionSet, ErgFlags, ErgLayers, TextInputs, encode_conditions, run_plan
from songflow.tasks.setup import TaskContext
from songflow.tasks.text2music import build_text2music_plan

ProgressFn = Callable[[int, int], None]


@dataclass
class Result:
    """Output of one request.

    audio [B, 2, N] float32 on the CPU at ``sample_rate_hz``; latents [B, 8, 16, L]; ``request`` is the
    resolved request (seeds filled in) that regenerates exactly this output; ``timings_s`` per stage.
    """

    audio: Tensor
    sample_rate_hz: int
    latents: Tensor
    request: Request
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.request.params.seeds or ()


class Placement:
    """Where modules live. With ``offload`` they stay on the CPU and visit ``device`` one stage at a time."""

    def __init__(self, device: torch.device, offload: bool = False):
        self.device = device
        self.offload = offload and device.type != "cpu"

    @contextlib.contextmanager
    def on_device(self, module: nn.Module | None) -> Iterator[None]:
        if module is None or not self.offload:
            yield
            return
        module.to(self.device)
        try:
            yield
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


class Pipeline:
    """ACE-Step inference over loaded components.

    Args:
        transformer: the DiT (``ACEStepTransformer``), in eval mode.
        codec: ``MusicCodec`` (DCAE + vocoder).
        text_encoder: a ``TextEncoder`` (``encode(prompts, query_scale=...) -> (states, mask)``).
        lyric_tokenizer: ``LyricTokenizer`` (``tokenize_lyrics(text) -> ids``).
        output_sample_rate_hz: rate of ``Result.audio`` (48000 as the reference writes; 44100 skips
            resampling).
    """

    def __init__(
        self,
        transformer: nn.Module,
        codec: nn.Module,
        text_encoder,
        lyric_tokenizer,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
        geometry: LatentGeometry = OFFICIAL_GEOMETRY,
        output_sample_rate_hz: int = 48000,
        batch_passes: bool = True,
    ):
        self.transformer = transformer.eval()
        self.codec = codec.eval()
        self.codec.vocoder.fold_weight_norm()  # inference only: weight = g * v / |v| computed once
        self.text_encoder = text_encoder
        self.lyric_tokenizer = lyric_tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.placement = Placement(self.device, offload)
        self.geometry = geometry
        self.output_sample_rate_hz = output_sample_rate_hz
        self.batch_passes = batch_passes
        self.erg_layers = ErgLayers()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "float32",
        vocab_path: str | Path | None = None,
        offload: bool = False,
        **kwargs,
    ) -> Pipeline:
        """Load a checkpoint folder in the official four-folder layout (see ``songflow.weights``)."""
        from songflow.hub import find_lyric_vocab
        from songflow.text.lyric_tokenizer import LyricTokenizer
        from songflow.weights import load_checkpoint, resolve_device, resolve_dtype

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        load_device = torch.device("cpu") if offload else dev
        ckpt = load_checkpoint(path, dtype=dt, device=load_device)
        vocab = Path(vocab_path) if vocab_path else find_lyric_vocab(Path(path))
        if vocab is None:
            raise SongflowError(
                f"no lyric vocabulary (vocab.json) found in {path}; run `songflow download --dir {path}` "
                "to fetch it, or pass --vocab PATH"
            )
        return cls(
            ckpt.transformer,
            ckpt.codec,
            ckpt.text_encoder,
            LyricTokenizer(vocab),
            device=dev,
            dtype=dt,
            offload=offload,
            **kwargs,
        )

    # -- stages --------------------------------------------------------------------------------------

    def check_request(self, request: Request) -> None:
        if not isinstance(request, Text2Music):
            raise ConfigError(f"task {request.task!r} is not supported by this pipeline yet")
        max_s = self.geometry.max_duration_s
        if request.duration_s > max_s:
            raise ConfigError(
                f"duration_s {request.duration_s} is longer than the model's maximum of {max_s} s"
            )
        if self.geometry.frames_from_seconds(request.duration_s) < 1:
            min_s = self.geometry.seconds_from_frames(1)
            raise ConfigError(f"duration_s {request.duration_s} is too short; the minimum is {min_s:.3f} s")

    def encode_text(self, tags: str, batch: int, with_erg: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """UMT5 states [B, Lt, Dt], mask [B, Lt] and (if ``with_erg``) the ERG-tag null states."""
        enc = self.text_encoder
        states, mask = enc.encode([tags])
        erg = None
        if with_erg:
            n_layers = getattr(enc, "num_layers", None) or 10**6
            erg, _ = enc.encode(
                [tags], query_scale=self.erg_layers.scale_for(self.erg_layers.text_blocks, n_layers)
            )
        rep = lambda t: None if t is None else t.to(self.device).repeat(batch, *([1] * (t.dim() - 1)))  # noqa: E731
        return rep(states).to(self.dtype), rep(mask).long(), None if erg is None else rep(erg).to(self.dtype)

    def tokenize_lyrics(self, lyrics: str, batch: int) -> tuple[Tensor, Tensor]:
        """Lyric ids and mask [B, Ll] (ids [0], mask [0] for empty lyrics, as the reference)."""
        if lyrics.strip():
            ids = self.lyric_tokenizer.tokenize_lyrics(lyrics)
            mask = [1] * len(ids)
        else:
            ids, mask = [0], [0]
        as_t = lambda v: torch.tensor([v], dtype=torch.long, device=self.device).repeat(batch, 1)  # noqa: E731
        return as_t(ids), as_t(mask)

    def encode_conditions(self, request: Text2Music, batch: int) -> ConditionSet:
        p = request.params
        erg = ErgFlags(p.use_erg_tag, p.use_erg_lyric, p.use_erg_diffusion)
        guided = p.guidance_scale not in (0.0, 1.0)
        need_text_only = guided and p.guidance_scale_text > 1.0 and p.guidance_scale_lyric > 1.0
        with self.placement.on_device(getattr(self.text_encoder, "module", None)):
            text, text_mask, text_erg = self.encode_text(
                request.tags, batch, with_erg=guided and erg.use_erg_tag and erg.use_erg_lyric
            )
        ids, lyric_mask = self.tokenize_lyrics(request.lyrics, batch)
        speaker = torch.zeros(
            batch, self.transformer.config.speaker_embedding_dim, device=self.device, dtype=self.dtype
        )
        inputs = TextInputs(text, text_mask, speaker, ids, lyric_mask, text_erg)
        with self.placement.on_device(self.transformer), torch.inference_mode():
            return encode_conditions(
                self.transformer,
                inputs,
                erg=erg,
                need_uncond=guided,
                need_text_only=need_text_only,
                layers=self.erg_layers,
                n_lyric_blocks=self.transformer.lyric_config.num_blocks,
                n_dit_blocks=self.transformer.config.num_layers,
            )

    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B,8,16,L] -> audio [B, 2, N] float32 on the CPU at ``output_sample_rate_hz``."""
        with self.placement.on_device(self.codec), torch.inference_mode():
            audio = self.codec.decode(
                latents.to(self.device, self.dtype), sample_rate_hz=self.output_sample_rate_hz
            )
        return audio.float().cpu()

    # -- entry point ---------------------------------------------------------------------------------

    def generate(self, request: Request, *, progress: ProgressFn | None = None) -> Result:
        """Run one request; see :class:`Result`."""
        self.check_request(request)
        p = request.params
        seeds = tuple(parse_seeds(list(p.seeds) if p.seeds else None, p.batch_size))
        request = replace(request, params=replace(p, seeds=seeds))
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        conds = self.encode_conditions(request, p.batch_size)
        timings["preprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        n_frames = self.geometry.frames_from_seconds(request.duration_s)
        generators = make_generators(list(seeds))
        noise = randn_per_sample((8, 16, n_frames), generators).to(self.device)
        ctx = TaskContext(
            self.transformer,
            conds,
            request.params,
            generators,
            model_dtype=self.dtype,
            batch_passes=self.batch_passes,
            oss_dtype=self.dtype,
        )
        plan = build_text2music_plan(ctx, noise)
        n_steps = len(plan.sigmas) - 1
        callback = (lambda i, sigma, x: progress(i + 1, n_steps)) if progress else None
        with self.placement.on_device(self.transformer), torch.inference_mode():
            latents = run_plan(plan, callback=callback)
        timings["diffusion"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        audio = self.decode(latents)
        timings["decode"] = time.perf_counter() - t0
        if not torch.isfinite(audio).all():
            raise SongflowError(
                "the model produced non-finite audio (NaN/inf); try float32 or other settings"
            )
        return Result(audio, self.output_sample_rate_hz, latents.float().cpu(), request, timings)
