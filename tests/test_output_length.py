"""Exact output lengths (reference_behaviour R22) and the source's own samples outside a repaint or extend
window (R23), through the pipeline on the shipped tiny model; the splice helpers on their own."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import soundfile as sf
import torch

from songflow import load_pipeline
from songflow.audio.resample import resample
from songflow.audio.splice import equal_power_ramps, fit_length, keep_span, splice, window
from songflow.requests import AudioToAudio, Edit, Extend, GenerationParams, Repaint, Text2Music

TAGS = "funk, pop, 105 BPM"
PARAMS = GenerationParams(steps=2, guidance_interval=1.0, seeds=(3,))
SOURCE_S = 7.988  # the source: 86 frames when truncated, 87 as the codec pads it
FADE_S = 0.05


@pytest.fixture(scope="module", params=[48000, 44100])
def pipe(request):
    return load_pipeline(None, output_sample_rate_hz=request.param)


def _source_file(tmp_path: Path, rate: int, seconds: float = SOURCE_S) -> tuple[Path, torch.Tensor]:
    """A stereo test signal (two tones and a little noise) of ``round(seconds · rate)`` samples."""
    n = round(seconds * rate)
    t = torch.arange(n, dtype=torch.float64) / rate
    g = torch.Generator().manual_seed(0)
    left = 0.4 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
    right = 0.3 * torch.sin(2 * math.pi * 330 * t) + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
    wav = torch.stack([left, right]).float()
    path = tmp_path / f"source_{rate}.wav"
    sf.write(path, wav.T.numpy(), rate, subtype="FLOAT")
    return path, wav


def _at_output_rate(pipe, wav: torch.Tensor, rate: int) -> torch.Tensor:
    return resample(wav, rate, pipe.output_sample_rate_hz)


# -- R22: lengths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("duration_s", [5.0, 2.5])
def test_text2music_has_exactly_the_requested_length(pipe, duration_s):
    rate = pipe.output_sample_rate_hz
    result = pipe.generate(Text2Music(tags=TAGS, duration_s=duration_s, params=PARAMS))
    assert result.audio.shape[-1] == round(duration_s * rate)
    assert result.latents.shape[-1] == pipe.geometry.frames_from_seconds(duration_s)  # the reference's
    legacy = pipe.generate(
        Text2Music(tags=TAGS, duration_s=duration_s, params=replace(PARAMS, legacy_output_length=True))
    )
    n_decoded = math.ceil(4096 * result.latents.shape[-1] * rate / 44100)
    assert legacy.audio.shape[-1] == n_decoded < result.audio.shape[-1]
    # the decoded audio is short: the exact output is it, then silence
    assert torch.equal(result.audio[..., :n_decoded], legacy.audio)
    assert not result.audio[..., n_decoded:].any()


def test_the_readme_command_gives_exactly_20_seconds():
    """``songflow generate ... --duration 20``: 960000 samples at 48 kHz (the reference: 19.97 s)."""
    pipe = load_pipeline(None)
    result = pipe.generate(Text2Music(tags="waltz, 90 bpm", duration_s=20.0, params=PARAMS))
    assert pipe.output_sample_rate_hz == 48000 and result.audio.shape == (1, 2, 960000)


def test_generate_many_gives_each_request_its_length(pipe):
    rate = pipe.output_sample_rate_hz
    requests = [Text2Music(tags=t, duration_s=1.5, params=PARAMS) for t in ("pop", "jazz")]
    for result in pipe.generate_many(requests):
        assert result.audio.shape == (1, 2, round(1.5 * rate))


@pytest.mark.parametrize("file_rate", [48000, 44100])
def test_source_tasks_keep_the_source_length(pipe, tmp_path, file_rate):
    path, wav = _source_file(tmp_path, file_rate)
    n = _at_output_rate(pipe, wav, file_rate).shape[-1]
    requests = [
        Repaint(tags=TAGS, source_path=str(path), start_s=2.0, end_s=4.0, variance_frac=0.8, params=PARAMS),
        AudioToAudio(tags=TAGS, reference_path=str(path), strength_frac=0.5, params=PARAMS),
        Edit(tags=TAGS, source_path=str(path), target_tags="jazz", params=PARAMS),
    ]
    for request in requests:
        result = pipe.generate(request)
        assert result.audio.shape[-1] == n, request.task
        legacy = pipe.generate(replace(request, params=replace(PARAMS, legacy_output_length=True)))
        assert legacy.audio.shape[-1] > n  # the reference's length: one padded frame more


def test_repeated_repaints_do_not_grow_the_song(pipe, tmp_path):
    rate = pipe.output_sample_rate_hz
    path, wav = _source_file(tmp_path, rate)
    for k in range(3):
        request = Repaint(tags=TAGS, source_path=str(path), start_s=1.0, end_s=3.0, params=PARAMS)
        audio = pipe.generate(request).audio
        assert audio.shape[-1] == wav.shape[-1]
        path = tmp_path / f"pass_{k}.wav"
        sf.write(path, audio[0].T.numpy(), rate, subtype="FLOAT")


@pytest.mark.parametrize(("left_s", "right_s"), [(0.0, 1.5), (1.3, 0.0), (1.0, 2.0), (0.55, 0.8)])
def test_extend_is_source_plus_left_plus_right(pipe, tmp_path, left_s, right_s):
    rate = pipe.output_sample_rate_hz
    path, wav = _source_file(tmp_path, 44100, seconds=3.3)
    src = _at_output_rate(pipe, wav, 44100)
    request = Extend(tags=TAGS, source_path=str(path), left_s=left_s, right_s=right_s, params=PARAMS)
    for keep in (True, False):
        result = pipe.generate(replace(request, keep_source_samples=keep))
        assert result.audio.shape[-1] == round(left_s * rate) + src.shape[-1] + round(right_s * rate)


# -- R23: the source's own samples outside the window ----------------------------------------------------


@pytest.mark.parametrize("file_rate", [48000, 44100])
def test_repaint_returns_the_source_samples_outside_the_window(pipe, tmp_path, file_rate):
    rate = pipe.output_sample_rate_hz
    path, wav = _source_file(tmp_path, file_rate)
    src = _at_output_rate(pipe, wav, file_rate)
    request = Repaint(
        tags=TAGS,
        source_path=str(path),
        start_s=2.0,
        end_s=4.0,
        variance_frac=0.9,
        params=PARAMS,
        retake_seeds=(5,),
    )
    out = pipe.generate(request).audio[0]
    a, b = round(2.0 * rate), round(4.0 * rate)
    assert out.shape == src.shape
    assert torch.equal(out[:, :a], src[:, :a]) and torch.equal(out[:, b:], src[:, b:])
    fade = round(FADE_S * rate)
    decoded = pipe.generate(replace(request, keep_source_samples=False)).audio[0]
    inner = slice(a + fade, pipe.geometry.frames_from_seconds(4.0) * 4096 * rate // 44100 - fade)
    assert torch.equal(out[:, inner], decoded[:, inner])  # the regenerated part is the decoded audio
    # decoded only (the old behaviour): the outside is the codec's round trip, not the source
    assert decoded.shape == src.shape and not torch.equal(decoded[:, b:], src[:, b:])


def test_repaint_window_past_the_end_keeps_the_start(pipe, tmp_path):
    rate = pipe.output_sample_rate_hz
    path, wav = _source_file(tmp_path, rate)
    request = Repaint(tags=TAGS, source_path=str(path), start_s=6.0, end_s=30.0, params=PARAMS)
    out = pipe.generate(request).audio[0]
    a = round(6.0 * rate)
    assert out.shape == wav.shape and torch.equal(out[:, :a], wav[:, :a])
    assert not torch.equal(out[:, -100:], wav[:, -100:])  # regenerated up to the song's end, no fade out


@pytest.mark.parametrize(("left_s", "right_s"), [(1.0, 2.0), (0.0, 1.0), (1.5, 0.0)])
def test_extend_returns_the_source_samples_exactly(pipe, tmp_path, left_s, right_s):
    rate = pipe.output_sample_rate_hz
    path, wav = _source_file(tmp_path, 48000, seconds=3.3)
    src = _at_output_rate(pipe, wav, 48000)
    request = Extend(
        tags=TAGS, source_path=str(path), left_s=left_s, right_s=right_s, params=PARAMS, retake_seeds=(5,)
    )
    out = pipe.generate(request).audio[0]
    n_left = round(left_s * rate)
    assert torch.equal(out[:, n_left : n_left + src.shape[-1]], src)
    decoded = pipe.generate(replace(request, keep_source_samples=False)).audio[0]
    assert not torch.equal(decoded[:, n_left : n_left + src.shape[-1]], src)
    fade = round(FADE_S * rate)
    far = torch.ones(out.shape[-1], dtype=torch.bool)
    far[max(n_left - fade, 0) : n_left + src.shape[-1] + fade] = False
    assert torch.equal(out[:, far], decoded[:, far])  # the new parts away from the joins: decoded


# -- the helpers -------------------------------------------------------------------------------------------


def test_equal_power_ramps():
    fade_out, fade_in = equal_power_ramps(64)
    assert torch.allclose(fade_out**2 + fade_in**2, torch.ones(64), atol=1e-6)
    assert fade_out[0] > 0.99 and fade_in[-1] > 0.99 and torch.all(fade_out[1:] < fade_out[:-1])


def test_fit_length_and_window():
    x = torch.arange(10.0).view(1, 1, 10)
    assert torch.equal(fit_length(x, 4), x[..., :4])
    assert torch.equal(fit_length(x, 12), torch.cat([x, torch.zeros(1, 1, 2)], -1))
    assert torch.equal(window(x, -2, 5)[0, 0], torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0]))
    assert torch.equal(window(x, 8, 4)[0, 0], torch.tensor([8.0, 9.0, 0.0, 0.0]))


def test_splice_is_exact_outside_and_crossfades_inside():
    base, new = torch.zeros(1, 2, 100), torch.ones(3, 2, 100)
    out = splice(base, new, 20, 60, 8)
    assert out.shape == new.shape
    assert not out[..., :20].any() and not out[..., 60:].any()
    assert torch.equal(out[..., 28:52], new[..., 28:52])
    assert torch.all((out[..., 20:28] > 0) & (out[..., 20:28] < 1))
    edge = splice(base, new, 0, 100, 8)  # the signal's own edges get no fade
    assert torch.equal(edge, new)
    short = splice(base, new, 40, 44, 8)  # fades shortened to half the region
    assert short[..., 40:44].gt(0).all() and not short[..., 44:].any()


def test_keep_span_is_exact_and_continuous():
    t = torch.arange(200.0)
    audio = torch.sin(t / 7).expand(2, 2, 200).clone()
    source = (torch.sin(t[50:150] / 7) + 0.5).expand(2, 100)
    out = keep_span(audio, source, 50, 20)
    assert torch.equal(out[..., 50:150], source.expand(2, 2, 100))
    assert torch.equal(out[..., :30], audio[..., :30]) and torch.equal(out[..., 170:], audio[..., 170:])
    # no step at the joins (a hard cut would jump by 0.5): the neighbours take up the offset, fading it
    assert (out[..., 49] - out[..., 50]).abs().max() < 0.2
    assert (out[..., 150] - out[..., 149]).abs().max() < 0.2
    with pytest.raises(ValueError):
        keep_span(audio, source, 150, 20)
