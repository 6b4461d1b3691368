"""ACE-Step 1.5 VAE, text encoder and prompt strings: parity with the golden fixtures, plus invariants.

Parity tests (``pytest -k "v15 and (golden or parity)"``) read every expected value from
``../shared/golden/acestep_v15`` (``audio/vae_roundtrip``, ``text/text_encoder``, ``pipeline/*``) and skip
when it is absent. The VAE's float32 convolutions differ from the recording machine's by up to ~1.6e-4 of
the output's peak (random weights give peaks of ~3000; diffusers' own ``from_pretrained`` + ``decode`` shows
the same errors), hence the VAE tolerance.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from conftest import GOLDEN_V15_DIR, assert_close, load_tensors
from songflow.errors import AudioError, ConfigError
from songflow.models.acestep_v15.text_encoder import Qwen3TextEncoder
from songflow.models.acestep_v15.vae import (
    OobleckConfig,
    OobleckVAE,
    decode_overlap,
    plan_windows,
)
from songflow.text import acestep_v15_prompts as prompts

VAE_RTOL = 5e-4
PIPELINE_CASES = sorted(p.name for p in (GOLDEN_V15_DIR / "pipeline").glob("*") if (p / "case.json").exists())


# --------------------------------------------------------------------------------------------- helpers


def load_fixture_vae(checkpoints: Path) -> OobleckVAE:
    """The fixture VAE folder loaded as the checkpoint code does: config -> meta build -> strict load."""
    from songflow.checkpoint.strict import init_empty_weights, load_state_dict_strict

    folder = checkpoints / "vae"
    config = OobleckConfig.from_dict(json.loads((folder / "config.json").read_text()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's weight_norm deprecation inside diffusers
        with init_empty_weights():
            vae = OobleckVAE(config)
        load_state_dict_strict(
            vae.autoencoder, folder / "diffusion_pytorch_model.safetensors", dtype=torch.float32
        )
    return vae.eval()


def load_fixture_text_encoder(checkpoints: Path) -> Qwen3TextEncoder:
    from transformers import AutoTokenizer

    from songflow.checkpoint.strict import init_empty_weights, load_state_dict_strict

    folder = checkpoints / "Qwen3-Embedding-0.6B"
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    with init_empty_weights():
        encoder = Qwen3TextEncoder.from_config(json.loads((folder / "config.json").read_text()), tokenizer)
    load_state_dict_strict(encoder.model, folder / "model.safetensors", dtype=torch.float32)
    return encoder.eval()


class Case:
    """One ``pipeline/<name>`` case: its JSON and its tensors, with ``recorded_json.aliases`` resolved."""

    def __init__(self, root: Path, name: str):
        folder = root / "pipeline" / name
        self.name = name
        self.json = json.loads((folder / "case.json").read_text())
        self.tensors = load_tensors(folder / "tensors.safetensors")
        self.aliases: dict[str, str] = self.json.get("recorded_json", {}).get("aliases", {})

    def keys(self) -> set[str]:
        return set(self.tensors) | set(self.aliases)

    def __contains__(self, key: str) -> bool:
        return key in self.tensors or key in self.aliases

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[self.aliases.get(key, key)]

    @property
    def kwargs(self) -> dict:
        return self.json.get("generate_music_kwargs") or self.json["call_kwargs"]


@pytest.fixture(scope="module")
def v15_vae(golden_v15_checkpoints: Path) -> OobleckVAE:
    return load_fixture_vae(golden_v15_checkpoints)


@pytest.fixture(scope="module")
def v15_text_encoder(golden_v15_checkpoints: Path) -> Qwen3TextEncoder:
    return load_fixture_text_encoder(golden_v15_checkpoints)


@pytest.fixture(scope="module")
def tiny_vae() -> OobleckVAE:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return OobleckVAE(OobleckConfig.tiny()).eval()


def _case(golden_v15_dir: Path, name: str) -> Case:
    return Case(golden_v15_dir, name)


def _cot_fields(cot_text: str) -> dict[str, str]:
    """``name: value`` lines of the LM's CoT block (single-line fields only)."""
    out = {}
    for line in cot_text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() and not name.startswith("<"):
            out[name.strip()] = value.strip()
    return out


