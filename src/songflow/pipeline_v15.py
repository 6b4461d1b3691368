"""The ACE-Step 1.5 inference pipeline: ``Pipeline15.generate(request) -> Result``.

Stages (each timed): 0. with ``think`` (or a simple-mode request) the 5 Hz LM planner writes the missing
metadata and the audio codes, 1. text, lyrics and reference timbre -> the condition encoder's states,
2. the task's plan (``songflow.tasks.acestep_v15``) over the one sampling loop, 3. tiled VAE decode, cut to
the requested length (and peak-normalised with ``normalization_db``). Random draws come from per-item
generators seeded by the request's seeds (:class:`Draws15`), so a batch equals its singles and a sidecar
replays exactly; tests swap in the reference's recorded draws.

The planner (official ``acestep/inference.py`` ``generate_music`` with ``thinking``): the LM is loaded on
first use from the checkpoint's ``acestep-5Hz-lm-*`` folder (float32 on the CPU, bf16 on CUDA) and, with
``lm_offload``, sent back to the CPU after each use so the DiT has the accelerator to itself. Each song's
plan (:class:`~songflow.tasks.acestep_v15.planner.SongPlan`) becomes a plain request (:func:`planned_request`:
the user's metadata, the plan's filling the missing ones, its audio codes, ``think`` off) that the DiT runs
as any other: an audio-codes request is a cover of the codes. A :class:`Result15` carries the plans; its
``request`` replays the song without the LM.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from songflow.errors import ConfigError
from songflow.pipeline import Placement, Result, check_source_audio
from songflow.requests import LoraRef, with_seeds
from songflow.requests_v15 import (
    Format15,
    Plan15,
    Request15,
    Simple15,
    Understand15,
)
from songflow.sampling.noise import make_generators, randn_per_sample
from songflow.tasks.acestep_v15 import extend as extend15
from songflow.tasks.acestep_v15 import inputs, planner
from songflow.tasks.acestep_v15.edit import EditPlan15, run_edit15
from songflow.tasks.acestep_v15.output import finish_audio, peak_normalize
from songflow.tasks.acestep_v15.plan import build_context, run_plan15
from songflow.tasks.acestep_v15.planned import (
    lm_seeds,
    needs_plan,
    planned_request,
    planner_options,
    resolve_planner_seeds,
    user_metadata,
)
from songflow.tasks.acestep_v15.planner import PlannerOptions, SongPlan
from songflow.tasks.acestep_v15.presets import resolve_settings
from songflow.tasks.acestep_v15.tasks import build_plan
from songflow.tasks.spec import ProgressFn
from songflow.text import acestep_v15_prompts as prompts

__all__ = [
    "Components15",
    "Draws15",
    "Pipeline15",
    "Result15",
    "Planner15",
    "load_v15_pipeline",
    "load_v15_planner",
]

_VAE_SEED_OFFSET = 0x5EED_0F_AE  # VAE-sample and SDE generators are seeded apart from the initial noise
_SDE_SEED_OFFSET = 0x5DE_5DE
REFERENCE_SEGMENT_S = 10.0


@dataclass
class Components15:
    """The loaded parts: the DiT (``AceStep15DiT``), the VAE (``OobleckVAE``), the text encoder
    (``Qwen3TextEncoder``) and the silence latent ``[1, Ts, C]``."""

    dit: Any
    vae: Any
    text_encoder: Any
    silence_latent: Tensor


class Draws15:
    """Every random draw of a 1.5 run, from per-item generators seeded by the request's seeds."""

    def initial(self, seeds: tuple[int, ...], shape: tuple[int, int]) -> Tensor:
        """The starting noise ``[B, T, C]``: one generator per seed (as the reference's seed lists)."""
        return randn_per_sample(shape, make_generators(seeds))

    def vae_sample(self, index: int, seeds: tuple[int, ...], shape: tuple[int, int]) -> Tensor:
        """The noise of VAE-encoded window number ``index`` of this run, ``[B, T, C]``."""
        return randn_per_sample(
            shape, make_generators([(s + _VAE_SEED_OFFSET + index) % 2**63 for s in seeds])
        )

    def renoise(self, seeds: tuple[int, ...], shape: tuple[int, int]) -> Callable[[int], Tensor]:
        gens = make_generators([(s + _SDE_SEED_OFFSET) % 2**63 for s in seeds])
        return lambda step: randn_per_sample(shape, gens)

    def segment_offset(self, index: int, high: int, seed: int) -> int:
        """The offset of reference segment ``index`` inside its third, in ``[0, high]`` samples."""
        return random.Random(seed * 3 + index).randint(0, high)


