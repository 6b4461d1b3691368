"""The inference pipeline: components + ``generate(request) -> Result``.

Stages (each timed): 1. encode the tags with the text encoder (and the ERG-tag null states),
2. tokenize the lyrics, 3. encode the DiT conditions once, 4. build the task's plan and run the one
sampling loop, 5. decode latents to audio. The pipeline writes no files and parses no seed strings; the
interfaces do that.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from songflow.audio.geometry import OFFICIAL_GEOMETRY, LatentGeometry
from songflow.errors import AudioError, ConfigError, SongflowError
from songflow.models.acestep_v1.transformer import Conditions
from songflow.requests import (
    MAX_BATCH,
    AudioToAudio,
    Edit,
    Extend,
    GenerationParams,
    Repaint,
    Request,
    Retake,
    Text2Music,
)
from songflow.sampling.noise import make_generators, parse_seeds, randn_per_sample, trig_mix
from songflow.tasks.audio2audio import build_audio2audio_plan
from songflow.tasks.edit import encode_edit_conditions, run_edit
from songflow.tasks.extend import run_extend
from songflow.tasks.plan import ConditionSet, ErgFlags, ErgLayers, TextInputs, encode_conditions, run_plan
from songflow.tasks.repaint import build_repaint_plan
from songflow.tasks.retake import build_retake_plan
from songflow.tasks.setup import TaskContext, sigmas_for
from songflow.tasks.text2music import build_text2music_plan

ProgressFn = Callable[[int, int], None]
# source audio outside this range is refused rather than resampled to 44.1 kHz
MIN_SOURCE_RATE_HZ = 8000
MAX_SOURCE_RATE_HZ = 384000


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
        merge_loras: bool = True,
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
        self._loras: tuple[tuple[str, float], ...] = ()
        self.merge_loras = merge_loras

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
        """Load a checkpoint folder in the official four-folder layout (``songflow.checkpoint``)."""
        from songflow.checkpoint.hub import find_lyric_vocab
        from songflow.checkpoint.weights import load_checkpoint, resolve_device, resolve_dtype
        from songflow.text.lyric_tokenizer import LyricTokenizer

        path = Path(path).expanduser()
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
        if request.task not in _RUNNERS:
            raise ConfigError(f"task {request.task!r} is not supported; choose one of {sorted(_RUNNERS)}")
        duration = getattr(request, "duration_s", None)
        if duration is not None:
            max_s = self.geometry.max_duration_s
            if duration > max_s:
                raise ConfigError(f"duration_s {duration} is longer than the model's maximum of {max_s} s")
            if self.geometry.frames_from_seconds(duration) < 1:
                min_s = self.geometry.seconds_from_frames(1)
                raise ConfigError(f"duration_s {duration} is too short; the minimum is {min_s:.3f} s")

    def load_source(self, path: str, *, what: str, allow_long: bool = False) -> Tensor:
        """Read an audio file and encode it: latents [1, 8, 16, L] on the pipeline's device."""
        from songflow.audio.io import load_audio, to_stereo

        wav, sr = load_audio(path)
        if not MIN_SOURCE_RATE_HZ <= sr <= MAX_SOURCE_RATE_HZ:
            raise AudioError(
                f"the {what} {path} has a sample rate of {sr} Hz; give audio between "
                f"{MIN_SOURCE_RATE_HZ} and {MAX_SOURCE_RATE_HZ} Hz (other rates are resampled to the model's "
                f"{self.geometry.sample_rate_hz} Hz automatically)"
            )
        wav = to_stereo(wav)
        if wav.abs().max() < 1e-4:
            raise AudioError(f"the {what} {path} is silent; give a recording with audible sound")
        n_frames = self.codec.latent_frames_for(wav.shape[-1], sr)
        if n_frames < 1:
            raise AudioError(f"the {what} {path} is too short ({wav.shape[-1] / sr:.3f} s)")
        if not allow_long and n_frames > self.geometry.max_frames:
            raise AudioError(
                f"the {what} {path} lasts {wav.shape[-1] / sr:.1f} s; this task handles up to "
                f"{self.geometry.max_duration_s:.0f} s (cut it, or use extend to grow a song past that)"
            )
        with self.placement.on_device(self.codec), torch.inference_mode():
            return self.codec.encode(wav[None].to(self.device, self.dtype), sample_rate_hz=sr).float()

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

    def text_inputs(self, tags: str, lyrics: str, batch: int, *, with_erg_text: bool) -> TextInputs:
        """Encoder inputs for one prompt, repeated to ``batch`` (speaker embedding: zeros, as released)."""
        with self.placement.on_device(getattr(self.text_encoder, "module", None)):
            text, text_mask, text_erg = self.encode_text(tags, batch, with_erg=with_erg_text)
        ids, lyric_mask = self.tokenize_lyrics(lyrics, batch)
        speaker = torch.zeros(
            batch, self.transformer.config.speaker_embedding_dim, device=self.device, dtype=self.dtype
        )
        return TextInputs(text, text_mask, speaker, ids, lyric_mask, text_erg)

    def encode_conditions(self, tags: str, lyrics: str, params: GenerationParams) -> ConditionSet:
        """Conditional, null and (double-condition) text-only conditions for one prompt."""
        p = params
        erg = ErgFlags(p.use_erg_tag, p.use_erg_lyric, p.use_erg_diffusion)
        guided = p.guidance_scale not in (0.0, 1.0)
        need_text_only = guided and p.guidance_scale_text > 1.0 and p.guidance_scale_lyric > 1.0
        inputs = self.text_inputs(
            tags, lyrics, p.batch_size, with_erg_text=guided and erg.use_erg_tag and erg.use_erg_lyric
        )
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

    def resolve_seeds(self, request: Request) -> Request:
        """Fill in random seeds (and retake seeds) so the returned request regenerates the output."""
        p = request.params
        seeds = tuple(parse_seeds(list(p.seeds) if p.seeds else None, p.batch_size))
        request = replace(request, params=replace(p, seeds=seeds))
        if hasattr(request, "retake_seeds"):
            retake = request.retake_seeds
            request = replace(
                request, retake_seeds=tuple(parse_seeds(list(retake) if retake else None, p.batch_size))
            )
        return request

    def generate(self, request: Request, *, progress: ProgressFn | None = None) -> Result:
        """Run one request of any task; see :class:`Result`."""
        self.check_request(request)
        request = self.resolve_seeds(request)
        p = request.params
        timings: dict[str, float] = {}

        # 1. conditions (tags, lyrics) and the source audio, encoded once
        t0 = time.perf_counter()
        self.apply_loras(request.loras)
        conds = self.encode_conditions(request.tags, request.lyrics, p)
        retake = getattr(request, "retake_seeds", None)
        ctx = self._task_context(
            conds, p, make_generators(list(p.seeds)), make_generators(list(retake)) if retake else None
        )
        timings["preprocess"] = time.perf_counter() - t0

        # 2. the task's plan(s) over the one sampling loop
        t0 = time.perf_counter()
        with self.placement.on_device(self.transformer), torch.inference_mode():
            latents = _RUNNERS[request.task](self, request, ctx, progress)
        timings["diffusion"] = time.perf_counter() - t0

        # 3. back to audio
        audio = self._to_audio(latents, timings)
        return Result(audio, self.output_sample_rate_hz, latents.float().cpu(), request, timings)

    def generate_many(
        self, requests: Sequence[Request], *, progress: ProgressFn | None = None
    ) -> list[Result]:
        """Run several compatible requests as one batch: one result per request, each equal (to float
        rounding) to ``generate(request)`` with the same seeds.

        Requests are compatible when :func:`batch_key` gives them the same key: text2music and retake
        with one duration, one set of generation settings (seeds and ``batch_size`` may differ) and one
        LoRA set; tags, lyrics, seeds and retake variance may all differ. Each request's conditions are
        encoded on their own and padded (mask 0) to a common length, so no row sees another's prompt;
        every row draws its noise from its own generators. ``progress`` reports the batch's steps.
        Raises :class:`ConfigError` for incompatible requests or more than ``MAX_BATCH`` rows in all.
        """
        if not requests:
            return []
        if len(requests) == 1:
            return [self.generate(requests[0], progress=progress)]
        keys = {batch_key(r) for r in requests}
        if None in keys or len(keys) != 1:
            raise ConfigError(
                "generate_many needs compatible requests (text2music/retake with one duration, the same "
                "generation settings and LoRAs; only tags, lyrics, seeds and retake settings may differ)"
            )
        for request in requests:
            self.check_request(request)
        requests = [self.resolve_seeds(r) for r in requests]
        rows = [r.params.batch_size for r in requests]
        if sum(rows) > MAX_BATCH:
            raise ConfigError(f"a batch holds at most {MAX_BATCH} items; these requests have {sum(rows)}")
        first = requests[0]
        seeds = tuple(s for r in requests for s in r.params.seeds)
        params = replace(first.params, seeds=seeds, batch_size=len(seeds))
        n_frames = self.geometry.frames_from_seconds(first.duration_s)
        timings: dict[str, float] = {}

        # 1. each request's conditions and initial noise, then one padded batch
        t0 = time.perf_counter()
        self.apply_loras(first.loras)
        conds = _concat_condition_sets([self.encode_conditions(r.tags, r.lyrics, r.params) for r in requests])
        generators: list[torch.Generator] = []
        initial = []
        for r in requests:
            gens = make_generators(list(r.params.seeds))
            x = self.noise(gens, n_frames)
            if isinstance(r, Retake):  # as build_retake_plan: mix in the retake seeds' noise
                retake_noise = self.noise(make_generators(list(r.retake_seeds)), n_frames)
                x = trig_mix(x, retake_noise, r.variance_frac)
            generators += gens
            initial.append(x)
        ctx = self._task_context(conds, params, generators)
        timings["preprocess"] = time.perf_counter() - t0

        # 2. one sampling run for the whole batch
        t0 = time.perf_counter()
        with self.placement.on_device(self.transformer), torch.inference_mode():
            plan = build_text2music_plan(ctx, torch.cat(initial))
            latents = run_plan(plan, callback=_progress_callback(progress, len(plan.sigmas) - 1))
        timings["diffusion"] = time.perf_counter() - t0

        # 3. back to audio, split per request
        audio = self._to_audio(latents, timings)
        latents = latents.float().cpu()
        results, start = [], 0
        for r, n in zip(requests, rows, strict=True):
            part = slice(start, start + n)
            results.append(Result(audio[part], self.output_sample_rate_hz, latents[part], r, dict(timings)))
            start += n
        return results

    def _to_audio(self, latents: Tensor, timings: dict[str, float]) -> Tensor:
        """Decode ``latents`` (timed as ``timings["decode"]``); refuses non-finite audio."""
        t0 = time.perf_counter()
        audio = self.decode(latents)
        timings["decode"] = time.perf_counter() - t0
        if not torch.isfinite(audio).all():
            raise SongflowError(
                "the model produced non-finite audio (NaN/inf); try float32 or other settings"
            )
        return audio

    def _task_context(
        self,
        conds: ConditionSet,
        params: GenerationParams,
        generators: list[torch.Generator],
        retake_generators: list[torch.Generator] | None = None,
    ) -> TaskContext:
        """What a task plan needs from this pipeline: the DiT, the conditions, settings and per-item RNGs."""
        return TaskContext(
            self.transformer,
            conds,
            params,
            generators,
            retake_generators,
            model_dtype=self.dtype,
            batch_passes=self.batch_passes,
            oss_dtype=self.dtype,
        )

    def noise(self, generators: list[torch.Generator], n_frames: int) -> Tensor:
        """One N(0,1) latent draw per batch item [B, 8, 16, n_frames], CPU float32 -> device."""
        return randn_per_sample((8, 16, n_frames), generators).to(self.device)

    def apply_loras(self, loras) -> None:
        """Make the transformer carry exactly ``loras`` (merged into the weights for speed by default;
        unmerging restores the base weights exactly). Unchanged adapters are not reloaded."""
        wanted = tuple((ref.path, float(ref.weight)) for ref in loras)
        if wanted == self._loras:
            return
        from songflow.checkpoint.lora import LoraSpec, set_loras

        specs = [LoraSpec(Path(path).expanduser(), weight) for path, weight in wanted]
        with self.placement.on_device(self.transformer):
            set_loras(self.transformer, specs, merged=self.merge_loras)
        self._loras = wanted


