"""ACE-Step 1.5 LoRA training on a tiny random checkpoint: data sources, conditions equal to the pipeline's,
the loss falls on a repeated batch, only the adapter changes, the adapter folder is the official PEFT layout
and loads back (on the decoder and through a 1.5 request), a full decoder fine-tune writes a checkpoint the
pipeline loads, and bad input gets clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from songflow.errors import ConfigError
from songflow.interfaces.cli.train import load_host
from songflow.training.config import TrainConfig, apply_overrides

SR = 48000
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "v15_tiny_lora.yaml"


def _wav(path: Path, hz: float, seconds: float = 3.0) -> Path:
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * hz * t) + 0.01 * np.random.default_rng(int(hz)).standard_normal(t.size)
    sf.write(str(path), np.stack([x, 0.8 * x], 1).astype(np.float32), SR)
    return path


@pytest.fixture(scope="module")
def ckpt15(tmp_path_factory) -> Path:
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint

    return build_random_v15_checkpoint(tmp_path_factory.mktemp("v15t") / "checkpoints", seed=3)


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    """A folder of audio with the official scanner's sidecars (caption, lyrics, JSON metadata)."""
    folder = tmp_path_factory.mktemp("songs")
    _wav(folder / "a.wav", 220.0)
    (folder / "a.caption.txt").write_text("gentle waltz, piano")
    (folder / "a.json").write_text(json.dumps({"bpm": 90, "timesignature": "3", "keyscale": "G major"}))
    _wav(folder / "b.wav", 330.0)
    (folder / "b.caption.txt").write_text("slow waltz, strings")
    (folder / "b.lyrics.txt").write_text("[verse]\nla la la")
    return folder


def _cfg(ckpt: Path, data: Path, out: Path, *extra: str) -> TrainConfig:
    return TrainConfig.from_file(
        CONFIG,
        [
            f"model.checkpoint_dir={ckpt}", f"data.dataset_path={data}", f"output_dir={out}",
            "optim.max_steps=12", "optim.warmup_steps=1", "optim.lr=3e-3", "log_every=1", "save_every=6",
            "progress=false", "data.shuffle=false", "lora.dropout=0.0", *extra,
        ],
    )  # fmt: skip


def test_official_dataset_json(tmp_path):
    from songflow.training.v15_data import read_songs

    _wav(tmp_path / "x.wav", 200.0)
    doc = {
        "metadata": {"name": "demo", "custom_tag": "", "tag_position": "append", "genre_ratio": 0},
        "samples": [
            {"id": "s1", "audio_path": "x.wav", "caption": "bright pop", "custom_tag": "zzstyle",
             "bpm": 120, "keyscale": "C major", "timesignature": "4", "duration": 3, "language": "en",
             "lyrics": "[verse]\nhello", "labeled": True, "is_instrumental": False},
            {"id": "s2", "audio_path": "x.wav", "caption": "c", "genre": "jazz", "prompt_override": "genre",
             "labeled": True, "lyrics": ""},
            {"id": "s3", "audio_path": "x.wav", "caption": "never used", "labeled": False},
        ],
    }  # fmt: skip
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(doc))
    found, skipped = read_songs(path)
    assert [s.key for s in found] == ["s1", "s2"] and skipped == {"unlabeled": 1}
    first, second = found
    assert first.caption == "bright pop, zzstyle" and first.audio_path == tmp_path / "x.wav"
    assert (first.bpm, first.key_scale, first.time_signature, first.duration_s) == (120, "C major", "4", 3.0)
    assert second.caption == "jazz" and second.lyrics == "[Instrumental]" and second.language == "unknown"
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(ConfigError, match="not an ACE-Step 1.5 dataset JSON"):
        read_songs(path)
    with pytest.raises(ConfigError, match="dataset not found"):
        read_songs(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="must be an ACE-Step 1.5 dataset JSON"):
        read_songs(tmp_path / "x.wav")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no training songs"):
        read_songs(tmp_path / "empty")


