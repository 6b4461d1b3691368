"""DiT training: config, losses, data cache, full/LoRA/REPA steps, exact resume (tiny models, CPU)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from songflow.checkpoint.acestep_v1 import load_transformer
from songflow.errors import ConfigError
from songflow.sampling.schedules import legacy_train_sigmas
from songflow.training.config import SSLModelConfig, TrainConfig, apply_overrides
from songflow.training.data import LatentCache, collate, preprocess
from songflow.training.losses import (
    ConditionInputs,
    apply_condition_dropout,
    flow_matching_loss,
    noisy_latents,
    repa_loss,
    sample_timesteps,
)
from songflow.training.module import FlowMatchingModule, step_generator
from songflow.training.trainer import STATE_NAME, train

SR = 48000


def _write_dataset(root: Path) -> Path:
    import datasets
    import soundfile as sf

    audio = root / "audio"
    audio.mkdir(parents=True)
    rng = np.random.RandomState(0)
    rows: dict[str, list] = {k: [] for k in ("keys", "filename", "tags", "speaker_emb_path", "norm_lyrics")}
    rows["recaption"] = []

    def add(key: str, path: Path, lyrics: str = "") -> None:
        rows["keys"].append(key)
        rows["filename"].append(str(path))
        rows["tags"].append(["pop", "piano"])
        rows["speaker_emb_path"].append("")
        rows["norm_lyrics"].append(lyrics)
        rows["recaption"].append({})

    n = np.arange(SR * 2) / SR
    for i in range(3):
        x = 0.3 * np.sin(2 * np.pi * 110 * (i + 1) * n)[:, None] + 0.01 * rng.randn(n.size, 2)
        sf.write(audio / f"c{i}.wav", x.astype(np.float32), SR)
        add(f"c{i}", audio / f"c{i}.wav", "[verse]\nhello world" if i else "")
    sf.write(audio / "silent.wav", np.zeros((SR, 2), np.float32), SR)
    add("silent", audio / "silent.wav")
    (audio / "corrupt.wav").write_bytes(b"RIFF....not audio at all")
    add("corrupt", audio / "corrupt.wav")
    add("missing", audio / "missing.wav")
    datasets.Dataset.from_dict(rows).save_to_disk(str(root / "ds"))
    return root / "ds"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from songflow.checkpoint.random_checkpoint import build_random_checkpoint

    root = tmp_path_factory.mktemp("train")
    ckpt = build_random_checkpoint(root / "ckpt")
    ds = _write_dataset(root)
    report = preprocess(ds, ckpt, root / "cache")
    return {"root": root, "ckpt": ckpt, "ds": ds, "cache": root / "cache", "report": report}


def _cfg(env, out: Path, *extra: str) -> TrainConfig:
    cfg = TrainConfig.from_file("configs/train/tiny_full.yaml")
    return apply_overrides(
        cfg,
        [
            f"model.checkpoint_dir={env['ckpt']}",
            f"data.cache_dir={env['cache']}",
            f"output_dir={out}",
            "progress=false",
            *extra,
        ],
    )


def _losses(out: Path) -> list[float]:
    with (out / "logs" / "metrics.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


# ------------------------------------------------------------------------------------------- config


def test_unknown_config_keys_are_rejected_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        apply_overrides(TrainConfig(), ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"data\.bogus"):
        TrainConfig.from_dict({"data": {"bogus": 1}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1e-4\nwhatever: 3\n")
    with pytest.raises(ConfigError, match="whatever"):
        TrainConfig.from_file(bad)
    with pytest.raises(ConfigError, match="optim.lr"):
        apply_overrides(TrainConfig(), ["optim.lr=fast"])


def test_overrides_and_yaml_examples_parse():
    cfg = apply_overrides(TrainConfig(), ["optim.lr=3e-4", "lora.enabled=true", "optim.betas=[0.9, 0.99]"])
    assert cfg.optim.lr == 3e-4 and cfg.lora.enabled and cfg.optim.betas == (0.9, 0.99)
    lora = TrainConfig.from_file("configs/train/lora_waltz.yaml")
    assert lora.lora.enabled and lora.lora.r == 256 and lora.optim.betas == (0.8, 0.9)
    assert TrainConfig.from_dict(lora.to_dict()) == lora


# ------------------------------------------------------------------------------------------- losses


def test_timesteps_are_logit_normal_over_the_shift_grid():
    grid = legacy_train_sigmas(3.0)
    sigma = sample_timesteps(20000, torch.Generator().manual_seed(0), grid)
    assert torch.isin(sigma, grid).all()
    # median of the logit-normal index is 500 -> grid[500]; shift 3 pushes it above 0.5
    assert abs(sigma.median().item() - grid[500].item()) < 0.01 and grid[500] > 0.7


def test_condition_dropout_rates_and_zeroing():
    b = 20000
    cond = ConditionInputs(
        torch.ones(b, 3, 2), torch.ones(b, 3), torch.ones(b, 4), torch.full((b, 5), 7), torch.ones(b, 5)
    )
    out, drops = apply_condition_dropout(cond, torch.Generator().manual_seed(1))
    for name, p in (("text", 0.15), ("lyric", 0.15), ("speaker", 0.5)):
        assert abs(drops[name].float().mean().item() - p) < 0.01, name
    assert torch.equal(out.text_states.sum((1, 2)) == 0, drops["text"])
    assert torch.equal(out.text_mask, cond.text_mask)  # text mask kept
    assert torch.equal(out.lyric_ids.sum(1) == 0, drops["lyric"])
    assert torch.equal(out.lyric_mask.sum(1) == 0, drops["lyric"])  # ids AND mask
    assert torch.equal(out.speaker_embeds.sum(1) == 0, drops["speaker"])
    # independent per condition
    both = (drops["text"] & drops["speaker"]).float().mean().item()
    assert abs(both - 0.075) < 0.01


def test_flow_matching_loss_is_sigma2_weighted_velocity_mse():
    g = torch.Generator().manual_seed(0)
    x0, noise, v = (torch.randn(3, 8, 16, 5, generator=g) for _ in range(3))
    sigma = torch.tensor([0.1, 0.5, 0.9])
    expected = ((sigma[:, None, None, None] ** 2) * (v - (noise - x0)) ** 2).flatten(1).mean(1).mean()
    assert torch.allclose(flow_matching_loss(v, x0, noise, sigma), expected, atol=1e-6)
    assert flow_matching_loss(noise - x0, x0, noise, sigma).item() < 1e-10  # exact velocity -> 0
    # padded frames do not count
    mask = torch.ones(3, 7)
    mask[:, 5:] = 0
    pad = torch.nn.functional.pad
    padded = flow_matching_loss(pad(v, (0, 2), value=9.0), pad(x0, (0, 2)), pad(noise, (0, 2)), sigma, mask)
    assert torch.allclose(padded, expected, atol=1e-6)
    assert torch.allclose(noisy_latents(x0, noise, sigma)[1], 0.5 * noise[1] + 0.5 * x0[1])


def test_repa_loss_interpolates_and_is_zero_when_aligned():
    feats = torch.randn(2, 10, 6)
    assert repa_loss(feats, feats).item() < 1e-6
    proj = torch.randn(2, 4, 6, requires_grad=True)
    loss = repa_loss(proj, feats)
    loss.backward()
    assert 0 < loss.item() < 2 and proj.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- data


def test_preprocess_skips_bad_rows_and_counts_them(env):
    report = env["report"]
    assert report.written == 3
    assert dict(report.skipped) == {"silent": 1, "unreadable": 1, "missing": 1}
    cache = LatentCache(env["cache"])
    assert len(cache) == 3 and cache.index["skipped"]["missing"] == 1
    batch = collate([cache[0], cache[1]])
    assert batch["latents"].shape[:3] == (2, 8, 16)
    assert batch["lyric_ids"].shape[0] == 2 and batch["speaker_embeds"].abs().sum() == 0
    # empty lyrics -> the official [0] id with mask 0; padding extends the mask with zeros
    i_empty = [it["key"] for it in (cache[0], cache[1])].index("c0")
    assert batch["lyric_mask"][i_empty].sum() == 0


# ------------------------------------------------------------------------------------------- training


def _fixed_batch(env):
    cache = LatentCache(env["cache"])
    return collate([cache[1]])


def test_steps_reduce_the_loss_on_a_fixed_batch(env):
    cfg = _cfg(env, env["root"] / "unused")
    module = FlowMatchingModule(load_transformer(env["ckpt"] / "ace_step_transformer"), cfg)
    batch = _fixed_batch(env)
    opt = torch.optim.AdamW([p for _, p in module.trainable()], lr=2e-3)

    def loss() -> torch.Tensor:
        return module(batch, step_generator(7, 0))["loss"]

    with torch.no_grad():
        before = loss().item()
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert np.isfinite(after) and after < 0.7 * before


def test_gradient_checkpointing_gives_the_same_loss_and_grads(env):
    batch = _fixed_batch(env)
    results = []
    for flag in (False, True):
        cfg = _cfg(env, env["root"] / "unused", f"model.gradient_checkpointing={str(flag).lower()}")
        module = FlowMatchingModule(load_transformer(env["ckpt"] / "ace_step_transformer"), cfg)
        out = module(batch, step_generator(3, 1))["loss"]
        out.backward()
        results.append((out.item(), module.transformer.proj_in.early_conv_layers[0].weight.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def _final_layer_dtype(env, precision: str) -> tuple[float, torch.dtype]:
    """(loss, the dtype the DiT's last linear computed in) of one training step on the fixed batch."""
    cfg = _cfg(env, env["root"] / "unused", f"model.precision={precision}")
    module = FlowMatchingModule(load_transformer(env["ckpt"] / "ace_step_transformer"), cfg)
    seen: list[torch.dtype] = []
    hook = module.transformer.final_layer.linear.register_forward_hook(
        lambda m, i, o, seen=seen: seen.append(o.dtype)
    )
    out = module(_fixed_batch(env), step_generator(3, 1))["loss"]
    out.backward()
    hook.remove()
    grad = module.transformer.proj_in.early_conv_layers[0].weight.grad
    assert torch.isfinite(grad).all() and grad.dtype == torch.float32
    return out.item(), seen[0]


def test_bf16_mixed_autocasts_on_cpu_with_native_bf16_and_stays_close_to_fp32(env, monkeypatch, caplog):
    """``model.precision=bf16-mixed`` runs the DiT's matmuls in bf16 on a CPU with AVX512-BF16/AMX (weights
    stay fp32), with no fallback warning."""
    from songflow.checkpoint import device as device_mod

    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    fp32 = _final_layer_dtype(env, "32")
    with caplog.at_level("WARNING"):
        bf16 = _final_layer_dtype(env, "bf16-mixed")
    assert fp32[1] == torch.float32 and bf16[1] == torch.bfloat16
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05)
    assert not [r for r in caplog.records if "bfloat16" in r.getMessage()]


