"""Figures for 1.5 LoRA/LoKr inference (not run in CI): apply / re-weight / unload times, the two-adapters vs
summed-adapter gap, and the bit-exact checks, on a tiny random 1.5 checkpoint (or ``--checkpoint DIR``).

    python scripts/v15_lora_figures.py [--checkpoint DIR] [--device cpu] [--rank 16]

Adapters are random, in the official layouts (PEFT ``adapter/`` folder, LyCORIS ``lokr_weights.safetensors``)
on every decoder attention projection. Prints one JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


def targets(decoder: nn.Module) -> list[str]:
    ends = ("q_proj", "k_proj", "v_proj", "o_proj")
    return [n for n, m in decoder.named_modules() if type(m) is nn.Linear and n.rsplit(".", 1)[-1] in ends]


def write_peft(folder: Path, decoder: nn.Module, r: int, seed: int, scale_b: float = 1.0) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in targets(decoder):
        m = decoder.get_submodule(layer)
        tensors[f"base_model.model.{layer}.lora_A.weight"] = torch.randn(r, m.in_features, generator=g) / 30
        tensors[f"base_model.model.{layer}.lora_B.weight"] = torch.randn(m.out_features, r, generator=g) / 30
    (folder / "adapter").mkdir(parents=True)
    save_file(tensors, str(folder / "adapter" / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": r, "target_modules": ["q_proj", "k_proj", "v_proj"]}
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    return folder


def write_lokr(path: Path, decoder: nn.Module, dim: int, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in targets(decoder):
        m = decoder.get_submodule(layer)
        stem = "lycoris_" + layer.replace(".", "_")
        tensors[f"{stem}.lokr_w1"] = torch.randn(4, 4, generator=g)
        tensors[f"{stem}.lokr_w2_a"] = torch.randn(m.out_features // 4, dim, generator=g) / 30
        tensors[f"{stem}.lokr_w2_b"] = torch.randn(dim, m.in_features // 4, generator=g) / 30
        tensors[f"{stem}.alpha"] = torch.tensor(float(dim))
    save_file(tensors, str(path), {"algo": "lokr", "format": "lycoris"})
    return path


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return round(time.perf_counter() - t0, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    from songflow.checkpoint.random_checkpoint import build_random_v15_checkpoint
    from songflow.families import load_pipeline
    from songflow.nn.lora import lora_modules
    from songflow.requests import LoraRef

    work = Path(tempfile.mkdtemp())
    root = args.checkpoint or build_random_v15_checkpoint(work / "ckpt", seed=0)
    pipe = load_pipeline(root, device=args.device)
    decoder = pipe.dit.decoder
    base = {k: v.clone() for k, v in pipe.dit.state_dict().items()}
    p = write_peft(work / "p", decoder, args.rank, 1)
    q = write_peft(work / "q", decoder, args.rank, 2)
    k = write_lokr(work / "lokr_weights.safetensors", decoder, 4, 3)
    refs = (LoraRef(str(p), 0.8), LoraRef(str(q), 0.5), LoraRef(str(k), 1.0))
    figures = {
        "decoder_width": decoder.config.hidden_size,
        "decoder_layers": decoder.config.num_hidden_layers,
        "adapted_layers": len(targets(decoder)),
        "apply_3_adapters_s": timed(lambda: pipe.apply_loras(refs)),
        "same_set_again_s": timed(lambda: pipe.apply_loras(refs)),
        "reweight_s": timed(lambda: pipe.apply_loras(tuple(LoraRef(r.path, 0.3) for r in refs))),
    }
    fixes = [m._merge_fix_idx.numel() for m in lora_modules(decoder).values() if m._merge_fix_idx is not None]
    figures["merge_fix_elements"] = sum(fixes)
    figures["unload_s"] = timed(lambda: pipe.apply_loras(()))
    figures["unload_bit_exact"] = all(torch.equal(v, base[k]) for k, v in pipe.dit.state_dict().items())
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
