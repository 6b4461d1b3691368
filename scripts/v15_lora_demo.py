"""Style demo for ACE-Step 1.5 LoRA training (not run in CI): does a LoRA trained on waltzes move
generations toward waltzes?

    python scripts/v15_lora_demo.py [--work runs/v15_lora_demo] [--checkpoint DIR] [--steps 300] [--hours 0.3]

1. the base: a tiny random-weight 1.5 checkpoint (``build_random_v15_checkpoint``) unless ``--checkpoint``
   names a real one (e.g. ``songflow download --model acestep-v15-turbo``);
2. a waltz-only synthetic corpus (the corpus maker of ``songflow corpus make``, genre fixed to waltz),
   written as an official ACE-Step 1.5 dataset JSON (so that input path is exercised too), and a held-out
   corpus with another seed (``songflow corpus make``) whose waltz prompts are the eval prompts;
3. ``songflow train configs/train/v15_tiny_lora.yaml`` on the waltz dataset;
4. every held-out prompt generated without and with the adapter (same seeds), scored by ``songflow eval``
   (tempo, meter, key), plus a latent-space figure that does not depend on the VAE: the distance of the
   generated latents' per-channel mean/std to the waltz training latents' (smaller = closer to the style).

Prints one JSON with both sets of figures. On a random base the VAE decodes noise, so the audio checks
cannot move; the latent figure shows whether the DiT moved toward the training data.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


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
            caption=p["tags"], lyrics="" if p["lyrics"] == "[inst]" else p["lyrics"],
            duration_s=p["duration_s"], params=Params15(seeds=tuple(p["params"]["seeds"])), loras=loras,
        )  # fmt: skip
        result = pipe.generate(request)
        wav = audio_dir / f"{p['name']}.wav"
        save_audio(wav, result.audio[0], result.sample_rate_hz)
        out.append(result.latents[0])
        lines.append({**p, "audio": str(wav.resolve())})
    (audio_dir / "generated.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/v15_lora_demo")
    ap.add_argument("--checkpoint", default=None, help="a 1.5 checkpoint (default: a tiny random one)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--hours", type=float, default=0.3, help="hours of waltz training audio")
    ap.add_argument("--prompts", type=int, default=8, help="held-out waltz prompts")
    args = ap.parse_args()
    work = (REPO / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoint) if args.checkpoint else work / "checkpoints"
    if args.checkpoint is None and not ckpt.exists():
        from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint

        build_random_v15_checkpoint(ckpt, seed=0)
    from songflow.data.synth.compose import compose_song
    from songflow.data.synth.corpus import CorpusConfig, eval_requests, make_corpus

    make_corpus(
        CorpusConfig(
            out=str(work / "waltz"),
            hours=args.hours,
            seed=3,
            progress=False,
            clip_seconds=(10.0, 10.0),
            workers=2,
        ),
        compose=functools.partial(compose_song, genre="waltz"),
    )
    dataset = waltz_dataset_json(work / "waltz", work / "waltz_dataset.json")
    run("songflow", "corpus", "make", "--hours", "0.1", "--out", str(work / "heldout"), "--seed", "777",
        "--clip-seconds", "10", "--quiet")  # fmt: skip
    run(
        "songflow", "train", "configs/train/v15_tiny_lora.yaml", "--set", f"model.checkpoint_dir={ckpt}",
        "--set", f"data.dataset_path={dataset}", "--set", f"output_dir={work / 'lora'}",
        "--set", f"optim.max_steps={args.steps}", "--set", "optim.lr=1e-3", "--set", "optim.warmup_steps=20",
        "--set", "progress=false", "--set", "resume_from=last",
    )  # fmt: skip
    prompts = [p for p in eval_requests(work / "heldout", duration_s=10.0) if p["labels"].get("genre")]
    waltz = [p for p in prompts if "waltz" in p["tags"]] or prompts
    prompts = (waltz + [p for p in prompts if p not in waltz])[: args.prompts]
    from songflow.training.v15_data import V15Cache

    cache = V15Cache(work / "lora" / "cache")
    target = latent_stats([cache[i]["target_latents"] for i in range(len(cache))])
    figures: dict[str, dict] = {}
    for name, lora in (("base", None), ("lora", work / "lora" / "final_lora")):
        latents = generate(ckpt, prompts, lora, work / f"gen_{name}")
        gen = latent_stats([x[:250] for x in latents])
        run("songflow", "eval", str(work / f"gen_{name}" / "generated.jsonl"), "--checks", "tempo,meter,key",
            "--json", str(work / f"eval_{name}.json"), "--quiet")  # fmt: skip
        summary = json.loads((work / f"eval_{name}.json").read_text())
        figures[name] = {
            "latent_stats_distance_to_waltz": float((gen - target).norm()),
            **{k: summary.get(k) for k in ("n", "tempo_acc_octave", "meter_acc", "key_acc")},
        }
    print(
        json.dumps({"base": "random tiny 1.5" if args.checkpoint is None else str(ckpt), **figures}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
