"""Print songflow's max abs / relative error against every ACE-Step 1.5 golden fixture, stage by stage.

    python scripts/v15_parity_report.py [FIXTURE_DIR]     (default: ../shared/golden/acestep_v15)

Relative error = max |a - e| / max |e|. The tests (``pytest -k "v15 and (golden or parity)"``) assert
tolerances on the same comparisons; this script only reports them.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
torch.set_num_threads(2)

from conftest import load_tensors  # noqa: E402


def err(actual: torch.Tensor, expected: torch.Tensor) -> str:
    a, e = actual.double(), expected.double()
    if a.shape != e.shape:
        return f"shape {tuple(a.shape)} != {tuple(e.shape)}"
    diff = (a - e).abs().max().item() if a.numel() else 0.0
    scale = e.abs().max().item() if e.numel() else 0.0
    return f"max abs {diff:.2e}  rel {diff / scale if scale else 0.0:.2e}"


def modules(g: Path) -> None:
    from songflow.checkpoint.acestep_v15 import load_v15_dit

    dit = load_v15_dit(g / "models/checkpoints/acestep-v15-turbo", dtype="float32", device="cpu")
    t = load_tensors(g / "dit/decoder_forward.safetensors")
    trace: dict = {}
    with torch.inference_mode():
        v = dit.decoder(
            t["in/hidden_states"],
            t["in/timestep"],
            t["in/timestep_r"],
            t["in/encoder_hidden_states"],
            t["in/context_latents"],
            trace=trace,
        )
    print(f"decoder forward    out/v {err(v, t['out/v'])}")
    for name in sorted(k[6:] for k in t if k.startswith("inter/")):
        if name in trace:
            print(f"  {name:28s} {err(trace[name], t['inter/' + name])}")
    c = load_tensors(g / "dit/condition_encoder.safetensors")
    with torch.inference_mode():
        enc, mask = dit.encode_conditions(
            c["in/text_hidden_states"],
            c["in/text_attention_mask"],
            c["in/lyric_hidden_states"],
            c["in/lyric_attention_mask"],
            c["in/refer_audio_packed"],
            c["in/refer_audio_order_mask"],
        )
    print(
        f"condition encoder  states {err(enc, c['out/encoder_hidden_states'])}; "
        f"mask equal {bool((mask.long() == c['out/encoder_attention_mask']).all())}"
    )
    k = load_tensors(g / "dit/tokenizer_roundtrip.safetensors")
    with torch.inference_mode():
        q, codes, m5 = dit.tokenize(k["in/x_25hz"], k["in/silence_latent_head"][None], k["in/attention_mask"])
        det = dit.detokenize(q)
        back = dit.codes_to_quantized(codes)
    print(
        f"FSQ tokenizer      quantized {err(q, k['out/quantized_5hz'])}; codes equal "
        f"{bool((codes == k['out/indices']).all())}; detokenized {err(det, k['out/detokenized_25hz'])}; "
        f"from codes {err(back, k['out/quantized_from_indices'])}"
    )


def vae_and_text(g: Path) -> None:
    from songflow.checkpoint.acestep_v15 import load_v15_text_encoder, load_v15_vae

    ck = g / "models/checkpoints"
    vae = load_v15_vae(ck / "vae", dtype=torch.float32, device="cpu")
    t = load_tensors(g / "audio/vae_roundtrip.safetensors")
    with torch.inference_mode():
        mean, std = vae.encode(t["in/waveform"])
        wav = vae.decode(mean)
    print(
        f"VAE                mean {err(mean.transpose(1, 2), t['out/latent_mean'])}; "
        f"std {err(std.transpose(1, 2), t['out/latent_std'])}; decode {err(wav, t['out/decoded_from_mean'])}"
    )
    te = load_v15_text_encoder(ck / "Qwen3-Embedding-0.6B", dtype=torch.float32, device="cpu")
    x = load_tensors(g / "text/text_encoder.safetensors")
    for i in ("0", "1"):
        with torch.inference_mode():
            h, e = te.encode_text(x[f"{i}/input_ids"]), te.embed_lyrics(x[f"{i}/input_ids"])
        print(
            f"text encoder {i}     last_hidden_state {err(h, x[f'{i}/last_hidden_state'])}; "
            f"embed_tokens {err(e, x[f'{i}/embed_tokens'])}"
        )


def guidance(g: Path) -> None:
    from songflow.sampling.guidance import ApgState, adg, apg

    t = load_tensors(g / "guidance/apg_adg.safetensors")
    state = ApgState()
    for i in range(3):
        out, state = apg(t[f"apg/{i}/pred_cond"], t[f"apg/{i}/pred_uncond"], 7.0, state, dims=(1,))
        print(f"APG call {i}         {err(out, t[f'apg/{i}/out'])}")
    out = adg(t["adg/latents"], t["adg/cond"], t["adg/uncond"], 0.6, 7.0)
    print(f"ADG                {err(out, t['adg/out'])}")


def pipelines(g: Path) -> None:
    from songflow.families import load_pipeline
    from test_v15_pipeline import _CASES, _alias, _case, run_case

    pipes: dict = {}
    for name in _CASES:
        case, t = _case(g, name)
        folder = case["dit_folder"]
        pipes.setdefault(folder, load_pipeline(g / "models/checkpoints" / folder, device="cpu"))
        trace = run_case(pipes[folder], case, t, Path(tempfile.mkdtemp()))
        b = trace["enc"][0][0].shape[0]
        steps = max(
            (trace["x"][i] - _alias(case, t, f"steps/{i:02d}/xt_in")).abs().max().item()
            for i in range(1, case["num_decoder_calls"])
        )
        print(
            f"{name:26s} enc "
            f"{err(trace['enc'][0][0], _alias(case, t, 'decoder_call0/encoder_hidden_states')[:b])}"
        )
        print(
            f"{'':26s} context {err(trace['ctx'][0], _alias(case, t, 'decoder_call0/context_latents')[:b])}"
        )
        print(
            f"{'':26s} per-step latents max abs {steps:.2e}; final "
            f"{err(trace['result'].latents, t['generate_audio/out/target_latents'])}"
        )
        if "output/audio_0" in t:
            print(f"{'':26s} audio {err(trace['result'].audio[0], t['output/audio_0'])}")


def main() -> None:
    g = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared/golden/acestep_v15"
    modules(g)
    vae_and_text(g)
    guidance(g)
    pipelines(g)


if __name__ == "__main__":
    main()