@dataclass
class Result15(Result):
    """A 1.5 result. ``plans``: the planner's plan of each song (empty without planning); ``planned_from``:
    the request as given (``think`` / simple mode) when ``request`` is the planned one that replays it."""

    plans: tuple[SongPlan, ...] = ()
    planned_from: Any = None


class Planner15:
    """The 5 Hz LM planner of one checkpoint: the LM folder, loaded on first use (on the CPU with
    ``offload``, visiting ``device`` per call; bf16 on CUDA, float32 elsewhere), one call at a time.

    Requests come with their seeds resolved (``Pipeline15.resolve_seeds`` or :func:`resolve_planner_seeds`
    after ``songflow.requests.with_seeds``)."""

    def __init__(
        self,
        lm_dir: Path | None,
        device: torch.device | str = "cpu",
        *,
        offload: bool = False,
        checkpoint_root: Path | None = None,
        dit_name: str = "acestep-v15-turbo",
    ):
        self.lm_dir = lm_dir
        self.device = torch.device(device)
        self.offload = offload
        self.checkpoint_root = checkpoint_root
        self.dit_name = dit_name
        self._lm: Any = None
        self._lock = threading.RLock()  # server routes and the job worker share one LM

    @property
    def loaded(self) -> bool:
        return self._lm is not None

    def lm(self) -> Any:
        """The ``PlannerLM``, loaded on first use; ConfigError saying what to download when the checkpoint
        has no LM folder."""
        with self._lock:
            if self._lm is None:
                if self.lm_dir is None:
                    root = self.checkpoint_root or Path("checkpoints")
                    raise ConfigError(
                        f"planning needs the 5 Hz LM, and {root} has no acestep-5Hz-lm-* folder; download "
                        f"one with `songflow download --model {self.dit_name} --lm acestep-5Hz-lm-1.7B "
                        f"--dir {root}` (or leave out think / the planner commands)"
                    )
                from songflow.checkpoint.acestep_v15 import load_v15_lm

                dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
                where = torch.device("cpu") if self.offload else self.device
                self._lm = load_v15_lm(self.lm_dir, device=where, dtype=dtype)
            return self._lm

    @contextlib.contextmanager
    def in_use(self) -> Iterator[Any]:
        """The LM on ``device`` for one call; with ``offload`` it goes back to the CPU afterwards and the
        accelerator's cache is emptied for the DiT."""
        with self._lock:
            lm = self.lm()
            if self.offload:
                lm.to_device(self.device)
            try:
                yield lm
            finally:
                if self.offload:
                    lm.offload()
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()

    def plan(self, request: Any) -> list[SongPlan]:
        """One plan per batch item of a :class:`Plan15` or a ``think`` text2music/retake request (the
        user's metadata kept, :func:`user_metadata`; the request's duration sets the code count)."""
        with_codes = request.with_codes if isinstance(request, Plan15) else request.audio_codes is None
        with self.in_use() as lm:
            return planner.plan_song(
                lm,
                caption=request.caption,
                lyrics=request.lyrics,
                user_metadata=user_metadata(request),
                target_duration_s=request.duration_s,
                options=planner_options(request.params),
                seeds=list(lm_seeds(request)),
                with_codes=with_codes,
            )

    def describe(self, request: Simple15) -> list[SongPlan]:
        """Simple mode, one plan per item: the description -> caption, lyrics, metadata; with ``think``
        also the audio codes, for the song's length (the request's, else the first item's: a batch has
        one length)."""
        options = planner_options(request.params)
        language = None if request.vocal_language == "unknown" else request.vocal_language
        seeds = lm_seeds(request)
        with self.in_use() as lm:
            described = [
                planner.describe_song(
                    lm, request.description, instrumental=request.instrumental,
                    vocal_language=language, options=options, seed=seed,
                )
                for seed in seeds
            ]  # fmt: skip
            duration_s = float(request.duration_s or described[0].duration_s or 30.0)
            described = [replace(d, duration_s=duration_s) for d in described]
            if not request.think:
                return described
            return [_with_codes(lm, d, seed, options) for d, seed in zip(described, seeds, strict=True)]

    def format(self, request: Format15) -> list[SongPlan]:
        """Format: the LM tidies the caption and lyrics (and fills the metadata), one answer per item."""
        options, user = planner_options(request.params), user_metadata(request)
        with self.in_use() as lm:
            return [
                planner.format_song(
                    lm, caption=request.caption, lyrics=request.lyrics, user_metadata=user,
                    options=options, seed=seed,
                )
                for seed in lm_seeds(request)
            ]  # fmt: skip