def expected_prompt_inputs(case: Case) -> tuple[str, str, str, str, str] | None:
    """(instruction, caption, metas, language, lyrics) the handler builds for ``case`` (None: underivable)."""
    kw = case.kwargs
    if "params" in kw:  # top-level inference.generate_music with the LM planner
        return _lm_prompt_inputs(case, kw["params"])
    task = kw.get("task_type", "text2music")
    duration = None
    if "src_audio" in kw and task != "text2music":
        duration = case["src_audio/waveform"].shape[-1] / 48000.0  # the source length, not the generated one
    elif kw.get("audio_duration") is not None and float(kw["audio_duration"]) > 0:
        duration = float(kw["audio_duration"])
    metas = prompts.metas_block(
        kw.get("bpm"), kw.get("time_signature", ""), kw.get("key_scale", ""), duration
    )
    instruction = kw.get("instruction") or prompts.DEFAULT_DIT_INSTRUCTION
    return instruction, kw["captions"], metas, kw.get("vocal_language", "en"), kw["lyrics"]


def _lm_prompt_inputs(case: Case, params: dict) -> tuple[str, str, str, str, str] | None:
    """The LM-thinking flow: LM metas fill the fields the user left empty; codes switch to cover."""
    if params.get("use_cot_caption", True):
        return None  # caption generated by the LM (possibly multi-line YAML): not derived here
    lm = _cot_fields(case.json["lm_calls"][-1]["cot_text"])
    metas = prompts.metas_block(
        params.get("bpm") or lm.get("bpm"),
        params.get("timesignature") or lm.get("timesignature", ""),
        params.get("keyscale") or lm.get("keyscale", ""),
        params.get("duration") or (float(lm["duration"]) if "duration" in lm else None),
    )
    language = params.get("vocal_language") or lm.get("language", "en")
    return prompts.TASK_INSTRUCTIONS["cover"], params["caption"], metas, language, params["lyrics"]


# ------------------------------------------------------------------------------------------ VAE parity


def test_v15_golden_vae_roundtrip(v15_vae: OobleckVAE, golden_v15_dir: Path) -> None:
    t = load_tensors(golden_v15_dir / "audio" / "vae_roundtrip.safetensors")
    with torch.no_grad():
        mean, std = v15_vae.encode(t["in/waveform"], sample_rate_hz=48000)
        decoded = v15_vae.decode(t["out/latent_mean"].transpose(1, 2))
    assert_close(mean.transpose(1, 2), t["out/latent_mean"], rtol=VAE_RTOL, name="latent_mean")
    assert_close(std.transpose(1, 2), t["out/latent_std"], rtol=VAE_RTOL, name="latent_std")
    assert_close(decoded, t["out/decoded_from_mean"], rtol=VAE_RTOL, name="decoded_from_mean")
    assert mean.shape[1] == v15_vae.frames_for_samples(t["in/waveform"].shape[-1])
    assert decoded.shape[-1] == t["out/latent_mean"].shape[-1] * v15_vae.hop_samples


@pytest.mark.parametrize("name", PIPELINE_CASES)
def test_v15_golden_tiled_decode(v15_vae: OobleckVAE, golden_v15_dir: Path, name: str) -> None:
    case = _case(golden_v15_dir, name)
    if "vae_decode/000/out" not in case:
        pytest.skip(f"{name} stores no vae_decode/000/out")
    latents = case["vae_decode/000/in"].transpose(1, 2)
    out = v15_vae.decode_tiled(latents)
    assert_close(out, case["vae_decode/000/out"], rtol=VAE_RTOL, name=f"{name} vae_decode")


def _reference_waveform(case: Case) -> torch.Tensor:
    """The official ``process_reference_audio`` on the stored clip, with the recorded randint offsets."""
    clip = case["reference_audio/waveform"].clamp(-1.0, 1.0)
    target, segment = 30 * 48000, 10 * 48000
    if clip.shape[-1] < target:
        clip = clip.repeat(1, math.ceil(target / clip.shape[-1]))
    third = clip.shape[-1] // 3
    offsets = [draw[2] for draw in case.json["recorded_json"]["python_random_randint"]]
    starts = [offsets[0], third + offsets[1], 2 * third + offsets[2]]
    return torch.cat([clip[:, s : s + segment] for s in starts], dim=-1)[None]


