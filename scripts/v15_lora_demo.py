"""Style demo for ACE-Step 1.5 LoRA training (not run in CI): does a LoRA trained on waltzes move
generations toward waltzes?

    python scripts/v15_lora_demo.py [--work runs/v15_lora_demo] [--checkpoint DIR | --vae DIR --dit small]
        [--pretrain-corpus CORPUS --pretrain-steps 6000] [--steps 300] [--hours 0.3] [--prompts 12]

1. the base: ``--checkpoint`` (a real or trained 1.5 checkpoint), or a random-weight 1.5 checkpoint
   (``build_random_v15_checkpoint``, DiT ``--dit tiny`` or ``small``) whose ``vae/`` is ``--vae`` (e.g. the
   output of ``scripts/train_v15_tiny_vae.py``) when given; with ``--pretrain-corpus`` the whole decoder is
   first trained on that (mixed-genre) corpus (``songflow train ... --set lora.enabled=false``) and the result
   is the base;
2. a waltz-only synthetic corpus (the corpus maker of ``songflow corpus make``, genre fixed to waltz,
   instrumental), written as an official ACE-Step 1.5 dataset JSON (so that input path is exercised too), and
   a held-out waltz corpus with another seed whose captions and metadata are the eval prompts, plus
   ``--other-prompts`` held-out prompts of the other genres;
3. ``songflow train configs/train/v15_tiny_lora.yaml`` on the waltz dataset, from the base;
4. every prompt generated without and with the adapter (same seeds, the caption, BPM, key and time
   signature of the held-out clip, as training conditions on them), scored by ``songflow eval`` (tempo, meter,
   key), plus the share of clips measured in triple meter and a latent-space figure that does not depend on
   the VAE: the distance of the generated latents' per-channel mean/std to the waltz training latents'
   (smaller = closer).

Prints one JSON with both sets of figures. With a VAE that does not reconstruct the corpus the audio checks
cannot move (check it with ``train_v15_tiny_vae.py --eval-only`` first); the latent figure still shows whether
the DiT moved toward the training data. Every step resumes (the corpora and runs are kept in ``--work``).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
#: ``--dit``: the DiT shape of a built checkpoint (``small``: 1.8 M decoder parameters, ~0.13 s a training
#: step of 2 x 10 s on one CPU thread; ``tiny``: the test shape, 0.3 M)
DIT_SHAPES = {
    "tiny": {},
    "small": dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=6,
        num_audio_decoder_hidden_layers=6,
        head_dim=32,
        fsq_dim=128,
    ),  # fmt: skip
}
TRIPLE_LABELS = ("3", "6")


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def waltz_dataset_json(corpus: Path, out: Path) -> Path:
    """The waltz clips of ``corpus`` as an official 1.5 dataset JSON (``samples`` of AudioSample fields)."""
    samples = []
    for label_path in sorted((corpus / "labels").glob("*.json")):
        lab = json.loads(label_path.read_text())
        if lab.get("genre") != "waltz":
            continue
        samples.append(
            {
                "id": lab["key"], "audio_path": str((corpus / lab["files"]["audio"]).resolve()),
                "caption": lab.get("caption") or lab.get("tags", ""), "bpm": lab.get("bpm"),
                "keyscale": f"{lab.get('tonic')} {lab.get('mode')}",
                "timesignature": str(lab.get("time_signature", "")).split("/")[0],
                "duration": int(lab.get("duration") or 0), "lyrics": lab.get("lyrics") or "[Instrumental]",
                "language": "en" if lab.get("lyrics") else "unknown", "labeled": True,
            }
        )  # fmt: skip
    doc = {"metadata": {"name": "waltz", "custom_tag": "", "tag_position": "prepend"}, "samples": samples}
    out.write_text(json.dumps(doc, indent=1))
    return out


def waltz_corpus(out: Path, hours: float, seed: int) -> Path:
    """An instrumental waltz-only corpus of 10 s clips at ``out`` (kept when it is already there)."""
    from songflow.data.synth.compose import compose_song
    from songflow.data.synth.corpus import CorpusConfig, make_corpus

    if not (out / "corpus.json").is_file():
        cfg = CorpusConfig(
            out=str(out), hours=hours, seed=seed, progress=False, clip_seconds=(10.0, 10.0), workers=2,
            vocal_share=0.0,
        )  # fmt: skip
        make_corpus(cfg, compose=functools.partial(compose_song, genre="waltz"))
    return out


def prompts_of(corpus: Path, limit: int, prefix: str, *, skip_genre: str | None = None) -> list[dict]:
    """Eval prompts of ``corpus``'s clips: ``eval_requests`` lines (names prefixed) plus the clip's caption
    and metadata."""
    from songflow.data.synth.corpus import eval_requests, iter_clip_labels
    from songflow.requests_v15 import VALID_KEYSCALES

    out = []
    for prompt, label in zip(eval_requests(corpus, duration_s=10.0), iter_clip_labels(corpus), strict=True):
        if skip_genre is not None and label.get("genre") == skip_genre:
            continue
        prompt["name"] = f"{prefix}{prompt['name']}"
        meter = str(label.get("time_signature", "4/4")).split("/")[0]
        key = f"{label['tonic']} {label['mode']}"
        prompt["condition"] = {  # as training reads the clip (training.v15_data): unknown keys/meters dropped
            "caption": label.get("caption") or prompt["tags"], "bpm": int(label["bpm"]),
            "key_scale": key if key in VALID_KEYSCALES else None,
            "time_signature": meter if meter in ("2", "3", "4", "6") else None,
        }  # fmt: skip
        out.append(prompt)
    return out[:limit]


def latent_stats(latents: list[torch.Tensor]) -> torch.Tensor:
    """Per-channel mean and std over all frames of ``[T, C]`` latents -> ``[2C]``."""
    x = torch.cat([t.float() for t in latents])
    return torch.cat([x.mean(0), x.std(0)])


def generate(checkpoint: Path, prompts: list[dict], lora: Path | None, audio_dir: Path) -> list[torch.Tensor]:
    from songflow.audio.io import save_audio
    from songflow.families import load_pipeline
    from songflow.requests import LoraRef
    from songflow.requests_v15 import Params15, Text2Music15

    pipe = load_pipeline(checkpoint, device="cpu", dtype="float32")
    audio_dir.mkdir(parents=True, exist_ok=True)
    loras = (LoraRef(str(lora), 1.0),) if lora is not None else ()
    out, lines = [], []
    for p in prompts:
        request = Text2Music15(
            **p["condition"], lyrics="" if p["lyrics"] == "[inst]" else p["lyrics"],
            vocal_language="en" if p["labels"].get("vocals") else "unknown",
            duration_s=p["duration_s"], params=Params15(seeds=tuple(p["params"]["seeds"])), loras=loras,
        )  # fmt: skip
        result = pipe.generate(request)
        wav = audio_dir / f"{p['name']}.wav"
        save_audio(wav, result.audio[0], result.sample_rate_hz)
        out.append(result.latents[0])
        lines.append({k: v for k, v in p.items() if k != "condition"} | {"audio": str(wav.resolve())})
    (audio_dir / "generated.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


def scores(work: Path, name: str) -> dict:
    """``songflow eval`` (tempo, meter, key) of ``work/gen_<name>``: accuracies and measured-triple shares."""
    jsonl, report = work / f"gen_{name}" / "generated.jsonl", work / f"eval_{name}.json"
    run("songflow", "eval", str(jsonl), "--checks", "tempo,meter,key", "--json", str(report), "--quiet")
    summary = json.loads(report.read_text())
    labels = {(p := json.loads(line))["name"]: p["labels"] for line in jsonl.read_text().splitlines()}
    triple: dict[str, list[bool]] = {"waltz": [], "other": []}
    for clip in summary["clips"]:
        meter = clip["results"].get("meter") or {}
        if meter.get("measured") is not None:
            group = "waltz" if labels[clip["key"]].get("genre") == "waltz" else "other"
            triple[group].append(meter["measured"] == "triple")
    keys = ("n", "tempo_acc_octave", "tempo_median_abs_err_bpm", "meter_acc", "key_acc")
    figures = {k: summary.get(k) for k in keys}
    for group, hits in triple.items():
        figures[f"measured_triple_{group}"] = f"{sum(hits)}/{len(hits)}"
    return figures


def base_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    """``--checkpoint``, or a built one (random DiT of ``--dit``, ``--vae``'s VAE), pre-trained when asked."""
    from songflow.checkpoint.acestep_v15 import VAE_FOLDER

    if args.checkpoint:
        ckpt = Path(args.checkpoint).resolve()
    else:
        ckpt = work / "checkpoints"
        if not ckpt.exists():
            from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint
            from songflow.models.acestep_v15.config import AceStep15Config

            built = work / "checkpoints.partial"
            shutil.rmtree(built, ignore_errors=True)
            build_random_v15_checkpoint(built, config=AceStep15Config.tiny(**DIT_SHAPES[args.dit]), seed=0)
            if args.vae:
                vae = Path(args.vae).resolve()
                vae = vae / VAE_FOLDER if (vae / VAE_FOLDER).is_dir() else vae
                shutil.rmtree(built / VAE_FOLDER)
                shutil.copytree(vae, built / VAE_FOLDER)
            built.rename(ckpt)
    if not args.pretrain_corpus:
        return ckpt
    run(
        "songflow", "train", "configs/train/v15_tiny_lora.yaml", "--set", f"model.checkpoint_dir={ckpt}",
        "--set", f"data.dataset_path={Path(args.pretrain_corpus).resolve()}", "--set", "lora.enabled=false",
        "--set", f"output_dir={work / 'pretrain'}", "--set", f"optim.max_steps={args.pretrain_steps}",
        "--set", "optim.lr=1e-3", "--set", "optim.warmup_steps=100", "--set", "data.batch_size=2",
        "--set", "save_every=1000", "--set", "progress=false", "--set", "resume_from=last",
    )  # fmt: skip
    return work / "pretrain" / "final"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/v15_lora_demo")
    ap.add_argument("--checkpoint", default=None, help="a 1.5 checkpoint (default: built, see --dit/--vae)")
    ap.add_argument("--dit", choices=sorted(DIT_SHAPES), default="tiny", help="DiT shape of a built one")
    ap.add_argument("--vae", default=None, help="trained vae/ folder (or its root) to build with")
    ap.add_argument("--pretrain-corpus", default=None, help="train the whole decoder on this corpus first")
    ap.add_argument("--pretrain-steps", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=300, help="LoRA steps")
    ap.add_argument("--hours", type=float, default=0.3, help="hours of waltz training audio")
    ap.add_argument("--prompts", type=int, default=12, help="held-out waltz prompts")
    ap.add_argument("--other-prompts", type=int, default=8, help="held-out prompts of the other genres")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    work = (REPO / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ckpt = base_checkpoint(args, work)
    dataset = waltz_dataset_json(waltz_corpus(work / "waltz", args.hours, 3), work / "waltz_dataset.json")
    heldout = waltz_corpus(work / "heldout_waltz", args.prompts * 10.5 / 3600, 777)
    if not (work / "heldout_mixed" / "corpus.json").is_file():
        run("songflow", "corpus", "make", "--hours", str(args.other_prompts * 12 / 3600), "--out",
            str(work / "heldout_mixed"), "--seed", "778", "--clip-seconds", "10", "--quiet")  # fmt: skip
    prompts = prompts_of(heldout, args.prompts, "waltz_")
    prompts += prompts_of(work / "heldout_mixed", args.other_prompts, "other_", skip_genre="waltz")
    run(
        "songflow", "train", "configs/train/v15_tiny_lora.yaml", "--set", f"model.checkpoint_dir={ckpt}",
        "--set", f"data.dataset_path={dataset}", "--set", f"output_dir={work / 'lora'}",
        "--set", f"optim.max_steps={args.steps}", "--set", "optim.lr=1e-3", "--set", "optim.warmup_steps=20",
        "--set", "progress=false", "--set", "resume_from=last",
    )  # fmt: skip
    from songflow.training.v15_data import V15Cache

    cache = V15Cache(work / "lora" / "cache")
    target = latent_stats([cache[i]["target_latents"] for i in range(len(cache))])
    figures: dict[str, dict] = {}
    for name, lora in (("base", None), ("lora", work / "lora" / "final_lora")):
        latents = generate(ckpt, prompts, lora, work / f"gen_{name}")
        distance = float((latent_stats([x[:250] for x in latents[: args.prompts]]) - target).norm())
        figures[name] = {"latent_stats_distance_to_waltz": distance, **scores(work, name)}
    print(json.dumps({"checkpoint": str(ckpt), "prompts": len(prompts), **figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