def _with_codes(lm: Any, plan: SongPlan, seed: int, options: PlannerOptions) -> SongPlan:
    """``plan`` with the audio codes the LM writes for its caption, lyrics and metadata."""
    metas = {
        "bpm": plan.bpm, "keyscale": plan.keyscale, "timesignature": plan.timesignature,
        "duration": int(plan.duration_s or 30), "language": plan.language,
    }  # fmt: skip
    (coded,) = planner.plan_song(
        lm, caption=plan.caption or "", lyrics=plan.lyrics or "", options=options, seeds=[seed],
        user_metadata={k: v for k, v in metas.items() if v is not None}, target_duration_s=plan.duration_s,
    )  # fmt: skip
    return replace(plan, audio_codes=coded.audio_codes, cot_text=coded.cot_text)


def load_v15_planner(
    layout: Any, *, device: str | torch.device = "auto", lm_offload: bool = False
) -> Planner15:
    """The planner of a validated 1.5 layout (nothing is loaded until it is used; no DiT, VAE or text
    encoder: ``songflow plan``/``format`` need only the LM)."""
    from songflow.checkpoint import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else device
    return Planner15(
        layout.lm_dir, dev, offload=lm_offload, checkpoint_root=Path(layout.root), dit_name=layout.dit_name
    )


