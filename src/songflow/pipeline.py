"""The inference pipeline: components + placement + geometry, and ``generate(request) -> Result``.

Stages (each timed): 1. encode the tags with the text encoder (and the ERG-tag null states), tokenize the
lyrics and encode the DiT conditions once, 2. run the task (``songflow.tasks.registry``: its plan(s) over
the one sampling loop), 3. decode latents to audio. The pipeline writes no files, parses no seed strings
and loads no checkpoint: a model family (``songflow.families``) loads the components and builds it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from songflow.audio.geometry import OFFICIAL_GEOMETRY, LatentGeometry
from songflow.errors import AudioError, ConfigError, SongflowError
from songflow.requests import MAX_BATCH, GenerationParams, LoraRef, Request, Text2Music, with_seeds
from songflow.sampling.noise import make_generators, randn_per_sample
from songflow.tasks.batch import batch_key, concat_condition_sets
from songflow.tasks.plan import ConditionSet, ErgFlags, ErgLayers, TextInputs, encode_conditions
from songflow.tasks.registry import check_duration, spec_for
from songflow.tasks.setup import TaskContext
from songflow.tasks.spec import ProgressFn, TaskSpec
from songflow.tasks.text2music import run_initial_noise

__all__ = ["Components", "Pipeline", "PipelineOptions", "Placement", "ProgressFn", "Result", "batch_key"]

# source audio outside this range is refused rather than resampled to 44.1 kHz
MIN_SOURCE_RATE_HZ = 8000
MAX_SOURCE_RATE_HZ = 384000


def check_source_audio(
    wav: Tensor,
    rate_hz: int,
    subject: str,
    geometry: LatentGeometry,
    codec: Any = None,
    *,
    allow_long: bool = False,
    long_hint: str = "cut it, or use extend to grow a song past that",
) -> int:
    """The latent frames of a source waveform ``[C, N]`` at ``rate_hz``, or :class:`AudioError` saying
    why a pipeline could not use it: a sample rate outside [MIN_SOURCE_RATE_HZ, MAX_SOURCE_RATE_HZ],
    NaN or infinite samples, silence, less than one latent frame, or (unless ``allow_long``) more than
    one generation window (``long_hint`` says what to do then).

    ``subject`` names the source in the messages (e.g. "the source audio take.wav"); ``codec`` counts
    the frames (``latent_frames_for``), else they are estimated from ``geometry``. The pipeline, the
    server and the studio all check uploads with this one function.
    """
    from songflow.audio.io import to_stereo

    if not MIN_SOURCE_RATE_HZ <= rate_hz <= MAX_SOURCE_RATE_HZ:
        raise AudioError(
            f"{subject} has a sample rate of {rate_hz} Hz; give audio between {MIN_SOURCE_RATE_HZ} and "
            f"{MAX_SOURCE_RATE_HZ} Hz (other rates are resampled to the model's "
            f"{geometry.sample_rate_hz} Hz automatically)"
        )
    if not bool(torch.isfinite(wav).all()):
        raise AudioError(f"{subject} holds NaN or infinite samples; export it again")
    if wav.numel() == 0 or to_stereo(wav).abs().max() < 1e-4:
        raise AudioError(f"{subject} is silent; give a recording with audible sound")
    seconds = wav.shape[-1] / rate_hz
    frames_for = getattr(codec, "latent_frames_for", None)
    if frames_for is not None:
        n_frames = int(frames_for(wav.shape[-1], rate_hz))
    else:
        n_frames = int(seconds * geometry.sample_rate_hz / geometry.samples_per_frame)
    if n_frames < 1:
        raise AudioError(f"{subject} is too short ({seconds:.3f} s)")
    if not allow_long and n_frames > geometry.max_frames:
        raise AudioError(
            f"{subject} lasts {seconds:.1f} s; this task handles up to {geometry.max_duration_s:.0f} s "
            f"({long_hint})"
        )
    return n_frames


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
    """Where modules live and in which dtype they run. With ``offload`` they stay on the CPU and visit
    ``device`` one stage at a time."""

    def __init__(self, device: str | torch.device, dtype: torch.dtype = torch.float32, offload: bool = False):
        self.device = torch.device(device)
        self.dtype = dtype
        self.offload = offload and self.device.type != "cpu"

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


@dataclass
class Components:
    """The loaded modules of a pipeline.

    ``transformer``: the DiT (``encode`` + ``__call__``); ``codec``: ``MusicCodec`` (DCAE + vocoder);
    ``text_encoder``: ``encode(prompts, query_scale=...) -> (states, mask)``; ``lyric_tokenizer``:
    ``tokenize_lyrics(text) -> ids``.
    """

    transformer: nn.Module
    codec: Any  # an nn.Module with ``encode``, ``decode``, ``latent_frames_for`` and ``vocoder``
    text_encoder: Any
    lyric_tokenizer: Any


@dataclass
class PipelineOptions:
    """Run options: the rate of ``Result.audio`` (48000 as the reference writes; 44100 skips resampling),
    whether the guidance passes share one model call, and whether LoRAs are merged into the weights."""

    output_sample_rate_hz: int = 48000
    batch_passes: bool = True
    merge_loras: bool = True


class Pipeline:
    """Inference over loaded components: ``generate(request)`` for one request of any task.

    ``family`` (the ``songflow.families.ModelFamily`` that built it) and ``checkpoint_root`` (the folder
    it was loaded from) are set by the family loader; both are None for a pipeline built directly.
    """

    def __init__(
        self,
        components: Components,
        placement: Placement | None = None,
        geometry: LatentGeometry = OFFICIAL_GEOMETRY,
        options: PipelineOptions | None = None,
    ):
        self.transformer: Any = components.transformer.eval()
        self.codec: Any = components.codec.eval()
        self.codec.vocoder.fold_weight_norm()  # inference only: weight = g * v / |v| computed once
        self.text_encoder = components.text_encoder
        self.lyric_tokenizer = components.lyric_tokenizer
        self.placement = placement or Placement("cpu")
        self.geometry = geometry
        self.options = options or PipelineOptions()
        self.erg_layers = ErgLayers()
        self.family: Any = None
        self.checkpoint_root: Path | None = None
        self._loras: tuple[tuple[str, float], ...] = ()
        # the waveforms load_source read during the current request: path -> (wav [2, N], rate)
        self._sources: dict[str, tuple[Tensor, int]] = {}

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        return self.placement.dtype

    @property
    def output_sample_rate_hz(self) -> int:
        return self.options.output_sample_rate_hz

    @property
    def batch_passes(self) -> bool:
        return self.options.batch_passes

    @batch_passes.setter
    def batch_passes(self, value: bool) -> None:
        self.options.batch_passes = value

    # -- stages --------------------------------------------------------------------------------------

    def check_request(self, request: Request) -> TaskSpec:
        """The request's task spec; raises :class:`ConfigError` for an unknown task or a bad duration."""
        spec = spec_for(request.task)
        check_duration(self.geometry, getattr(request, "duration_s", None))
        return spec

    def load_source(self, path: str, *, what: str, allow_long: bool = False) -> Tensor:
        """Read an audio file and encode it: latents [1, 8, 16, L] on the pipeline's device. The waveform
        is kept for :meth:`source_audio` until the request is finished."""
        from songflow.audio.io import load_audio, to_stereo

        wav, sr = load_audio(path)
        check_source_audio(wav, sr, f"the {what} {path}", self.geometry, self.codec, allow_long=allow_long)
        wav = to_stereo(wav)
        self._sources[path] = (wav.float().cpu(), sr)
        with self.placement.on_device(self.codec), torch.inference_mode():
            return self.codec.encode(wav[None].to(self.device, self.dtype), sample_rate_hz=sr).float()

    def source_audio(self, path: str) -> Tensor:
        """The source ``path`` as :meth:`load_source` read it, ``[2, N]`` float32 on the CPU at
        ``output_sample_rate_hz`` (the file's own samples at that rate; else the codec's resampler)."""
        from songflow.audio.io import load_audio, to_stereo
        from songflow.audio.resample import resample

        if path not in self._sources:
            wav, sr = load_audio(path)
            self._sources[path] = (to_stereo(wav).float(), sr)
        wav, sr = self._sources[path]
        return resample(wav, sr, self.output_sample_rate_hz)

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

        def rep(t: Tensor) -> Tensor:
            return t.to(self.device).repeat(batch, *([1] * (t.dim() - 1)))

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

    def noise(self, generators: list[torch.Generator], n_frames: int) -> Tensor:
        """One N(0,1) latent draw per batch item [B, 8, 16, n_frames], CPU float32 -> device."""
        return randn_per_sample((8, 16, n_frames), generators).to(self.device)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B,8,16,L] -> audio [B, 2, N] float32 on the CPU at ``output_sample_rate_hz``."""
        with self.placement.on_device(self.codec), torch.inference_mode():
            audio = self.codec.decode(
                latents.to(self.device, self.dtype), sample_rate_hz=self.output_sample_rate_hz
            )
        return audio.float().cpu()

    def apply_loras(self, loras: Sequence[LoraRef]) -> None:
        """Make the transformer carry exactly ``loras`` (merged into the weights for speed by default;
        unmerging restores the base weights exactly). Unchanged adapters are not reloaded."""
        wanted = tuple((ref.path, float(ref.weight)) for ref in loras)
        if wanted == self._loras:
            return
        from songflow.checkpoint.lora import LoraSpec, set_loras

        specs = [LoraSpec(Path(path).expanduser(), weight) for path, weight in wanted]
        with self.placement.on_device(self.transformer):
            set_loras(self.transformer, specs, merged=self.options.merge_loras)
        self._loras = wanted

    # -- entry points --------------------------------------------------------------------------------

    def resolve_seeds(self, request: Any) -> Any:
        """Fill in random seeds (and retake seeds) so the returned request regenerates the output."""
        return with_seeds(request)

    def generate(self, request: Request, *, progress: ProgressFn | None = None) -> Result:
        """Run one request of any task; see :class:`Result`."""
        spec = self.check_request(request)
        request = self.resolve_seeds(request)
        p = request.params
        assert p.seeds is not None
        timings: dict[str, float] = {}

        # 1. conditions (tags, lyrics), encoded once
        t0 = time.perf_counter()
        self.apply_loras(request.loras)
        conds = self.encode_conditions(request.tags, request.lyrics, p)
        retake = getattr(request, "retake_seeds", None)
        ctx = self._task_context(
            conds, p, make_generators(list(p.seeds)), make_generators(list(retake)) if retake else None
        )
        timings["preprocess"] = time.perf_counter() - t0

        # 2. the task's plan(s) over the one sampling loop (the task reads its source audio itself)
        t0 = time.perf_counter()
        self._sources.clear()
        try:
            with self.placement.on_device(self.transformer), torch.inference_mode():
                latents = spec.run(self, request, ctx, progress)
            timings["diffusion"] = time.perf_counter() - t0

            # 3. back to audio, at the task's exact length
            audio = self._finish(spec, request, self._to_audio(latents, timings), latents)
        finally:
            self._sources.clear()
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
        resolved = self._check_batch(requests)
        timings: dict[str, float] = {}

        # 1. each request's conditions and initial noise, then one padded batch
        t0 = time.perf_counter()
        self.apply_loras(resolved[0].loras)
        ctx, initial = self._batch_context(resolved)
        timings["preprocess"] = time.perf_counter() - t0

        # 2. one sampling run for the whole batch
        t0 = time.perf_counter()
        with self.placement.on_device(self.transformer), torch.inference_mode():
            latents = run_initial_noise(ctx, initial, progress)
        timings["diffusion"] = time.perf_counter() - t0

        # 3. back to audio, split per request, each at its task's exact length
        audio = self._to_audio(latents, timings)
        latents = latents.float().cpu()
        results, start = [], 0
        for r in resolved:
            part = slice(start, start + r.params.batch_size)
            out = self._finish(spec_for(r.task), r, audio[part], latents[part])
            results.append(Result(out, self.output_sample_rate_hz, latents[part], r, dict(timings)))
            start += r.params.batch_size
        return results

    def _finish(self, spec: TaskSpec, request: Request, audio: Tensor, latents: Tensor) -> Tensor:
        """The task's output from its decoded ``audio`` (docs/reference_behaviour.md#r22, #r23); the
        decoded audio itself with ``legacy_output_length`` or for a task without a finisher."""
        if spec.finish is None or request.params.legacy_output_length:
            return audio
        return spec.finish(self, request, audio, latents).contiguous()

    def _check_batch(self, requests: Sequence[Request]) -> list[Request]:
        """The requests with their seeds resolved, if they may share one sampling run."""
        keys = {batch_key(r) for r in requests}
        if None in keys or len(keys) != 1:
            raise ConfigError(
                "generate_many needs compatible requests (text2music/retake with one duration, the same "
                "generation settings and LoRAs; only tags, lyrics, seeds and retake settings may differ)"
            )
        for request in requests:
            self.check_request(request)
        resolved = [self.resolve_seeds(r) for r in requests]
        n_rows = sum(r.params.batch_size for r in resolved)
        if n_rows > MAX_BATCH:
            raise ConfigError(f"a batch holds at most {MAX_BATCH} items; these requests have {n_rows}")
        return resolved

    def _batch_context(self, requests: list[Request]) -> tuple[TaskContext, Tensor]:
        """The task context of one batch of requests (padded conditions, every row's generator) and the
        batch's initial noise, each request's drawn from its own seeds as its task does."""
        first = requests[0]
        assert isinstance(first, Text2Music)  # batch_key admits text2music and retake (a Text2Music) only
        n_frames = self.geometry.frames_from_seconds(first.duration_s)
        conds = concat_condition_sets([self.encode_conditions(r.tags, r.lyrics, r.params) for r in requests])
        generators: list[torch.Generator] = []
        initial = []
        for r in requests:
            assert r.params.seeds is not None
            gens = make_generators(list(r.params.seeds))
            initial_noise = spec_for(r.task).initial_noise
            assert initial_noise is not None
            initial.append(initial_noise(self, r, gens, n_frames))
            generators += gens
        seeds = tuple(s for r in requests for s in r.params.seeds or ())
        params = replace(first.params, seeds=seeds, batch_size=len(seeds))
        return self._task_context(conds, params, generators), torch.cat(initial)

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
            batch_passes=self.options.batch_passes,
            oss_dtype=self.dtype,
        )
