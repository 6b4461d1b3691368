"""ACE-Step 1.5 task invariants on a tiny random checkpoint (runs anywhere, no fixtures needed).

A batch equals its singles; retake at variance 0 is the original; repaint returns the source's samples
outside the span (and what the latents keep there is measured); a cover at strength 0 is the text2music
song; output lengths are exact; settings a checkpoint cannot use are refused with what to use instead;
bad audio gets a clear error.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from songflow.errors import AudioError, ConfigError, SongflowError
from songflow.requests_v15 import Cover15, Params15, Repaint15, Retake15, Text2Music15

SR = 48000


@pytest.fixture(scope="module")
def ckpt15(tmp_path_factory) -> Path:
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint

    return build_random_v15_checkpoint(tmp_path_factory.mktemp("v15") / "checkpoints", seed=0)


@pytest.fixture(scope="module")
def pipe15(ckpt15):
    from songflow.families import load_pipeline

    return load_pipeline(ckpt15, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def base15(tmp_path_factory):
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint
    from songflow.families import load_pipeline

    root = build_random_v15_checkpoint(
        tmp_path_factory.mktemp("v15b") / "checkpoints", variant="base", seed=1
    )
    return load_pipeline(root, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def source_wav(tmp_path_factory) -> Path:
    """6 s of a stereo chord with some noise, 48 kHz."""
    t = np.arange(6 * SR) / SR
    rng = np.random.default_rng(0)
    left = (
        0.3 * np.sin(2 * np.pi * 220 * t)
        + 0.2 * np.sin(2 * np.pi * 330 * t)
        + 0.02 * rng.standard_normal(t.size)
    )
    right = 0.3 * np.sin(2 * np.pi * 277 * t) + 0.02 * rng.standard_normal(t.size)
    path = tmp_path_factory.mktemp("src") / "source.wav"
    sf.write(str(path), np.stack([left, right], 1).astype(np.float32), SR, subtype="FLOAT")
    return path


def _song(**kw) -> Text2Music15:
    params = kw.pop("params", Params15(seeds=(11,)))
    return Text2Music15(
        caption="warm synth pop",
        lyrics="[verse]\nla la",
        duration_s=kw.pop("duration_s", 6.0),
        params=params,
        **kw,
    )


def test_v15_family_presets_and_resolved_request(pipe15):
    assert pipe15.family.name == "acestep-v15" and pipe15.variant == "turbo"
    result = pipe15.generate(_song())
    p = result.request.params
    assert (p.steps, p.shift, p.guidance_scale) == (8, 3.0, 1.0)  # the turbo preset, spelled out
    assert result.sample_rate_hz == SR and result.audio.shape == (1, 2, 6 * SR)
    again = pipe15.generate(result.request)  # replaying the resolved request gives the same song
    assert torch.equal(again.audio, result.audio)


def test_v15_batch_equals_singles(pipe15):
    batch = pipe15.generate(_song(params=Params15(seeds=(3, 4), batch_size=2)))
    for i, seed in enumerate((3, 4)):
        single = pipe15.generate(_song(params=Params15(seeds=(seed,))))
        assert torch.allclose(batch.latents[i], single.latents[0], atol=1e-5), seed


def test_v15_retake_variance(pipe15):
    original = pipe15.generate(_song())
    same = pipe15.generate(Retake15(**_fields(original.request), variance_frac=0.0, retake_seeds=(99,)))
    assert torch.allclose(same.latents, original.latents, atol=1e-6)
    other = pipe15.generate(Retake15(**_fields(original.request), variance_frac=0.5, retake_seeds=(99,)))
    assert (other.latents - original.latents).abs().max() > 1e-2


def _fields(request) -> dict:
    import dataclasses

    return {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}


def test_v15_repaint_keeps_the_source_outside_the_span(pipe15, source_wav):
    source, _ = sf.read(str(source_wav), dtype="float32")
    result = pipe15.generate(
        Repaint15(
            caption="drums", source_path=str(source_wav), start_s=2.0, end_s=4.0, params=Params15(seeds=(5,))
        )
    )
    audio = result.audio[0].numpy().T
    assert audio.shape == source.shape  # exactly the source's length
    fade = int(0.025 * SR)
    a, b = int(2.0 * 25) * 1920, int(4.0 * 25) * 1920
    assert np.array_equal(audio[: a - fade], source[: a - fade])
    assert np.array_equal(audio[b + fade :], source[b + fade :])
    assert np.abs(audio[a:b] - source[a:b]).max() > 1e-3  # the span was regenerated


def test_v15_repaint_explicit_chunk_mask(pipe15, source_wav):
    """The explicit chunk mask (default) marks the span for the DiT; "auto" reproduces all ones."""
    seen = []
    context = pipe15.context

    def spy(src, chunk, *a, **kw):
        seen.append(chunk.clone())
        return context(src, chunk, *a, **kw)

    pipe15.context = spy
    try:
        for mode in ("explicit", "auto"):
            request = Repaint15(
                caption="x",
                source_path=str(source_wav),
                start_s=1.0,
                end_s=2.0,
                params=Params15(seeds=(1,), chunk_mask_mode=mode),
            )
            pipe15.generate(request)
    finally:
        del pipe15.context
    explicit, auto = seen
    assert explicit[0, :, 0].nonzero().flatten().tolist() == list(range(25, 50))
    assert bool((auto == 1).all())


def test_v15_cover_at_strength_zero_is_the_text2music_song(pipe15, source_wav):
    """With cover strength 0 every step uses the plain condition (text2music instruction, silence source)."""
    seeds = Params15(seeds=(8,))
    cover = pipe15.generate(
        Cover15(caption="folk", lyrics="", source_path=str(source_wav), cover_strength_frac=0.0, params=seeds)
    )
    song = pipe15.generate(Text2Music15(caption="folk", lyrics="", duration_s=6.0, params=seeds))
    assert torch.allclose(cover.latents, song.latents, atol=1e-6)
    full = pipe15.generate(Cover15(caption="folk", source_path=str(source_wav), params=seeds))
    assert (full.latents - song.latents).abs().max() > 1e-3


def test_v15_guided_cover_switches_to_the_text2music_condition(base15, source_wav):
    """Base/sft guidance on a cover with strength < 1: the unconditional states follow each condition's
    length (the cover's and the text2music one after the switch have different prompt lengths), and
    strength 0 is the guided text2music song."""
    seeds = Params15(seeds=(8,), steps=2)
    half = base15.generate(Cover15(caption="folk", source_path=str(source_wav), cover_strength_frac=0.5,
                                   params=seeds))  # fmt: skip
    zero = base15.generate(Cover15(caption="folk", source_path=str(source_wav), cover_strength_frac=0.0,
                                   params=seeds))  # fmt: skip
    song = base15.generate(Text2Music15(caption="folk", duration_s=6.0, params=seeds))
    assert torch.isfinite(half.latents).all() and not torch.allclose(half.latents, song.latents, atol=1e-4)
    assert torch.allclose(zero.latents, song.latents, atol=1e-6)


def test_v15_output_length_exact_and_legacy(pipe15):
    exact = pipe15.generate(_song(duration_s=3.3))
    assert exact.audio.shape[-1] == round(3.3 * SR)
    legacy = pipe15.generate(_song(duration_s=3.3, params=Params15(seeds=(11,), legacy_output_length=True)))
    assert legacy.audio.shape[-1] == 128 * 1920  # the reference's minimum of 128 latent frames
    assert torch.equal(exact.latents, legacy.latents)  # the same run; only the cut differs


def test_v15_custom_turbo_timesteps_are_snapped(pipe15):
    result = pipe15.generate(_song(params=Params15(seeds=(1,), timesteps=(0.97, 0.62, 0.3))))
    assert result.request.params.timesteps == (0.97, 0.62, 0.3)
    too_many = tuple(1.0 - i / 25 for i in range(21))
    with pytest.raises(ConfigError, match="at most 20"):
        Params15(timesteps=too_many)


@pytest.mark.parametrize(
    "params, match",
    [
        (Params15(guidance_scale=5.0), "guidance-distilled"),
        (Params15(steps=30), "always runs 8 steps"),
        (Params15(shift=2.5), "shift 1, 2 or 3"),
    ],
)
def test_v15_turbo_refuses_what_it_cannot_use(pipe15, params, match):
    with pytest.raises(ConfigError, match=match):
        pipe15.generate(_song(params=params))


def test_v15_base_runs_guided_and_refuses_custom_timesteps(base15):
    p = Params15(seeds=(2,), steps=4, guidance_scale=3.0)
    result = base15.generate(_song(params=p, duration_s=2.0))
    assert result.request.params.steps == 4 and result.request.params.guidance_scale == 3.0
    with pytest.raises(ConfigError, match="sft"):
        base15.generate(_song(params=Params15(timesteps=(1.0, 0.5)), duration_s=2.0))
    adg = base15.generate(_song(params=replace(p, guidance="adg"), duration_s=2.0))
    assert torch.isfinite(adg.latents).all() and (adg.latents - result.latents).abs().max() > 0


def test_v15_reference_audio_changes_the_timbre_condition(pipe15, source_wav):
    plain = pipe15.generate(_song())
    timbre = pipe15.generate(_song(reference_path=str(source_wav)))
    assert (plain.latents - timbre.latents).abs().max() > 1e-4


def test_v15_audio_codes_condition_the_song(pipe15):
    codes = tuple(range(0, 64000, 2133))[:30]  # 6 s of 5 Hz codes
    a = pipe15.generate(_song(audio_codes=codes))
    b = pipe15.generate(_song(audio_codes=codes[::-1]))
    assert (a.latents - b.latents).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="audio codes"):
        _song(audio_codes=(64000,))


def test_v15_bad_audio_is_refused_clearly(pipe15, tmp_path):
    nan = tmp_path / "nan.wav"
    data = np.zeros((SR, 2), np.float32)
    data[100] = np.nan
    sf.write(str(nan), data, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        pipe15.generate(Cover15(caption="x", source_path=str(nan)))
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros((SR, 2), np.float32), SR)
    with pytest.raises(AudioError, match="silent"):
        pipe15.generate(Repaint15(caption="x", source_path=str(silent)))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(SongflowError):
        pipe15.generate(Cover15(caption="x", source_path=str(junk)))


def test_v15_other_rates_and_mono_sources_are_converted(pipe15, tmp_path):
    mono = tmp_path / "mono44.wav"
    t = np.arange(3 * 44100) / 44100
    sf.write(str(mono), (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32), 44100)
    result = pipe15.generate(Cover15(caption="x", source_path=str(mono), params=Params15(seeds=(1,))))
    assert result.audio.shape == (1, 2, 3 * SR)


def test_v15_cover_encodes_the_reference_once_and_a_batch_equals_its_singles(pipe15, source_wav):
    """A cover below full strength conditions twice but VAE-encodes its reference once; a batch encodes
    the source once and samples it per seed, so each row equals its single run."""
    calls = []
    encode = pipe15._encode_reference

    def counted(path, seed):
        calls.append((path, seed))
        return encode(path, seed)

    pipe15._encode_reference = counted
    try:
        fields = dict(
            caption="x", source_path=str(source_wav), reference_path=str(source_wav), cover_strength_frac=0.5
        )
        batch = pipe15.generate(Cover15(**fields, params=Params15(seeds=(3, 4), batch_size=2)))
        assert calls == [(str(source_wav), 3), (str(source_wav), 4)]  # once per item, not per condition
        for i, seed in enumerate((3, 4)):
            single = pipe15.generate(Cover15(**fields, params=Params15(seeds=(seed,))))
            assert torch.allclose(batch.latents[i], single.latents[0], atol=1e-5), seed
    finally:
        del pipe15._encode_reference


@pytest.mark.parametrize("task", ["extract", "lego", "complete"])
def test_v15_turbo_refuses_the_base_tasks(pipe15, source_wav, task):
    from songflow.requests_v15 import request15_from_dict

    request = request15_from_dict({"task": task, "source_path": str(source_wav), "params": {"seeds": [1]}})
    with pytest.raises(ConfigError, match="load a base checkpoint"):
        pipe15.generate(request)


def test_v15_base_stem_tasks_keep_their_context(base15, source_wav):
    """extract / complete run over the whole source (its exact length) with the source latents as the DiT's
    context and the task's instruction; lego is a repaint that keeps the mix in the context (a spy on the
    context sees the source's latents inside the span, where repaint sees silence) and keeps the source's
    own samples outside its span."""
    from songflow.requests_v15 import Complete15, Extract15, Lego15

    source, _ = sf.read(str(source_wav), dtype="float32")
    seen: list[tuple[str, torch.Tensor]] = []
    context, encode = base15.context, base15.encode_conditions

    def spy_context(src, chunk, *a, **kw):
        seen.append(("src", src.clone()))
        return context(src, chunk, *a, **kw)

    def spy_encode(request, instruction, *a, **kw):
        seen.append((instruction, torch.empty(0)))
        return encode(request, instruction, *a, **kw)

    base15.context, base15.encode_conditions = spy_context, spy_encode
    p = Params15(seeds=(3,), steps=2)
    try:
        extract = base15.generate(Extract15(source_path=str(source_wav), track="vocals", params=p))
        complete = base15.generate(Complete15(source_path=str(source_wav), classes="drums, bass", params=p))
        span = {"source_path": str(source_wav), "start_s": 1.0, "end_s": 3.0, "params": p}
        lego = base15.generate(Lego15(track="drums", **span))
        base15.generate(Repaint15(**span))
    finally:
        del base15.context, base15.encode_conditions
    instructions = [name for name, _ in seen if name != "src"]
    assert instructions == [
        "Extract the VOCALS track from the audio:",
        "Complete the input track with DRUMS | BASS:",
        "Generate the DRUMS track based on the audio context:",
        "Repaint the mask area based on the given conditions:",
    ]
    srcs = [t for name, t in seen if name == "src"]
    assert torch.equal(srcs[0], srcs[1])  # extract and complete: the same source context
    a, b = 25, 75  # the span in latent frames
    assert torch.equal(srcs[2][:, a:b], srcs[0][:, a:b])  # lego keeps the mix inside the span
    assert not torch.equal(srcs[3][:, a:b], srcs[0][:, a:b])  # repaint puts silence there
    for result in (extract, complete, lego):
        assert result.audio[0].numpy().T.shape == source.shape
    fade = int(0.025 * SR)
    audio = lego.audio[0].numpy().T
    assert np.array_equal(audio[: a * 1920 - fade], source[: a * 1920 - fade])
    assert np.abs(audio[a * 1920 : b * 1920] - source[a * 1920 : b * 1920]).max() > 1e-3