class Pipeline15:
    """Inference over loaded 1.5 components; ``variant`` is "turbo", "base" or "sft"."""

    def __init__(self, components: Components15, placement: Placement | None = None, *, variant: str):
        self.dit = components.dit.eval()
        self.vae = components.vae
        self.text_encoder = components.text_encoder
        self.placement = placement or Placement("cpu")
        self.silence_latent = components.silence_latent.to(self.device, self.dtype)
        self.variant = variant
        self.family: Any = None
        self.checkpoint_root: Path | None = None
        self.output_sample_rate_hz = inputs.SAMPLE_RATE_HZ
        self.draws = Draws15()
        self.extend_window_frames = extend15.WINDOW_FRAMES  # extend's longest DiT run (600 s)
        self._request: Any = None
        self._vae_calls: dict[int, int] = {}  # VAE windows sampled so far this request, per seed
        self._sources: dict[str, Tensor] = {}  # the source waveforms [2, N] read during this request
        self._references: dict[tuple[str, int], Tensor] = {}  # timbre latents [1, 750, C] per (path, seed)
        # the per-request state above is one request's: DiT runs and audio -> codes take turns (server
        # routes and the job worker share a pipeline)
        self._dit_lock = threading.RLock()
        self._loras: tuple[tuple[str, float], ...] = ()  # the (path, weight) adapters the decoder carries
        # the 5 Hz LM planner; load_v15_pipeline gives it the layout's LM folder (None: no LM)
        self.planner = Planner15(None, self.device, offload=self.placement.offload)

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        return self.placement.dtype

    def apply_loras(self, loras: Sequence[LoraRef]) -> None:
        """Make the DiT decoder carry exactly ``loras`` (LoRA folders, LoKr/LoHa files), merged into its
        weights; an empty set restores the base weights bit-exactly (:mod:`songflow.nn.lora`). The same
        set as the previous request's costs nothing; unchanged files are not read again. A file that does
        not fit the decoder raises CheckpointError and leaves the base weights."""
        wanted = tuple((ref.path, float(ref.weight)) for ref in loras)
        if wanted == self._loras:
            return
        from songflow.checkpoint.lora import LoraSpec, set_loras

        specs = [LoraSpec(Path(path).expanduser(), weight) for path, weight in wanted]
        self._loras = ()  # on an error set_loras has unloaded every adapter
        with self.placement.on_device(self.dit):
            set_loras(self.dit.decoder, specs, merged=True)
        self._loras = wanted

    # -- stages the tasks call (songflow.tasks.acestep_v15.tasks.Host15) -------------------------------

    def text_inputs(
        self, request: Any, instruction: str | Sequence[str], duration_s: float, batch: int
    ) -> dict[str, Tensor]:
        """Caption states ``[B, Lt, D]`` + mask and lyric embeddings ``[B, Ll, D]`` + mask. One
        ``instruction`` for every row, or ``B`` of them (one caption prompt per row, tokenized and encoded
        as one batch, right-padded to the longest: causal attention leaves each row's tokens as alone)."""
        instructions = [instruction] if isinstance(instruction, str) else list(instruction)
        if len(instructions) not in (1, batch):
            raise ValueError(f"{len(instructions)} instructions for a batch of {batch} rows")
        metas = prompts.metas_block(request.bpm, request.time_signature, request.key_scale, duration_s)
        captions = [prompts.caption_prompt(text, request.caption, metas) for text in instructions]
        lyric = prompts.lyrics_prompt(request.vocal_language, request.lyrics)
        enc = self.text_encoder
        with self.placement.on_device(getattr(enc, "model", None)), torch.inference_mode():
            ids, mask = enc.tokenize_captions(captions)
            lids, lmask = enc.tokenize_lyrics([lyric])
            states = enc.encode_text(ids.to(self.device))
            lyrics = enc.embed_lyrics(lids.to(self.device))

        def rep(t: Tensor) -> Tensor:  # a row given once -> every row
            return t.to(self.device).repeat(batch // t.shape[0], *([1] * (t.dim() - 1)))

        return {
            "text_states": rep(states).to(self.dtype),
            "text_mask": rep(mask).long(),
            "lyric_embeds": rep(lyrics).to(self.dtype),
            "lyric_mask": rep(lmask).long(),
        }

    def reference_latents(self, path: str | None, batch: int) -> tuple[Tensor, Tensor]:
        """Packed timbre references ``[N, 750, C]`` and their batch index ``[N]``: the silence latent
        without reference audio; else, per batch item, three 10 s segments of the (tiled) clip cut and
        VAE-sampled with that item's seed (so a batch equals its singles)."""
        if path is None:
            refs = inputs.silence_frames(self.silence_latent, inputs.REFERENCE_FRAMES).expand(batch, -1, -1)
        else:
            seeds = self._request.params.seeds
            refs = torch.cat([self._reference(path, seed) for seed in seeds[:batch]], dim=0)
        return refs.to(self.dtype), torch.arange(batch, device=self.device)

    def _reference(self, path: str, seed: int) -> Tensor:
        """The timbre latents ``[1, 750, C]`` of ``path`` for ``seed``, encoded once per request (a cover
        below full strength conditions twice)."""
        if (path, seed) not in self._references:
            self._references[(path, seed)] = self._encode_reference(path, seed)
        return self._references[(path, seed)]

    def _encode_reference(self, path: str, seed: int) -> Tensor:
        wav = self._sources.get(path)
        if wav is None:
            wav = self._sources[path] = self.read_audio(path, what="reference audio")
        seg = int(REFERENCE_SEGMENT_S * inputs.SAMPLE_RATE_HZ)
        need = 3 * seg
        if wav.shape[-1] < need:
            wav = wav.repeat(1, -(-need // wav.shape[-1]))
        total = wav.shape[-1]
        third = total // 3
        parts = []
        for k in range(3):  # a random 10 s segment from the front, middle and back third
            room = (third if k < 2 else total - 2 * third) - seg
            start = k * third + self.draws.segment_offset(k, max(0, room), seed)
            parts.append(wav[:, start : start + seg])
        clip = torch.cat(parts, dim=-1).clamp(-1.0, 1.0)[None]
        return self._vae_encode_sampled(clip, (seed,))[:, : inputs.REFERENCE_FRAMES]

    def encode_conditions(
        self, request: Any, instruction: str | Sequence[str], duration_s: float, batch: int
    ) -> tuple[Tensor, Tensor]:
        """:meth:`Host15.encode_conditions`: ``batch`` rows, one instruction for all or one per row; each
        of the request's items takes its reference timbre (stems: the one item's on every row)."""
        t = self.text_inputs(request, instruction, duration_s, batch)
        items = min(batch, request.params.batch_size)
        refs, order = self.reference_latents(request.reference_path, items)
        if batch != items:  # rows repeating the request's items (stems: one item, a row per track)
            refs = refs.repeat_interleave(batch // items, dim=0)
            order = torch.arange(batch, device=self.device)
        with self.placement.on_device(self.dit), torch.inference_mode():
            return self.dit.encode_conditions(
                t["text_states"], t["text_mask"], t["lyric_embeds"], t["lyric_mask"], refs, order
            )

    def context(self, src: Tensor, chunk: Tensor, is_cover: Tensor, hints: Tensor | None = None) -> Tensor:
        with self.placement.on_device(self.dit), torch.inference_mode():
            return build_context(
                self.dit,
                src.to(self.device, self.dtype),
                chunk.to(self.device),
                is_cover.to(self.device),
                self.silence_latent,
                None if hints is None else hints.to(self.device, self.dtype),
            )

    def null_enc(self, enc: Tensor) -> Tensor:
        return self.dit.null_condition_emb.to(enc).expand_as(enc)

    def noise(self, seeds: tuple[int, ...], n_frames: int) -> Tensor:
        shape = (n_frames, self.dit.config.audio_acoustic_hidden_dim)
        return self.draws.initial(seeds, shape).to(self.device, self.dtype)

    def renoise_fn(self, seeds: tuple[int, ...], n_frames: int) -> Callable[[int], Tensor]:
        draw = self.draws.renoise(seeds, (n_frames, self.dit.config.audio_acoustic_hidden_dim))
        return lambda step: draw(step).to(self.device, self.dtype)

    def read_audio(self, path: str, *, what: str) -> Tensor:
        """A file as 48 kHz stereo float32 ``[2, N]`` (any rate is resampled), checked as every pipeline
        checks its sources (:func:`songflow.pipeline.check_source_audio`: rate, NaN, silence, length)."""
        from songflow.audio.io import load_audio, to_stereo
        from songflow.audio.resample import resample

        wav, sr = load_audio(path)
        check_source_audio(wav, sr, f"the {what} {path}", inputs.GEOMETRY, long_hint="cut it")
        return resample(to_stereo(wav).float(), sr, inputs.SAMPLE_RATE_HZ)

    def _vae_encode_sampled(self, wav: Tensor, seeds: tuple[int, ...]) -> Tensor:
        """VAE latents ``[B, T, C]`` of ``wav [1, 2, N]``, tiled as the reference encodes and sampled once
        per seed (one noise draw per window and seed)."""
        vae, n_channels = self.vae, self.vae.latent_channels
        noises = []
        for w in vae.encode_windows(wav.shape[-1]):
            n_frames = vae.frames_for_samples(w.win_end - w.win_start)
            # counted per seed, so an item's draws do not depend on the other items of its batch
            index = self._vae_calls.get(seeds[0], 0)
            noises.append(self.draws.vae_sample(index, seeds, (n_frames, n_channels)))
            for seed in set(seeds):
                self._vae_calls[seed] = self._vae_calls.get(seed, 0) + 1
        with self.placement.on_device(vae), torch.inference_mode():  # encoded once, sampled per seed
            return vae.encode_tiled(
                wav.to(self.device, self.dtype), noise=[n.to(self.device, self.dtype) for n in noises]
            ).float()

    def encode_source(self, path: str, seeds: tuple[int, ...]) -> Tensor:
        wav = self.read_audio(path, what="source audio")
        self._sources[path] = wav
        return self._vae_encode_sampled(wav[None], seeds).to(self.device, self.dtype)

    def codes_to_hints(self, codes: tuple[int, ...], batch: int) -> Tensor:
        """25 Hz hints ``[B, 5 * len(codes), C]`` decoded from 5 Hz audio codes (FSQ lookup, detokenizer)."""
        ids = torch.tensor([list(codes)], dtype=torch.long, device=self.device)[..., None]  # [1, T5, 1]
        with self.placement.on_device(self.dit), torch.inference_mode():
            hints = self.dit.detokenize(self.dit.codes_to_quantized(ids).to(self.dtype))
        return hints.expand(batch, -1, -1)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[B, T, C]`` -> audio ``[B, 2, T * 1920]`` float32 on the CPU (tiled VAE decode)."""
        out = torch.empty(latents.shape[0], 2, latents.shape[1] * inputs.HOP_SAMPLES)
        with self.placement.on_device(self.vae), torch.inference_mode():
            return self.vae.decode_streaming(latents.to(self.device, self.dtype), out=out)

    def _finish(self, job: Any, request: Any, latents: Tensor) -> Tensor:
        """Decode (the frames kept, unless ``legacy_output_length``) and finish the audio."""
        legacy = request.params.legacy_output_length
        if legacy or job.splice_span is not None:
            audio = self.decode(latents)  # the reference normalises the whole generated length
        else:
            keep = math.ceil(job.duration_s * inputs.FRAMES_PER_S)  # whole frames covering the length
            audio = self.decode(latents[:, : max(1, min(keep, latents.shape[1]))])
        source = None
        if job.splice_span is not None:
            source = self._sources[request.source_path]
        return finish_audio(
            audio,
            duration_s=job.duration_s,
            legacy_length=legacy,
            source=source,
            span_frames=job.splice_span,
            fade_s=getattr(request, "wav_crossfade_s", 0.0),
        )

    # -- the 5 Hz LM planner (``self.planner``) ---------------------------------------------------------

    def plan(self, request: Any) -> list[SongPlan]:
        """:meth:`Planner15.plan` (seeds resolved as :meth:`resolve_seeds`)."""
        return self.planner.plan(self.resolve_seeds(request))

    def describe(self, request: Simple15) -> list[SongPlan]:
        """:meth:`Planner15.describe`."""
        return self.planner.describe(self.resolve_seeds(request))

    def format(self, request: Format15) -> list[SongPlan]:
        """:meth:`Planner15.format`."""
        return self.planner.format(self.resolve_seeds(request))

    def understand(self, request: Understand15) -> list[SongPlan]:
        """Understand: ``source_path`` -> VAE latents -> 5 Hz codes (``dit.tokenize``) -> the LM's caption,
        lyrics and metadata, one answer per item (each plan carries the codes)."""
        request = self.resolve_seeds(request)
        seeds = lm_seeds(request)
        codes = self.audio_codes_of(request.source_path, seeds[0])
        options = planner_options(request.params)
        with self.planner.in_use() as lm:
            return [planner.understand_codes(lm, codes, options=options, seed=seed) for seed in seeds]

    def audio_codes_of(self, path: str, seed: int) -> tuple[int, ...]:
        """The 5 Hz audio codes (0..63999, 5 per second) of an audio file: VAE-encoded (sampled with
        ``seed``) and tokenized by the DiT's FSQ tokenizer."""
        with self._dit_lock:
            self._vae_calls = {}
            try:
                latents = self.encode_source(path, (seed,))
            finally:
                self._sources.clear()
            mask = torch.ones(latents.shape[:2], device=self.device, dtype=latents.dtype)
            with self.placement.on_device(self.dit), torch.inference_mode():
                _, codes, _ = self.dit.tokenize(latents, self.silence_latent, mask)
            return tuple(int(c) for c in codes[0, :, 0].tolist())

    # -- entry point ------------------------------------------------------------------------------

    def resolve_seeds(self, request: Any) -> Any:
        """Fill in random seeds (and retake seeds; planner seeds when it plans) so the returned request
        regenerates the output."""
        return resolve_planner_seeds(with_seeds(request))

    def generate(
        self,
        request: Request15,
        *,
        progress: ProgressFn | None = None,
        plans: Sequence[SongPlan] | None = None,
    ) -> Result15:
        """Run one request of any 1.5 task; see :class:`songflow.pipeline.Result` (latents ``[B, T, C]``).

        With ``think`` (or simple mode) the planner runs first, unless ``plans`` (one per item, e.g. from a
        sidecar) are given; each planned song then runs as its own request (:func:`planned_request`), and a
        single song's result carries that request (it replays without the LM)."""
        if not needs_plan(request):
            return self._generate_songs(request, progress)
        request = self.resolve_seeds(request)
        t0 = time.perf_counter()
        if plans is None:
            plans = (
                self.planner.describe(request)
                if isinstance(request, Simple15)
                else self.planner.plan(request)
            )
        if len(plans) != request.params.batch_size:
            raise ConfigError(f"{len(plans)} song plans for batch_size {request.params.batch_size}")
        plan_s = time.perf_counter() - t0
        results = [
            self._generate_songs(planned_request(request, plan, i), progress) for i, plan in enumerate(plans)
        ]
        first = results[0]
        timings = {k: sum(r.timings_s.get(k, 0.0) for r in results) for k in first.timings_s}
        timings["planner"] = plan_s
        timings["total"] = timings.get("total", 0.0) + plan_s
        return Result15(
            torch.cat([r.audio for r in results]),
            first.sample_rate_hz,
            torch.cat([r.latents for r in results]),
            first.request if len(results) == 1 else request,  # type: ignore[arg-type]
            timings,
            plans=tuple(plans),
            planned_from=request,
        )

    def _generate_songs(self, request: Any, progress: ProgressFn | None) -> Result15:
        """One request of a DiT task (text2music, retake, repaint, cover), no planning."""
        with self._dit_lock:
            self.apply_loras(getattr(request, "loras", ()))  # this request's adapters (none: the base)
            if request.task == "extend":
                return self._run_extend(request, progress)
            return self._run_songs(request, progress)

    def _run_songs(self, request: Any, progress: ProgressFn | None) -> Result15:
        """:meth:`_generate_songs` under the lock: one DiT run (FlowEdit: its two phases), one decode."""
        return self._run(request, progress, self._diffuse)

    def _run_extend(self, request: Any, progress: ProgressFn | None) -> Result15:
        """Task "extend" under the lock: one DiT run per window of ``self.extend_window_frames``
        (:mod:`songflow.tasks.acestep_v15.extend`), then one decode of the whole result."""
        return self._run(request, progress, self._diffuse_extend)

    def _run(self, request: Any, progress: ProgressFn | None, body: Callable[..., Any]) -> Result15:
        """Resolve the request's settings and seeds, run ``body(request, settings, progress, timings) ->
        (latents, audio at 48 kHz)``, normalise, resample, time; the per-run caches are emptied after."""
        settings = resolve_settings(self.variant, request.params, request.task)
        request = self.resolve_seeds(request)
        request = replace(request, params=settings.applied_to(request.params))  # the sidecar shows them
        self._request, self._vae_calls = request, {}
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            latents, audio = body(request, settings, progress, timings)
            if request.params.normalization_db is not None:
                audio = peak_normalize(audio, request.params.normalization_db)
        finally:
            self._request = None
            self._sources.clear()
            self._references.clear()
        if self.output_sample_rate_hz != inputs.SAMPLE_RATE_HZ:
            from songflow.audio.resample import resample

            audio = resample(audio, inputs.SAMPLE_RATE_HZ, self.output_sample_rate_hz)
        timings["total"] = time.perf_counter() - t0
        return Result15(audio, self.output_sample_rate_hz, latents.float().cpu(), request, timings)

    def _diffuse(
        self, request: Any, settings: Any, progress: ProgressFn | None, timings: dict[str, float]
    ) -> tuple[Tensor, Tensor]:
        t0 = time.perf_counter()
        job = build_plan(self, request, settings)
        timings["conditions"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        n = job.plan.n_steps
        callback = None if progress is None else (lambda i, t, x: progress(i + 1, n))
        with self.placement.on_device(self.dit):
            if isinstance(job.plan, EditPlan15):  # FlowEdit: two phases over the one loop
                latents = run_edit15(self.dit, job.plan, callback)
            else:
                latents = run_plan15(self.dit, job.plan, callback)
        timings["diffusion"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        audio = self._finish(job, request, latents)
        timings["decode"] = time.perf_counter() - t2
        return latents, audio

    def _diffuse_extend(
        self, request: Any, settings: Any, progress: ProgressFn | None, timings: dict[str, float]
    ) -> tuple[Tensor, Tensor]:
        def run(plan: Any, callback: Any) -> Tensor:
            with self.placement.on_device(self.dit):
                return run_plan15(self.dit, plan, callback)

        t0 = time.perf_counter()
        src = self.encode_source(request.source_path, request.params.seeds)
        wav = self._sources[request.source_path]
        span = extend15.extend_span(wav.shape[-1], src.shape[1], request.left_s, request.right_s)
        timings["conditions"] = time.perf_counter() - t0
        latents = extend15.extend_latents(
            self, request, settings, src, span, run,
            window_frames=self.extend_window_frames, progress=progress, timings=timings,
        )  # fmt: skip
        t2 = time.perf_counter()
        audio = extend15.finish_extend15(self.decode(latents), wav, span, request.keep_source_samples)
        timings["decode"] = time.perf_counter() - t2
        return latents, audio


def load_v15_pipeline(
    layout: Any,
    *,
    device: str = "auto",
    dtype: str = "float32",
    offload: bool = False,
    vocab_path: str | Path | None = None,
    output_sample_rate_hz: int = inputs.SAMPLE_RATE_HZ,
    lm_offload: bool = False,
) -> Pipeline15:
    """Load a validated 1.5 layout (``songflow.checkpoint.acestep_v15.V15Layout``) into a pipeline;
    ``output_sample_rate_hz`` 44100 resamples the returned audio (48000: the model's own rate). The 5 Hz
    LM (``layout.lm_dir``) is loaded on first use; ``lm_offload`` (or ``offload``) keeps it on the CPU
    between uses."""
    if vocab_path is not None:
        raise ConfigError("ACE-Step 1.5 checkpoints carry their own tokenizer; leave out --vocab")
    if output_sample_rate_hz not in (44100, 48000):
        raise ConfigError(f"output sample rate {output_sample_rate_hz} Hz: choose 44100 or 48000")
    from songflow.checkpoint import acestep_v15 as ck
    from songflow.checkpoint import resolve_device, resolve_dtype

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    where = torch.device("cpu") if offload else dev
    dit = ck.load_v15_dit(layout.dit_dir, dtype=dt, device=where)
    components = Components15(
        dit=dit,
        vae=ck.load_v15_vae(layout.vae_dir, dtype=torch.float32 if dev.type == "cpu" else dt, device=where),
        text_encoder=ck.load_v15_text_encoder(layout.text_encoder_dir, dtype=dt, device=where),
        silence_latent=ck.load_silence_latent(layout.dit_dir),
    )
    pipe = Pipeline15(components, Placement(dev, dt, offload), variant=dit.config.variant)
    pipe.output_sample_rate_hz = output_sample_rate_hz
    pipe.checkpoint_root = Path(layout.root)
    pipe.planner = load_v15_planner(layout, device=dev, lm_offload=lm_offload or offload)
    return pipe