def test_conditions_equal_the_pipelines(ckpt15, songs, tmp_path):
    """The cached encoder states and context are what Pipeline15 builds for that text2music request."""
    from songflow.families import load_pipeline
    from songflow.requests_v15 import Params15, Text2Music15
    from songflow.text.acestep_v15_prompts import instruction_for
    from songflow.training.v15_data import V15Cache, preprocess_v15

    report = preprocess_v15(songs, ckpt15, tmp_path / "cache", load_host=load_host)
    assert report.written == 2 and not report.skipped
    item = V15Cache(tmp_path / "cache", conditions="pipeline")[0]
    pipe = load_pipeline(ckpt15, device="cpu", dtype="float32")
    request = Text2Music15(
        caption="gentle waltz, piano", lyrics="[Instrumental]", bpm=90, key_scale="G major",
        time_signature="3", vocal_language="unknown", duration_s=3.0, params=Params15(seeds=(0,)),
    )  # fmt: skip
    enc, _ = pipe.encode_conditions(request, instruction_for("text2music"), 3.0, 1)
    assert torch.equal(item["encoder_states"], enc[0].float())
    n = item["target_latents"].shape[0]
    assert n == 75 and item["context_latents"].shape == (n, 2 * item["target_latents"].shape[1])
    assert torch.equal(
        item["context_latents"][:, : item["target_latents"].shape[1]], pipe.silence_latent[0, :n]
    )
    with pytest.raises(ConfigError, match="official"):
        V15Cache(tmp_path / "cache", conditions="official")