# tasks whose requests generate_many can run together (retake is text2music from mixed noise)
_BATCHABLE_TASKS = {"text2music": "text2music", "retake": "text2music"}


def batch_key(request: Request) -> Hashable | None:
    """Requests with equal keys can run as one :meth:`Pipeline.generate_many` batch; None: alone only.

    The key holds what one sampling run shares: the task family, the duration, the generation settings
    (minus seeds and ``batch_size``) and the LoRA set. Settings that couple batch items on purpose (the
    reference's whole-batch omega mean and shared ping-pong noise) never batch.
    """
    family = _BATCHABLE_TASKS.get(request.task)
    p = request.params
    if family is None or p.omega_mean_over != "sample" or p.legacy_batch_noise:
        return None
    return (family, float(request.duration_s), replace(p, seeds=None, batch_size=1), request.loras)


def _pad_conditions(c: Conditions, length: int) -> Conditions:
    """Right-pad ``states [B, S, D]`` / ``mask [B, S]`` to ``length`` with zeros (masked out)."""
    extra = length - c.states.shape[1]
    if extra == 0:
        return c
    states = torch.nn.functional.pad(c.states, (0, 0, 0, extra))
    return Conditions(states=states, mask=torch.nn.functional.pad(c.mask, (0, extra)))


def _concat_condition_sets(sets: list[ConditionSet]) -> ConditionSet:
    """Stack per-request condition sets along the batch, right-padding the sequences to one length.

    Padding at the end keeps every real token's position (the cross-attention RoPE) and the mask hides
    the padding, so each row attends to exactly its own conditions.
    """
    length = max(s.cond.states.shape[1] for s in sets)

    def cat(name: str) -> Conditions | None:
        parts = [getattr(s, name) for s in sets]
        if parts[0] is None:
            return None
        padded = [_pad_conditions(c, length) for c in parts]
        return Conditions(
            states=torch.cat([c.states for c in padded]), mask=torch.cat([c.mask for c in padded])
        )

    return ConditionSet(
        cond=cat("cond"),
        uncond=cat("uncond"),
        text_only=cat("text_only"),
        uncond_query_scale=sets[0].uncond_query_scale,
    )


