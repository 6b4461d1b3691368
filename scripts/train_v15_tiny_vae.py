"""Train a tiny ACE-Step 1.5 Oobleck VAE on the synthetic corpus (not run in CI).

    python scripts/train_v15_tiny_vae.py --corpus CORPUS --heldout HELDOUT --out CHECKPOINTS \
        [--base TINY_CHECKPOINTS] [--minutes 22] [--threads 1]

The tiny random 1.5 checkpoint (``build_random_v15_checkpoint``) decodes noise, so ``songflow eval`` cannot
tell whether a 1.5 LoRA moved its generations. This script gives such a checkpoint a *trained* VAE:

1. the VAE is built exactly as the random checkpoint builder builds it (diffusers ``AutoencoderOobleck`` of
   ``OobleckConfig.tiny()``: 48 kHz stereo, hop 1920 = 2·4·4·6·10, the DiT's latent width), so the 1.5
   loader (``load_v15_vae``) reads the result unchanged. Training starts from torch's default init
   (weight norm ``g = |v|``, Snake ``log alpha = log beta = 0``), *not* from the base's weights: those are
   i.i.d. noise (``write_random_safetensors``) with ``g`` ~ 0.15, so every conv shrinks its input ~7x,
   the output depends on the biases only, the encoder's gradients are ~1e-9 and the VAE learns to output
   ~0 with a collapsed posterior (``--init base`` keeps the base weights, e.g. to resume);
2. it is trained on random crops of the corpus audio (``songflow corpus make``; resampled to 48 kHz stereo
   when needed) with L1 waveform + multi-resolution STFT (spectral convergence + log magnitude) + a small
   KL term, Adam, for ``--minutes`` of wall time;
3. ``--out`` is a copy of ``--base`` (built with seed 0 when missing) whose ``vae/`` holds the trained
   weights;
4. held-out clips are reconstructed (``decode(encode(x).mean)``) and both the originals and the
   reconstructions are scored by ``songflow eval --checks tempo,meter,key``.

Prints one JSON with the training and reconstruction figures.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STFT_SIZES = (2048, 512, 128)


def load_clips(corpus: Path, rate_hz: int) -> list[torch.Tensor]:
    """Every ``corpus/audio/*`` file as a ``[2, N]`` float32 waveform at ``rate_hz``."""
    from songflow.audio.io import load_audio, to_stereo
    from songflow.audio.resample import resample

    clips = []
    for path in sorted((corpus / "audio").iterdir()):
        wav, sr = load_audio(path)
        wav = to_stereo(wav)
        clips.append(resample(wav, sr, rate_hz) if sr != rate_hz else wav)
    return clips


def random_crops(clips: list[torch.Tensor], batch: int, n_samples: int, gen: torch.Generator) -> torch.Tensor:
    """``[batch, 2, n_samples]`` crops at random clips and offsets."""
    out = []
    for _ in range(batch):
        clip = clips[int(torch.randint(len(clips), (1,), generator=gen))]
        start = int(torch.randint(clip.shape[-1] - n_samples + 1, (1,), generator=gen))
        out.append(clip[:, start : start + n_samples])
    return torch.stack(out)


def stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss: spectral convergence + L1 of log magnitudes, averaged over sizes."""
    total = pred.new_zeros(())
    for n_fft in STFT_SIZES:
        window = torch.hann_window(n_fft, device=pred.device)

        def mag(x: torch.Tensor, n_fft: int = n_fft, window: torch.Tensor = window) -> torch.Tensor:
            spec = torch.stft(
                x.reshape(-1, x.shape[-1]), n_fft, n_fft // 4, window=window, return_complex=True
            )
            return spec.abs().clamp_min(1e-5)

        p, t = mag(pred), mag(target)
        total = total + (p - t).norm() / t.norm().clamp_min(1e-5) + (p.log() - t.log()).abs().mean()
    return total / len(STFT_SIZES)


def vae_losses(vae, wav: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """(total loss, parts) of one batch: sampled latent -> decode -> L1 + MR-STFT + KL."""
    mean, std = vae.encode(wav)
    latents = vae.sample(mean, std, torch.randn_like(mean))
    pred = vae.decode(latents)
    l1 = (pred - wav).abs().mean()
    spec = stft_loss(pred, wav)
    kl = 0.5 * (mean.pow(2) + std.pow(2) - 2 * std.log() - 1).mean()
    total = l1 + spec + kl_weight * kl
    return total, {"l1": l1.item(), "stft": spec.item(), "kl": kl.item()}


CONV_TYPES = (torch.nn.Conv1d, torch.nn.ConvTranspose1d)
# encoder scale channels at init: std = softplus(-4) ~ 0.018, well below the latent mean's ~1
INIT_LOG_SCALE = -4.0


def conv_output(root: torch.nn.Module, conv: torch.nn.Module, run) -> torch.Tensor:
    """What ``conv`` outputs while ``run()`` runs ``root``."""
    seen: list[torch.Tensor] = []
    handle = conv.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


@torch.no_grad()
def data_init(vae, wav: torch.Tensor) -> dict[str, float]:
    """Data-dependent init on the batch ``wav``: zero conv biases, then rescale every conv's ``weight_g``
    (forward order) so its output has unit std; the encoder's last conv per channel (latent mean ~N(0, 1)
    per channel, scale channels near ``INIT_LOG_SCALE``), the decoder's last conv to ``wav``'s std.
    Returns the latent spread across clips and along time (``probe`` figures) after the init."""
    enc, dec = vae.autoencoder.encoder, vae.autoencoder.decoder
    for module in vae.autoencoder.modules():
        if isinstance(module, CONV_TYPES) and module.bias is not None:
            module.bias.zero_()
    for conv in [m for m in enc.modules() if isinstance(m, CONV_TYPES)]:
        out = conv_output(enc, conv, lambda: enc(wav))
        per_channel = conv is enc.conv2
        std = out.std(dim=(0, 2)) if per_channel else out.std().expand(out.shape[1])
        conv.weight_g.mul_(1.0 / std.clamp_min(1e-8).view(-1, 1, 1))
        if per_channel:
            half = out.shape[1] // 2
            conv.bias[:half] = -(out.mean(dim=(0, 2))[:half] / std[:half])
            conv.weight_g[half:].mul_(0.1)
            conv.bias[half:] = INIT_LOG_SCALE
    latents = vae.encode(wav)[0]
    for conv in [m for m in dec.modules() if isinstance(m, CONV_TYPES)]:
        out = conv_output(dec, conv, lambda: vae.decode(latents))
        target = wav.std() if conv is dec.conv2 else 1.0
        conv.weight_g.mul_(target / out.std().clamp_min(1e-8))
    return latent_spread(vae, wav)


@torch.no_grad()
def latent_spread(vae, wav: torch.Tensor) -> dict[str, float]:
    """Latent-mean std across the clips of ``wav`` and along time (both averaged), and the posterior std."""
    mean, std = vae.encode(wav)
    return {
        "across_clips": float(mean.std(0).mean()),
        "along_time": float(mean.std(1).mean()),
        "clip_mean_spread": float(mean.mean(1).std(0).mean()),
        "posterior_std": float(std.mean()),
    }


def save_vae(vae, base: Path, out: Path) -> None:
    """``out`` = a copy of the 1.5 checkpoint ``base`` whose ``vae/`` holds ``vae``'s config and weights."""
    from songflow.checkpoint.acestep_v15 import CONFIG_NAME, VAE_FOLDER, VAE_WEIGHTS_NAME
    from songflow.checkpoint.strict import save_state_dict
    from songflow.fileio import atomic_write_text

    if not out.exists():
        shutil.copytree(base, out)
    atomic_write_text(out / VAE_FOLDER / CONFIG_NAME, json.dumps(vae.config.to_dict(), indent=2) + "\n")
    save_state_dict(vae.autoencoder, out / VAE_FOLDER / VAE_WEIGHTS_NAME)


def train(vae, clips: list[torch.Tensor], args: argparse.Namespace, save) -> list[dict]:
    """Adam on random crops until ``args.minutes`` of wall time pass; ``save()`` every few minutes."""
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr, betas=(0.8, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    n_samples = args.crop_frames * vae.hop_samples
    start = last_save = time.monotonic()
    log, step, running = [], 0, {"l1": 0.0, "stft": 0.0, "kl": 0.0}
    vae.train()
    while time.monotonic() - start < args.minutes * 60:
        loss, parts = vae_losses(vae, random_crops(clips, args.batch, n_samples, gen), args.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        running = {k: running[k] + parts[k] for k in running}
        if step % args.log_every == 0:
            row = {"step": step, "wall_s": round(time.monotonic() - start, 1)}
            row.update({k: round(v / args.log_every, 4) for k, v in running.items()})
            print(json.dumps(row), flush=True)
            log.append(row)
            running = dict.fromkeys(running, 0.0)
        if time.monotonic() - last_save > 300:
            save()
            last_save = time.monotonic()
    vae.eval()
    save()
    return log


@torch.no_grad()
def reconstruct(vae, heldout: Path, work: Path) -> dict[str, float]:
    """Write ``work/{orig,recon}.jsonl`` (``songflow eval`` inputs) and return waveform figures."""
    from songflow.audio.io import save_audio
    from songflow.data.synth.corpus import eval_requests

    recon_dir = work / "recon"
    recon_dir.mkdir(parents=True, exist_ok=True)
    clips = load_clips(heldout, vae.sample_rate_hz)
    requests = eval_requests(heldout)
    orig_lines, recon_lines, spec, snr = [], [], [], []
    for request, wav, path in zip(requests, clips, sorted((heldout / "audio").iterdir()), strict=True):
        mean, _ = vae.encode(wav[None])
        pred = vae.decode(mean)[0].clamp(-1, 1)
        target = wav[:, : pred.shape[-1]]
        spec.append(float(stft_loss(pred[None], target[None])))
        snr.append(float(10 * torch.log10(target.pow(2).sum() / (pred - target).pow(2).sum())))
        out = recon_dir / f"{request['name']}.wav"
        save_audio(out, pred, vae.sample_rate_hz)
        orig_lines.append({**request, "audio": str(path.resolve())})
        recon_lines.append({**request, "audio": str(out.resolve())})
    for name, lines in (("orig", orig_lines), ("recon", recon_lines)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"clips": len(clips), "mrstft": sum(spec) / len(spec), "snr_db": sum(snr) / len(snr)}


def eval_summary(work: Path, name: str) -> dict:
    """``songflow eval`` (tempo, meter, key) of ``work/<name>.jsonl``: its accuracy figures."""
    cmd = ["songflow", "eval", str(work / f"{name}.jsonl"), "--checks", "tempo,meter,key",
           "--json", str(work / f"eval_{name}.json"), "--quiet"]  # fmt: skip
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    summary = json.loads((work / f"eval_{name}.json").read_text())
    return {k: summary.get(k) for k in ("n", "tempo_acc_strict", "tempo_acc_octave", "meter_acc", "key_acc")}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="training corpus (songflow corpus make folder)")
    ap.add_argument("--heldout", required=True, help="held-out corpus for the reconstruction check")
    ap.add_argument("--out", required=True, help="checkpoint folder to write (copy of --base + trained vae/)")
    ap.add_argument("--base", default=None, help="tiny 1.5 checkpoint to copy (default: built, seed 0)")
    ap.add_argument("--work", default=None, help="reconstructions and eval files (default: OUT.work)")
    ap.add_argument("--minutes", type=float, default=22.0, help="wall-clock training budget")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop-frames", type=int, default=16, help="crop length in latent frames (1920 samples)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-5)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--init",
        choices=("data", "fresh", "base"),
        default="data",
        help="data: data_init on a first batch (default); fresh: torch's default init; "
        "base: --base's (random) VAE weights",
    )
    ap.add_argument(
        "--width",
        type=int,
        default=None,
        help="decoder_channels of a new VAE (the tiny config's 8, the released VAE's 128; the encoder's "
        "width is twice the latent channels in this architecture, so it stays), so the DiT loads as it is",
    )
    ap.add_argument("--eval-only", action="store_true", help="skip training; check OUT's VAE")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from songflow.checkpoint.acestep_v15 import VAE_FOLDER, load_v15_vae
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint
    from songflow.models.acestep_v15.vae import OobleckVAE

    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out.with_name(out.name + ".work")
    base = Path(args.base).resolve() if args.base else work / "base_checkpoint"
    if not base.exists():
        build_random_v15_checkpoint(base, seed=0)
    figures: dict = {"out": str(out)}
    started = time.monotonic()
    vae = load_v15_vae((out if args.eval_only else base) / VAE_FOLDER)
    if not args.eval_only:
        torch.manual_seed(args.seed)
        if args.init != "base":
            config = vae.config
            if args.width:  # a wider decoder (same hop and latent channels, so the DiT is unchanged)
                import dataclasses

                config = dataclasses.replace(config, decoder_channels=args.width)
            vae = OobleckVAE(config)
        vae.requires_grad_(True)
        clips = load_clips(Path(args.corpus), vae.sample_rate_hz)
        print(f"{len(clips)} clips, {sum(c.shape[-1] for c in clips) / vae.sample_rate_hz / 3600:.2f} h")
        if args.init == "data":
            init_gen = torch.Generator().manual_seed(args.seed + 1)
            init_wav = random_crops(clips, 8, args.crop_frames * vae.hop_samples, init_gen)
            figures["init_latent_spread"] = data_init(vae, init_wav)
            print("init latent spread", json.dumps(figures["init_latent_spread"]), flush=True)
        log = train(vae, clips, args, lambda: save_vae(vae, base, out))
        figures["train"] = {"steps": log[-1]["step"] if log else 0, "first": log[:1], "last": log[-1:]}
        figures["params"] = sum(p.numel() for p in vae.parameters())
        figures["train_wall_s"] = round(time.monotonic() - started, 1)
    vae.requires_grad_(False)
    figures["reconstruction"] = reconstruct(vae, Path(args.heldout), work)
    figures["eval_originals"] = eval_summary(work, "orig")
    figures["eval_reconstructions"] = eval_summary(work, "recon")
    figures["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(figures, indent=1))
    return 0 if math.isfinite(figures["reconstruction"]["mrstft"]) else 1


if __name__ == "__main__":
    sys.exit(main())