def test_bf16_mixed_falls_back_to_fp32_on_a_cpu_without_native_bf16(env, monkeypatch, caplog):
    """On an AVX2-only CPU bf16 autocast is emulated (a 153 s first step was seen): fp32, one warning line for
    the whole run, however many steps and micro-batches."""
    from songflow.checkpoint import device as device_mod

    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        result = train(_cfg(env, env["root"] / "no_bf16", "model.precision=bf16-mixed", "optim.max_steps=2"))
        _, dtype = _final_layer_dtype(env, "bf16-mixed")
    assert dtype == torch.float32
    assert result is not None
    warned = [r for r in caplog.records if "no native bfloat16" in r.getMessage()]
    assert len(warned) == 2  # one per module built: the train() run and the direct step above
    assert "bf16-mixed falls back to fp32" in warned[0].getMessage()


def test_resume_reproduces_the_uninterrupted_run(env, tmp_path):
    full = train(_cfg(env, tmp_path / "a", "optim.max_steps=4", "save_every=2", "keep_last=3"))
    ckpt2 = tmp_path / "a" / "checkpoints" / "step=2"
    assert (ckpt2 / STATE_NAME).is_file()
    resumed = train(_cfg(env, tmp_path / "b", "optim.max_steps=4", "save_every=2", f"resume_from={ckpt2}"))
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")[2:]
    from safetensors.torch import load_file

    wa = load_file(full / "ace_step_transformer" / "diffusion_pytorch_model.safetensors")
    wb = load_file(resumed / "ace_step_transformer" / "diffusion_pytorch_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the export is an engine-loadable checkpoint folder
    from songflow.checkpoint.acestep_v1 import load_checkpoint

    loaded = load_checkpoint(full, load_text_encoder=False)
    assert torch.equal(
        loaded.transformer.proj_in.early_conv_layers[0].weight, wa["proj_in.early_conv_layers.0.weight"]
    )


def test_gradient_accumulation_runs_and_logs(env, tmp_path):
    train(_cfg(env, tmp_path / "acc", "optim.max_steps=2", "optim.accumulate=2", "data.batch_size=2"))
    with (tmp_path / "acc" / "logs" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2"] and float(rows[0]["clips_per_s"]) > 0


def test_ddp_two_cpu_ranks_step_like_one_process_accumulating_two(env, tmp_path):
    """``torchrun`` with 2 gloo ranks of batch 1 takes the same step as one process accumulating two
    micro-batches of 1: the same clips, the same random draws, gradients averaged across ranks (the logged
    loss and pre-clip gradient norm match; a sum instead of a mean would double the norm)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    common = ("optim.max_steps=1", "data.batch_size=1", "log_every=1", "device=cpu")
    single = train(_cfg(env, tmp_path / "one", *common, "optim.accumulate=2"))
    _cfg(env, tmp_path / "ddp", *common).to_file(tmp_path / "ddp.json")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*launch, "-m", "songflow", "train", str(tmp_path / "ddp.json")],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {}
    for name in ("one", "ddp"):
        with (tmp_path / name / "logs" / "metrics.csv").open() as f:
            rows[name] = list(csv.DictReader(f))
    assert len(rows["one"]) == len(rows["ddp"]) == 1
    for key in ("loss", "grad_norm"):
        a, b = float(rows["one"][0][key]), float(rows["ddp"][0][key])
        assert abs(a - b) <= 1e-4 * abs(a), (key, a, b)
    folder = "ace_step_transformer/diffusion_pytorch_model.safetensors"
    w0 = load_file(env["ckpt"] / folder)
    wa, wb = load_file(single / folder), load_file(tmp_path / "ddp" / "final" / folder)
    assert wa.keys() == wb.keys()
    # the two updates agree (AdamW's first step divides by |g| + eps, so bins with |g| ~ eps differ a little)
    step_a = torch.cat([(wa[k].float() - w0[k].float()).flatten() for k in wa])
    step_b = torch.cat([(wb[k].float() - w0[k].float()).flatten() for k in wa])
    assert step_a.norm() > 0 and (step_a - step_b).norm() / step_a.norm() < 1e-3, (step_a - step_b).norm()


# ------------------------------------------------------------------------------------------- skeleton


def test_prune_keeps_the_newest_checkpoints_and_resume_last_finds_the_newest(tmp_path):
    from songflow.training.loop import checkpoint_folders, find_checkpoint, prune_checkpoints

    for step in (3, 10, 1, 20):
        folder = tmp_path / "checkpoints" / f"step={step}"
        folder.mkdir(parents=True)
        (folder / STATE_NAME).write_bytes(b"x")
    (tmp_path / "checkpoints" / "step=99").mkdir()  # no state file: not a checkpoint
    assert [p.name for p in checkpoint_folders(tmp_path)] == ["step=1", "step=3", "step=10", "step=20"]
    assert find_checkpoint(tmp_path, "last").name == "step=20" and find_checkpoint(tmp_path, "") is None
    deleted = prune_checkpoints(tmp_path, 2)
    assert [p.name for p in deleted] == ["step=1", "step=3"]
    assert [p.name for p in checkpoint_folders(tmp_path)] == ["step=10", "step=20"]
    prune_checkpoints(tmp_path, 0)  # keeps at least one
    assert [p.name for p in checkpoint_folders(tmp_path)] == ["step=20"]
    with pytest.raises(ConfigError, match="no trainer_state.pt"):
        find_checkpoint(tmp_path, str(tmp_path / "checkpoints" / "step=99"))


def test_csv_log_formats_and_truncates_on_resume(tmp_path):
    from songflow.training.loop import CsvLog

    path = tmp_path / "logs" / "m.csv"
    log = CsvLog(path, ["step", "loss", "note"], resume_step=0)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1 / 3, "note": "a"})
    CsvLog(path, ["step", "loss", "note"], resume_step=2)  # a resume at step 2 drops step 3
    CsvLog(path, ["other"]).write({"step": 4, "note": "b"})  # appending keeps the file's columns
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "4"]
    assert rows[0]["loss"] == "0.333333" and rows[2]["loss"] == "nan" and rows[2]["note"] == "b"


def test_loop_logs_saves_and_prunes_on_schedule(tmp_path):
    from songflow.training.loop import (
        CsvLog,
        LoopSettings,
        TrainingLoop,
        checkpoint_folder,
        checkpoint_folders,
        clip_and_step,
        single_process,
    )

    class Toy(TrainingLoop):
        def __init__(self):
            self.info, self.output_dir = single_process("cpu"), tmp_path
            self.settings = LoopSettings(max_steps=7, log_every=3, save_every=2, keep_last=2)
            self.log = CsvLog(tmp_path / "log.csv", ["step", "loss", "grad_norm"])
            self.w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
            self.opt = torch.optim.SGD([self.w], lr=0.1)
            self.saved: list[int] = []

        def run_step(self, step):
            self.opt.zero_grad()
            loss = (self.w**2).sum() / 2
            loss.backward()
            return {"loss": float(loss.detach()), "grad_norm": clip_and_step(self.opt, [self.w], 1.0)}

        def save_checkpoint(self, done):
            self.saved.append(done)
            (checkpoint_folder(tmp_path, done) / STATE_NAME).parent.mkdir(parents=True)
            (checkpoint_folder(tmp_path, done) / STATE_NAME).write_bytes(b"x")

    toy = Toy()
    assert toy.run_steps(0) == 7 and toy.step == 7
    assert toy.saved == [2, 4, 6, 7]
    assert [p.name for p in checkpoint_folders(tmp_path)] == ["step=6", "step=7"]
    with (tmp_path / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["3", "6", "7"]
    assert float(rows[0]["grad_norm"]) == pytest.approx(5.0 - 2 * 0.1)  # pre-clip norm, clipped steps of 0.1


def test_lora_training_updates_only_the_adapter_and_reloads(env, tmp_path):
    from songflow.checkpoint.lora import load_lora
    from songflow.nn.lora import inject

    cfg = _cfg(env, tmp_path / "lora", "lora.enabled=true", "lora.r=4", "lora.alpha=8", "optim.max_steps=3")
    base = load_transformer(env["ckpt"] / "ace_step_transformer")
    module = FlowMatchingModule(load_transformer(env["ckpt"] / "ace_step_transformer"), cfg)
    names = [n for n, _ in module.trainable()]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)

    out = train(cfg)
    state = torch.load(tmp_path / "lora" / "checkpoints" / "step=3" / STATE_NAME, weights_only=True)
    assert set(state["params"]) == set(names)
    assert any(v.abs().sum() > 0 for k, v in state["params"].items() if ".lora_B." in k)  # B moved off 0

    # reference: base + the trained adapter tensors; candidate: base + load_lora(saved folder)
    ref = load_transformer(env["ckpt"] / "ace_step_transformer")
    inject(ref, list(cfg.lora.target_modules), name="default", r=4, alpha=8, use_rslora=True)
    with torch.no_grad():
        params = dict(ref.named_parameters())
        for k, v in state["params"].items():
            params[k].copy_(v)
    cand = load_transformer(env["ckpt"] / "ace_step_transformer")
    load_lora(cand, out)
    batch = _fixed_batch(env)
    args = (batch["text_states"], batch["text_mask"], batch["speaker_embeds"] + 0.1)
    args = args + (batch["lyric_ids"], batch["lyric_mask"])
    x = torch.randn(1, 8, 16, batch["latents"].shape[-1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y_ref = ref(x, torch.tensor([0.6]), ref.encode(*args))
        y_cand = cand(x, torch.tensor([0.6]), cand.encode(*args))
        y_base = base(x, torch.tensor([0.6]), base.encode(*args))
    assert torch.allclose(y_ref, y_cand, atol=1e-5)
    assert not torch.allclose(y_cand, y_base, atol=1e-5)  # the adapter does something
    # the base weights were not trained
    assert torch.equal(
        cand.transformer_blocks[0].ff.inverted_conv.conv.weight,
        base.transformer_blocks[0].ff.inverted_conv.conv.weight,
    )


def test_repa_with_a_tiny_ssl_model_reaches_the_projectors(env, tmp_path):
    from transformers import HubertConfig, HubertModel

    dim = load_transformer(env["ckpt"] / "ace_step_transformer").config.ssl_latent_dims[0]
    hcfg = HubertConfig(
        hidden_size=dim,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed(0)
    HubertModel(hcfg).save_pretrained(tmp_path / "hubert")
    ssl = SSLModelConfig(path=str(tmp_path / "hubert"), sample_rate_hz=16000, chunk_seconds=1.0)
    report = preprocess(env["ds"], env["ckpt"], tmp_path / "cache", ssl_models=[ssl])
    assert report.written == 3
    cfg = _cfg(
        env,
        tmp_path / "repa",
        f"data.cache_dir={tmp_path / 'cache'}",
        "repa.enabled=true",
        "repa.block=1",
        f"repa.ssl_models=[{{path: '{ssl.path}', chunk_seconds: 1.0}}]",
        "optim.max_steps=2",
    )
    cache = LatentCache(tmp_path / "cache", n_ssl=1)
    batch = collate([cache[0]])
    assert batch["ssl"][0][0].shape[-1] == dim
    module = FlowMatchingModule(
        load_transformer(env["ckpt"] / "ace_step_transformer", with_projectors=True), cfg
    )
    terms = module(batch, step_generator(0, 0))
    assert torch.isfinite(terms["repa"]) and terms["repa"] > 0
    terms["loss"].backward()
    proj = module.transformer.projectors[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    assert module.transformer.projectors[1][0].weight.grad is None  # only configured SSL targets
    train(cfg)
    with (tmp_path / "repa" / "logs" / "metrics.csv").open() as f:
        assert all(float(r["repa"]) > 0 for r in csv.DictReader(f))


def test_cli_train_and_preprocess(env, tmp_path):
    from songflow.interfaces.cli.train import add_train_parser

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "train",
            "preprocess",
            "--dataset",
            str(env["ds"]),
            "--checkpoint",
            str(env["ckpt"]),
            "--out",
            str(tmp_path / "c"),
            "--set",
            "progress=false",
        ]
    )
    assert args.func(args) == 0 and (tmp_path / "c" / "index.json").is_file()
    args = parser.parse_args(
        [
            "train",
            "configs/train/tiny_full.yaml",
            "--set",
            f"model.checkpoint_dir={env['ckpt']}",
            "--set",
            f"data.cache_dir={tmp_path / 'c'}",
            "--set",
            f"output_dir={tmp_path / 'o'}",
            "--set",
            "optim.max_steps=2",
            "--set",
            "progress=false",
            "--set",
            "samples.tags=[pop piano]",
            "--set",
            "samples.duration_s=2",
            "--set",
            "samples.steps=2",
        ]
    )
    assert args.func(args) == 0 and (tmp_path / "o" / "final" / "ace_step_transformer").is_dir()
    # periodic sample renders: the tiny config saves every 10 steps, so the final export renders step 2
    from songflow.audio.io import load_audio

    wav, rate = load_audio(tmp_path / "o" / "samples" / "step=2" / "sample_0.wav")
    assert wav.shape[0] == 2 and abs(wav.shape[-1] / rate - 2.0) < 0.2 and torch.isfinite(wav).all()
    bad = parser.parse_args(["train", "configs/train/tiny_full.yaml", "--set", "optim.nope=1"])
    with pytest.raises(ConfigError, match="optim.nope"):
        bad.func(bad)


def test_init_and_package_make_a_self_contained_default_model(env, tmp_path):
    """``train init`` builds the songflow-tiny structure over a trained codec with a tokenizer that knows
    the dataset's tag words; ``train package`` makes a link-free copy (DiT in bf16) that the engine loads."""
    from safetensors import safe_open
    from transformers import PreTrainedTokenizerFast

    from songflow.checkpoint.acestep_v1 import load_checkpoint
    from songflow.families import load_pipeline
    from songflow.interfaces.cli.train import add_train_parser
    from songflow.requests import GenerationParams, Text2Music
    from songflow.training.default_model import songflow_tiny_configs

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    init = tmp_path / "init"
    args = parser.parse_args(
        ["train", "init", "--dataset", str(env["ds"]), "--dcae", str(env["ckpt"] / "music_dcae_f8c8"),
         "--vocoder", str(env["ckpt"]), "--out", str(init)]
    )  # fmt: skip
    assert args.func(args) == 0
    ckpt = load_checkpoint(init, load_text_encoder=False)
    assert ckpt.transformer.config == songflow_tiny_configs()[0]
    tok = PreTrainedTokenizerFast.from_pretrained(init / "umt5-base")
    ids = tok("pop, piano, 132 bpm")["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == 7  # pop , piano , 132 bpm </s>
    assert tok.unk_token_id in tok("zydeco")["input_ids"]

    (init / "music_vocoder").rename(tmp_path / "voc")  # a linked component is copied as plain files
    (init / "music_vocoder").symlink_to(tmp_path / "voc")
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    dest = tmp_path / "shipped"
    dest.mkdir()
    (dest / "stale.txt").write_text("replaced as a whole")
    args = parser.parse_args(["train", "package", str(init), "--out", str(dest), "--card", str(card)])
    assert args.func(args) == 0
    assert not (dest / "stale.txt").exists() and (dest / "MODEL_CARD.md").read_text() == "# card\n"
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    with safe_open(dest / "ace_step_transformer" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    result = load_pipeline(dest).generate(
        Text2Music(tags="pop, piano", lyrics="[inst]", duration_s=1.0, params=GenerationParams(steps=2))
    )
    assert result.audio[0].shape[0] == 2 and torch.isfinite(result.audio[0]).all()