def _progress_callback(progress: ProgressFn | None, n_steps: int):
    if progress is None:
        return None
    return lambda i, sigma, x: progress(i + 1, n_steps)


def ctx_steps(ctx: TaskContext) -> Tensor:
    """The sampler steps of a full run (progress reporting)."""
    return sigmas_for(ctx.params)[1:]


def _run_text2music(pipe: Pipeline, request: Text2Music, ctx: TaskContext, progress) -> Tensor:
    noise = pipe.noise(ctx.generators, pipe.geometry.frames_from_seconds(request.duration_s))
    plan = build_text2music_plan(ctx, noise)
    return run_plan(plan, callback=_progress_callback(progress, len(plan.sigmas) - 1))


def _run_retake(pipe: Pipeline, request: Retake, ctx: TaskContext, progress) -> Tensor:
    n_frames = pipe.geometry.frames_from_seconds(request.duration_s)
    noise = pipe.noise(ctx.generators, n_frames)
    retake_noise = pipe.noise(ctx.retake_generators, n_frames)
    plan = build_retake_plan(ctx, noise=noise, retake_noise=retake_noise, variance_frac=request.variance_frac)
    return run_plan(plan, callback=_progress_callback(progress, len(plan.sigmas) - 1))


def _run_repaint(pipe: Pipeline, request: Repaint, ctx: TaskContext, progress) -> Tensor:
    src = pipe.load_source(request.source_path, what="source audio")
    n_frames = src.shape[-1]
    start = pipe.geometry.frames_from_seconds(request.start_s)
    end = pipe.geometry.frames_from_seconds(request.end_s)
    if start >= n_frames:
        source_s = pipe.geometry.seconds_from_frames(n_frames)
        raise ConfigError(
            f"the repaint window starts at {request.start_s} s, after the source ends ({source_s:.2f} s)"
        )
    plan = build_repaint_plan(
        ctx,
        src_latents=src,
        start_frame=start,
        end_frame=min(end, n_frames),
        variance_frac=request.variance_frac,
        noise=pipe.noise(ctx.generators, n_frames),
        retake_noise=pipe.noise(ctx.retake_generators, n_frames),
    )
    return run_plan(plan, callback=_progress_callback(progress, len(plan.sigmas) - 1))