def test_lora_training_changes_only_the_adapter(ckpt15, songs, tmp_path):
    from safetensors import safe_open

    from songflow.checkpoint.acestep_v15 import load_v15_dit, validate_v15
    from songflow.checkpoint.lora import load_lora
    from songflow.training.loop import single_process
    from songflow.training.module import step_generator
    from songflow.training.v15 import V15Trainer

    cfg = _cfg(ckpt15, songs, tmp_path / "run", "data.batch_size=2")
    trainer = V15Trainer(cfg, single_process("cpu"), load_host=load_host)
    dit = trainer.module.dit
    base = {k: v.clone() for k, v in dit.state_dict().items() if "lora_" not in k}
    batch = trainer.collate([trainer.dataset[0], trainer.dataset[1]])
    with torch.no_grad():
        before = float(trainer.module(batch, step_generator(7, 0))["loss"])
    final = trainer.run(0)
    with torch.no_grad():
        after = float(trainer.module(batch, step_generator(7, 0))["loss"])
    rows = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert after < 0.8 * before, (before, after)
    state = dit.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())  # the base DiT is bit-identical

    assert sorted(p.name for p in final.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "FEATURE_EXTRACTION"
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"] and config["r"] == 8
    with safe_open(str(final / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert "base_model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.layers.1.cross_attn.o_proj.lora_B.weight" in keys
    assert len(keys) == 2 * 8 * dit.config.num_hidden_layers
    assert (tmp_path / "run" / "checkpoints" / "step=6" / "lora" / "adapter_model.safetensors").is_file()

    fresh = load_v15_dit(validate_v15(ckpt15).dit_dir, dtype=torch.float32)
    load_lora(fresh.decoder, final)
    dit.eval()
    x = torch.randn(1, 75, dit.config.audio_acoustic_hidden_dim)
    args = (x, 0.5, batch["context_latents"][:1], batch["encoder_states"][:1])
    with torch.no_grad():
        assert torch.allclose(fresh.velocity(*args), dit.velocity(*args), atol=1e-5)


def test_adapter_loads_in_a_v15_request(ckpt15, songs, tmp_path):
    from songflow.families import load_pipeline
    from songflow.requests import LoraRef
    from songflow.requests_v15 import Params15, Text2Music15
    from songflow.training.trainer import train

    cfg = _cfg(ckpt15, songs, tmp_path / "run", "optim.max_steps=3", "save_every=100")
    final = train(cfg, load_host=load_host)
    pipe = load_pipeline(ckpt15, device="cpu", dtype="float32")
    song = Text2Music15(caption="gentle waltz", duration_s=2.0, params=Params15(seeds=(5,)))
    plain = pipe.generate(song).latents
    styled = pipe.generate(Text2Music15(**{**song.__dict__, "loras": (LoraRef(str(final), 1.0),)})).latents
    assert torch.isfinite(styled).all() and not torch.equal(plain, styled)
    assert torch.equal(pipe.generate(song).latents, plain)  # the request after it runs on the base again


def test_full_fine_tune_writes_a_loadable_checkpoint(ckpt15, songs, tmp_path):
    """``lora.enabled=false``: only the decoder moves; ``final/`` is a 1.5 root the pipeline loads."""
    from songflow.checkpoint.acestep_v15 import load_v15_dit, validate_v15
    from songflow.families import load_pipeline
    from songflow.requests_v15 import Params15, Text2Music15
    from songflow.training.loop import single_process
    from songflow.training.v15 import V15Trainer

    cfg = _cfg(ckpt15, songs, tmp_path / "run", "lora.enabled=false", "optim.max_steps=4", "save_every=100")
    trainer = V15Trainer(cfg, single_process("cpu"), load_host=load_host)
    base = {k: v.clone() for k, v in trainer.module.dit.state_dict().items()}
    n_decoder = sum(p.numel() for p in trainer.module.dit.decoder.parameters())
    assert sum(p.numel() for _, p in trainer.module.trainable()) == n_decoder
    final = trainer.run(0)
    layout, old = validate_v15(final), validate_v15(ckpt15)
    assert layout.dit_name == old.dit_name and layout.vae_dir.resolve() == old.vae_dir.resolve()
    saved = load_v15_dit(layout.dit_dir, dtype=torch.float32).state_dict()
    moved = {k for k, v in saved.items() if not torch.equal(v, base[k])}
    assert moved and all(k.startswith("decoder.") for k in moved)
    assert all(torch.equal(saved[k], v) for k, v in trainer.module.dit.state_dict().items())
    song = Text2Music15(caption="gentle waltz", duration_s=2.0, params=Params15(seeds=(5,)))
    tuned = load_pipeline(final, device="cpu", dtype="float32").generate(song).latents
    plain = load_pipeline(ckpt15, device="cpu", dtype="float32").generate(song).latents
    assert torch.isfinite(tuned).all() and not torch.equal(tuned, plain)


def test_bad_configs_are_refused(ckpt15, songs, tmp_path):
    from songflow.training.trainer import cosine_lr_lambda, train, trainer_class
    from songflow.training.v15 import sample_v15_timesteps

    with pytest.raises(ConfigError, match="dataset not found"):
        train(_cfg(ckpt15, tmp_path / "nowhere", tmp_path / "b"), load_host=load_host)
    with pytest.raises(ConfigError, match="attention"):
        train(_cfg(ckpt15, songs, tmp_path / "c", "lora.target_modules=[to_q]"), load_host=load_host)
    with pytest.raises(ConfigError, match="v15.timesteps"):
        _cfg(ckpt15, songs, tmp_path / "d", "v15.timesteps=uniform")
    v1_like = tmp_path / "v1"
    (v1_like / "ace_step_transformer").mkdir(parents=True)
    with pytest.raises(ConfigError, match="only applies to ACE-Step 1.5"):
        trainer_class(
            apply_overrides(TrainConfig(), [f"model.checkpoint_dir={v1_like}", "v15.timesteps=turbo"])
        )
    f = cosine_lr_lambda(100, 400)  # official: warm-up over min(100, 400 // 10) = 40 steps from 0.1 x lr
    assert (
        f(0) == pytest.approx(0.1) and f(40) == pytest.approx(1.0) and f(399) == pytest.approx(0.01, abs=1e-3)
    )
    g = torch.Generator().manual_seed(1)
    t = sample_v15_timesteps(4096, g, "logit_normal", turbo=torch.ones(8), mu=-0.4, sigma=1.0)
    g = torch.Generator().manual_seed(1)
    a, b = (
        torch.sigmoid(torch.randn(4096, generator=g) - 0.4),
        torch.sigmoid(torch.randn(4096, generator=g) - 0.4),
    )
    assert torch.equal(t, torch.maximum(a, b))
    table = torch.tensor([1.0, 0.5, 0.25])
    drawn = sample_v15_timesteps(64, torch.Generator().manual_seed(0), "turbo", turbo=table, mu=0, sigma=1)
    assert set(drawn.tolist()) == {1.0, 0.5, 0.25}
