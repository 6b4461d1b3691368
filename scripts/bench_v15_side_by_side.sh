#!/usr/bin/env bash
# Side-by-side CPU benchmark of ACE-Step 1.5 turbo: the official code and songflow, same checkpoint,
# same shapes (128 caption + 512 lyric tokens, 1 reference, 8 steps), run back to back, one process per
# configuration (separate peak RSS). Prints one JSON line per run and a table of ratios at the end.
#
#   bash scripts/bench_v15_side_by_side.sh OFFICIAL_ENV CHECKPOINTS [CONFIGS...]
#
# OFFICIAL_ENV: a folder with the official code's benchmark (bench_official.py and a venv/ holding the
# official requirements: torch 2.13.0, transformers 4.57.6, diffusers 0.39.0, vector-quantize-pytorch);
# CHECKPOINTS: an official-layout 1.5 checkpoints/ folder (e.g. a full-size random one written by
# `songflow.checkpoint.random_checkpoint.build_random_v15_checkpoint(root, config=AceStep15Config.full())`).
# CONFIGS: any of fp32_30s bf16_30s fp32_240s bf16_240s (default: all four).
set -euo pipefail
official="$1"; ckpt="$2"; shift 2
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(fp32_30s bf16_30s fp32_240s bf16_240s)
out="${OUT:-bench_v15_$(date +%Y%m%d_%H%M%S).jsonl}"
for c in "${configs[@]}"; do
  dtype="${c%%_*}"; secs="${c#*_}"; secs="${secs%s}"; frames=$((secs * 25))
  extra_off=(--steps 2); extra_ours=(--repeats 2 --no-vae)
  if [ "$secs" -gt 30 ]; then extra_off+=(); extra_ours+=(--no-e2e); else extra_off+=(--e2e); fi
  [ "$dtype" = bf16 ] && [ "$secs" -le 30 ] && extra_off+=(--e2e-skip-vae)
  sdt=float32; [ "$dtype" = bf16 ] && sdt=bfloat16
  (cd "$official" && venv/bin/python bench_official.py --dtype "$dtype" --frames "$frames" --checkpoints "$ckpt" \
     --tag "$c" --out "" "${extra_off[@]}") 2>/dev/null | tail -1 | tee -a "$out"
  songflow bench --config "$ckpt" --duration "$secs" --dtype "$sdt" --threads 2 "${extra_ours[@]}" 2>/dev/null \
     | tail -1 | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys = [("load_dit_s", "load_dit_s"), ("load_text_s", "load_text_s"), ("condition_s", "condition_s"),
        ("step_median_s", "step_median_s"), ("generate_audio_s", None), ("e2e_vae_decode_s", None),
        ("peak_rss_gib", "peak_rss_gib")]
for off, ours in zip(rows[::2], rows[1::2]):
    print(f"== {off['tag']} ({off['frames']} frames)")
    t = ours.get("e2e_timings_s", {})
    ours = {**ours, "generate_audio": (t.get("conditions", 0) + t.get("diffusion", 0)) or None}
    pairs = [(k, off.get(k), ours.get(o) if o else None) for k, o in keys]
    pairs[4] = ("8-step run (conditions + diffusion)", off.get("generate_audio_s"), ours["generate_audio"])
    pairs[5] = ("VAE decode in the song", off.get("e2e_vae_decode_s"), t.get("decode"))
    for name, a, b in pairs:
        if a is None or b is None:
            continue
        print(f"  {name:38s} official {a:9.3f}  songflow {b:9.3f}  ratio {a / b:6.2f}x")
PY