def _encoded_source(case: Case) -> tuple[torch.Tensor, str] | None:
    """(waveform fed to ``tiled_encode``, tensor key of its result) for the case, or None."""
    if "reference_audio/waveform" in case:
        return _reference_waveform(case), "generate_audio/in/refer_audio_acoustic_hidden_states_packed"
    if "vae_encode/000/mean" in case and "src_audio/waveform" in case:
        wav = case["vae_encode/000/in"] if "vae_encode/000/in" in case else case["src_audio/waveform"][None]
        return wav.clamp(-1.0, 1.0), ""
    return None


class _ReplayMoments(OobleckVAE):
    """The VAE with ``encode`` replaying recorded (mean, std) per call: tests the tiling, not the network."""

    def __init__(self, vae: OobleckVAE, moments: list[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__(vae.config, vae.autoencoder)
        self.moments = list(moments)

    def encode(self, wav, *, sample_rate_hz=None):  # type: ignore[override]
        self._check_waveform(wav, sample_rate_hz)
        mean, std = self.moments.pop(0)
        assert mean.shape[1] == self.frames_for_samples(wav.shape[-1]), "window length"
        return mean, std


def _expected_encode(case: Case, vae: OobleckVAE) -> tuple[torch.Tensor, list, list, torch.Tensor] | None:
    """(waveform, recorded moments, recorded noise, expected latents) of the case's ``tiled_encode``."""
    source = _encoded_source(case)
    if source is None:
        return None
    wav, result_key = source
    n = len(vae.encode_windows(wav.shape[-1]))
    assert all(f"vae_encode/{i:03d}/mean" in case for i in range(n)), "window count differs from the record"
    moments = [
        (case[f"vae_encode/{i:03d}/mean"].transpose(1, 2), case[f"vae_encode/{i:03d}/std"].transpose(1, 2))
        for i in range(n)
    ]
    noise = [case[f"noise/vae_sample_{i:03d}"].transpose(1, 2) for i in range(n)]
    if result_key:
        expected = case[result_key]
    else:  # the handler's source latents = its recorded mean + std * its recorded noise
        expected = moments[0][0] + moments[0][1] * noise[0]
    return wav, moments, noise, expected


@pytest.mark.parametrize("name", PIPELINE_CASES)
def test_v15_golden_tiled_encode_layout(v15_vae: OobleckVAE, golden_v15_dir: Path, name: str) -> None:
    """Windows, trims and noise use of ``encode_tiled`` vs the record (encoder replayed from the record)."""
    record = _expected_encode(_case(golden_v15_dir, name), v15_vae)
    if record is None:
        pytest.skip(f"{name} encodes no audio")
    wav, moments, noise, expected = record
    latents = _ReplayMoments(v15_vae, moments).encode_tiled(wav, noise=noise)
    assert torch.equal(latents, expected)


@pytest.mark.parametrize("name", PIPELINE_CASES)
def test_v15_golden_source_encode(v15_vae: OobleckVAE, golden_v15_dir: Path, name: str) -> None:
    """The real encoder on the recorded source clip (long chunked clips: the slow test below)."""
    case = _case(golden_v15_dir, name)
    record = _expected_encode(case, v15_vae)
    if record is None:
        pytest.skip(f"{name} encodes no audio")
    wav, moments, noise, expected = record
    w = v15_vae.encode_windows(wav.shape[-1])[0]
    if w.win_end > 10 * 48000:
        pytest.skip(f"{name}: {w.win_end / 48000:.0f} s window, checked by the slow full-encode test")
    with torch.no_grad():
        mean, std = v15_vae.encode(wav[:, :, w.win_start : w.win_end], sample_rate_hz=48000)
    assert_close(mean, moments[0][0], rtol=VAE_RTOL, name=f"{name} mean")
    assert_close(std, moments[0][1], rtol=VAE_RTOL, name=f"{name} std")
    if len(moments) == 1:
        latents = v15_vae.encode_tiled(wav, noise=noise)
        assert_close(latents, expected, rtol=VAE_RTOL, name=f"{name} sampled latents")


@pytest.mark.slow
@pytest.mark.parametrize("name", PIPELINE_CASES)
def test_v15_golden_tiled_encode_full(v15_vae: OobleckVAE, golden_v15_dir: Path, name: str) -> None:
    """The whole chunked encode with the real encoder (30 s reference clips take ~10 s on 2 cores)."""
    record = _expected_encode(_case(golden_v15_dir, name), v15_vae)
    if record is None:
        pytest.skip(f"{name} encodes no audio")
    wav, _, noise, expected = record
    assert_close(v15_vae.encode_tiled(wav, noise=noise), expected, rtol=VAE_RTOL, name=f"{name} latents")


# -------------------------------------------------------------------------------------- VAE invariants


def test_v15_vae_streaming_decode_equals_tiled(tiny_vae: OobleckVAE) -> None:
    latents = torch.randn(2, 60, 8, generator=torch.Generator().manual_seed(1))
    tiled = tiny_vae.decode_tiled(latents, chunk_frames=24, overlap_frames=4)  # 4 windows per item
    out = torch.full((2, 2, 60 * 1920), float("nan"))
    streamed = tiny_vae.decode_streaming(latents, chunk_frames=24, overlap_frames=4, out=out)
    assert streamed is out and torch.equal(streamed, tiled)
    assert torch.equal(tiny_vae.decode_streaming(latents[1:], 24, 4), tiled[1:])
    with torch.no_grad():  # within one window the tiled decode is the plain decode
        assert torch.equal(tiny_vae.decode_tiled(latents[:1, :20]), tiny_vae.decode(latents[:1, :20]))


def test_v15_vae_window_layout() -> None:
    for n, chunk, overlap in [(1000, 256, 64), (300, 256, 64), (129, 128, 32), (7, 4, 1)]:
        windows = plan_windows(n, chunk, overlap)
        assert windows[0].core_start == 0 and windows[-1].core_end == n
        assert all(a.core_end == b.core_start for a, b in zip(windows[:-1], windows[1:], strict=True))
        assert all(w.win_end - w.win_start <= chunk for w in windows)
    assert plan_windows(200, 256, 64) == plan_windows(200, 200, 64)[:1]
    assert decode_overlap(256, 64) == 64 and decode_overlap(64, 64) == 16 and decode_overlap(6, 64) == 4


def test_v15_vae_encode_tiled_windows(tiny_vae: OobleckVAE) -> None:
    wav = torch.randn(1, 2, 1920 * 40, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    kwargs = {"chunk_samples": 1920 * 16, "overlap_samples": 1920 * 3}
    windows = tiny_vae.encode_windows(wav.shape[-1], **kwargs)
    assert len(windows) == 4
    zeros = [torch.zeros(1, tiny_vae.frames_for_samples(w.win_end - w.win_start), 8) for w in windows]
    latents = tiny_vae.encode_tiled(wav, noise=zeros, **kwargs)
    assert latents.shape == (1, 40, 8)
    with torch.no_grad():
        first_mean, _ = tiny_vae.encode(wav[:, :, : windows[0].win_end])
    assert torch.equal(
        latents[:, : windows[0].core_end // 1920], first_mean[:, : windows[0].core_end // 1920]
    )
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(
        tiny_vae.encode_tiled(wav, generator=g1, **kwargs), tiny_vae.encode_tiled(wav, generator=g2, **kwargs)
    )
    with pytest.raises(ConfigError, match="noise"):
        tiny_vae.encode_tiled(wav, noise=zeros[:2], **kwargs)


@pytest.mark.parametrize(
    ("wav", "rate", "match"),
    [
        (torch.zeros(1, 1, 48000), None, "stereo"),
        (torch.zeros(2, 48000), None, "stereo"),
        (torch.zeros(1, 2, 48000), 44100, "44100 Hz"),
        (torch.full((1, 2, 48000), float("nan")), None, "NaN"),
        (torch.zeros(1, 2, 1000), None, "shorter than one latent frame"),
        (torch.zeros(1, 2, 48000, dtype=torch.int16), None, "floating point"),
    ],
)
def test_v15_vae_rejects_bad_audio(
    tiny_vae: OobleckVAE, wav: torch.Tensor, rate: int | None, match: str
) -> None:
    with pytest.raises(AudioError, match=match):
        tiny_vae.encode(wav, sample_rate_hz=rate)
    with pytest.raises(AudioError, match=match):
        tiny_vae.encode_tiled(wav, sample_rate_hz=rate)


def test_v15_vae_rejects_bad_latents_and_config(tiny_vae: OobleckVAE) -> None:
    for bad in (torch.zeros(1, 10, 64), torch.zeros(1, 8, 10)[0]):
        for fn in (tiny_vae.decode, tiny_vae.decode_tiled, tiny_vae.decode_streaming):
            with pytest.raises(ConfigError, match="latents"):
                fn(bad)
    with pytest.raises(ConfigError, match="unknown keys"):
        OobleckConfig.from_dict({"encoder_hidden_size": 16, "hop": 3})
    assert OobleckConfig.from_dict(OobleckConfig.tiny().to_dict()) == OobleckConfig.tiny()
    assert OobleckConfig().hop_samples == 1920 and OobleckConfig().latent_channels == 64


# ---------------------------------------------------------------------------------------- text encoder


def test_v15_golden_text_encoder(v15_text_encoder: Qwen3TextEncoder, golden_v15_dir: Path) -> None:
    t = load_tensors(golden_v15_dir / "text" / "text_encoder.safetensors")
    texts = json.loads((golden_v15_dir / "text" / "text_encoder.json").read_text())["prompts"]
    for i, text in enumerate(texts):
        ids, mask = v15_text_encoder.tokenize_captions([text])
        assert torch.equal(ids, t[f"{i}/input_ids"]) and torch.equal(mask, t[f"{i}/attention_mask"])
        with torch.no_grad():
            states = v15_text_encoder.encode_text(t[f"{i}/input_ids"])
            embeds = v15_text_encoder.embed_lyrics(t[f"{i}/input_ids"])
        assert_close(states, t[f"{i}/last_hidden_state"], name=f"{i} last_hidden_state")
        assert_close(embeds, t[f"{i}/embed_tokens"], name=f"{i} embed_tokens")


@pytest.mark.parametrize("name", PIPELINE_CASES)
def test_v15_golden_pipeline_text_states(
    v15_text_encoder: Qwen3TextEncoder, golden_v15_dir: Path, name: str
) -> None:
    case = _case(golden_v15_dir, name)
    calls = sorted({k.split("/")[1] for k in case.keys() if k.startswith("text_encoder/")})
    assert calls and "lyric_embed/input_ids" in case
    with torch.no_grad():
        for n in calls:
            states = v15_text_encoder.encode_text(case[f"text_encoder/{n}/input_ids"])
            assert_close(states, case[f"text_encoder/{n}/last_hidden_state"], name=f"{name} text_encoder/{n}")
        embeds = v15_text_encoder.embed_lyrics(case["lyric_embed/input_ids"])
    assert_close(embeds, case["lyric_embed/embeddings"], name=f"{name} lyric_embed")


def test_v15_text_encoder_padding_and_mask(v15_text_encoder: Qwen3TextEncoder) -> None:
    texts = ["# Caption\nshort", "# Caption\na much longer caption with more tokens"]
    ids, mask = v15_text_encoder.tokenize_captions(texts)
    n0 = int(mask[0].sum())
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape[1] == int(mask[1].sum())
    assert bool((ids[0, n0:] == v15_text_encoder.pad_token_id).all()) and int(mask[0, n0:].sum()) == 0
    with torch.no_grad():
        single = v15_text_encoder.encode_text(ids[:1, :n0])
        batched = v15_text_encoder.encode_text(ids)  # official: no mask; causal, so real tokens unaffected
        masked = v15_text_encoder.encode_text(ids, attention_mask=mask)
    assert_close(batched[:1, :n0], single, name="right padding, no mask")
    assert_close(masked[:1, :n0], single, name="right padding, mask")
    long_ids, _ = v15_text_encoder.tokenize_captions(["x" * 400])
    assert long_ids.shape[1] == 256
    assert v15_text_encoder.tokenize_lyrics(["y" * 3000])[0].shape[1] == 2048


# --------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("name", PIPELINE_CASES)
def test_v15_golden_prompts_and_token_ids(
    v15_text_encoder: Qwen3TextEncoder, golden_v15_dir: Path, name: str
) -> None:
    case = _case(golden_v15_dir, name)
    derived = expected_prompt_inputs(case)
    if derived is None:
        pytest.skip(f"{name}: the LM generated the caption; its prompt is not derived from the request")
    instruction, caption, metas, language, lyrics = derived
    caption_text = prompts.caption_prompt(instruction, caption, metas)
    lyric_text = prompts.lyrics_prompt(language, lyrics)
    recorded = case.json["recorded_json"]["text_inputs"]
    assert recorded == [prompts.recorded_text_input(caption_text, lyric_text)] * len(recorded)
    batch = len(recorded)
    text_ids, text_mask = v15_text_encoder.tokenize_captions([caption_text] * batch)
    lyric_ids, lyric_mask = v15_text_encoder.tokenize_lyrics([lyric_text] * batch)
    assert torch.equal(text_ids, case["text/text_token_ids"])
    assert torch.equal(lyric_ids, case["text/lyric_token_ids"])
    assert torch.equal(text_mask, case["text/text_attention_mask"].long())
    assert torch.equal(lyric_mask, case["text/lyric_attention_mask"].long())
    if "text/non_cover_text_token_ids" in case:  # audio_cover_strength < 1: the text2music prompt too
        plain = prompts.caption_prompt(prompts.DEFAULT_DIT_INSTRUCTION, caption, metas)
        ids, _ = v15_text_encoder.tokenize_captions([plain] * batch)
        assert torch.equal(ids, case["text/non_cover_text_token_ids"])


def test_v15_instructions() -> None:
    table = prompts.TASK_INSTRUCTIONS
    assert prompts.instruction_for("text2music") == table["text2music"] == prompts.DEFAULT_DIT_INSTRUCTION
    assert prompts.instruction_for("repaint") == table["repaint"]
    assert prompts.instruction_for("cover") == table["cover"]
    assert prompts.instruction_for("extract", "vocals") == "Extract the VOCALS track from the audio:"
    assert prompts.instruction_for("extract") == table["extract_default"]
    assert prompts.instruction_for("lego", "drums") == "Generate the DRUMS track based on the audio context:"
    assert prompts.instruction_for("lego", "") == table["lego_default"]
    assert prompts.instruction_for("complete", classes=["drums", "bass"]) == (
        "Complete the input track with DRUMS | BASS:"
    )
    assert prompts.instruction_for("complete") == table["complete_default"]
    assert prompts.instruction_for("no-such-task") == prompts.DEFAULT_DIT_INSTRUCTION
    assert prompts.format_instruction("Do it") == "Do it:" and prompts.format_instruction("Do:") == "Do:"


def test_v15_metas_and_prompt_format() -> None:
    assert prompts.metas_block() == (
        "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"
    )
    assert prompts.metas_block(0, "N/A", "  ", 1.9) == (
        "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 1 seconds\n"
    )
    assert prompts.metas_block(96, 4, "A minor", 2.0).splitlines() == [
        "- bpm: 96",
        "- timesignature: 4",
        "- keyscale: A minor",
        "- duration: 2 seconds",
    ]
    text = prompts.caption_prompt("Fill it", "", prompts.metas_block())
    assert text.startswith("# Instruction\nFill it:\n\n# Caption\n\n\n# Metas\n- bpm")
    assert text.endswith("seconds\n<|endoftext|>\n")
    assert prompts.lyrics_prompt("en", "") == "# Languages\nen\n\n# Lyric\n<|endoftext|>"
    with pytest.raises(ConfigError):
        prompts.metas_block(duration_s=True)