def _run_extend(pipe: Pipeline, request: Extend, ctx: TaskContext, progress) -> Tensor:
    src = pipe.load_source(request.source_path, what="source audio", allow_long=True)
    return run_extend(
        ctx,
        src_latents=src,
        left_frames=pipe.geometry.frames_from_seconds(request.left_s),
        right_frames=pipe.geometry.frames_from_seconds(request.right_s),
        max_frames=pipe.geometry.max_frames,
        callback=None if progress is None else lambda w, i, sigma, x: progress(i + 1, len(ctx_steps(ctx))),
    )


def _run_audio2audio(pipe: Pipeline, request: AudioToAudio, ctx: TaskContext, progress) -> Tensor:
    ref = pipe.load_source(request.reference_path, what="reference audio")
    plan = build_audio2audio_plan(
        ctx,
        ref_latents=ref,
        strength_frac=request.strength_frac,
        noise=pipe.noise(ctx.generators, ref.shape[-1]),
    )
    return run_plan(plan, callback=_progress_callback(progress, len(plan.sigmas) - 1))


def _run_edit(pipe: Pipeline, request: Edit, ctx: TaskContext, progress) -> Tensor:
    src = pipe.load_source(request.source_path, what="source audio")
    batch = request.params.batch_size
    tags = request.target_tags if request.target_tags is not None else request.tags
    lyrics = request.target_lyrics if request.target_lyrics is not None else request.lyrics
    source_inputs = pipe.text_inputs(request.tags, request.lyrics, batch, with_erg_text=False)
    target_inputs = pipe.text_inputs(tags, lyrics, batch, with_erg_text=False)
    source_conds, target_conds = encode_edit_conditions(pipe.transformer, source_inputs, target_inputs)
    return run_edit(
        replace(ctx, conds=source_conds),
        target_conds,
        src_latents=src,
        n_min_frac=request.n_min_frac,
        n_max_frac=request.n_max_frac,
        n_avg=request.n_avg,
        noise_fn=lambda: pipe.noise(ctx.generators, src.shape[-1]),
        callback=None if progress is None else lambda i, sigma, x: progress(i + 1, len(ctx_steps(ctx))),
    )


_RUNNERS: dict[str, Callable[..., Tensor]] = {
    "text2music": _run_text2music,
    "retake": _run_retake,
    "repaint": _run_repaint,
    "extend": _run_extend,
    "audio2audio": _run_audio2audio,
    "edit": _run_edit,
}
