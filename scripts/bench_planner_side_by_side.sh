#!/usr/bin/env bash
# Side-by-side CPU benchmark of the ACE-Step 1.5 5 Hz LM planner: the official LLMHandler ("pt" backend)
# and songflow, same LM folder, same request (a 60 s song: phase-1 metadata + 300 codes), with and without
# CFG, one process per implementation, run back to back. Prints one JSON line per run and a ratio table.
#
#   bash scripts/bench_planner_side_by_side.sh OFFICIAL_VENV LM_FOLDER [DURATION_S]
#
# OFFICIAL_VENV: a venv with the official requirements (torch 2.13.0, transformers 4.57.6, loguru, pyyaml,
# tqdm). The official code is exported (its .py files, at commit $OFFICIAL_COMMIT) from the git mirror
# $OFFICIAL_REPO into $OFFICIAL_CODE (default: official_lm/ next to the venv), never into this repository.
# LM_FOLDER: an acestep-5Hz-lm-* folder, e.g. a full-size random one:
#   python -c "from songflow.checkpoint.random_checkpoint import build_random_v15_lm as b; \
#              b('/work/bench15/lm06/acestep-5Hz-lm-0.6B', size='0.6B')"
set -euo pipefail
venv="$1"; lm="$2"; secs="${3:-60}"
repo="${OFFICIAL_REPO:-/work/.mirror/neumosys+ACE-Step-1.5/repo}"
commit="${OFFICIAL_COMMIT:-783bb36}"
code="${OFFICIAL_CODE:-$(dirname "$(realpath "$venv")")/official_lm}"
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-bench_planner_$(date +%Y%m%d_%H%M%S).jsonl}"
threads="${THREADS:-2}"
if [ ! -f "$code/acestep/llm_inference.py" ]; then
  mkdir -p "$code"
  git -C "$repo" ls-tree -r --name-only "$commit" acestep | grep '\.py$' | while read -r f; do
    mkdir -p "$code/$(dirname "$f")"; git -C "$repo" show "$commit:$f" > "$code/$f"
  done
fi
"$venv/bin/python" "$here/planner_official_bench.py" --code "$code" --lm "$lm" --duration "$secs" \
  --threads "$threads" 2>/dev/null | tee -a "$out"
python -m songflow.interfaces.bench.speed_planner "$lm" --duration "$secs" --threads "$threads" \
  --device cpu --dtype float32 2>/dev/null | tee -a "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
off = {r["cfg_scale"]: r for r in rows if r["impl"] == "official"}
ours = {r["cfg_scale"]: r for r in rows if r["impl"] == "songflow"}
first = next(iter(ours.values()), {})
if off and first:
    o = next(iter(off.values()))
    print(f"== load (tokenizer + weights)    official {o['load_s']:8.2f} s  songflow {first['load_s']:8.2f} s"
          f"  ratio {o['load_s'] / first['load_s']:5.2f}x")
for scale in sorted(set(off) & set(ours)):
    a, b = off[scale], ours[scale]
    print(f"== cfg {scale:g}: {b['n_codes']} codes ({a['n_codes']} official), same first codes: "
          f"{a['codes_head'] == b.get('codes_head', a['codes_head'])}")
    for key in ("plan_s", "phase1_s", "phase2_s"):
        if a.get(key) and b.get(key):
            print(f"  {key:10s} official {a[key]:8.2f} s  songflow {b[key]:8.2f} s  ratio {a[key] / b[key]:5.2f}x")
    if a.get("phase2_tokens_per_s") and b.get("phase2_tokens_per_s"):
        print(f"  codes tok/s official {a['phase2_tokens_per_s']:8.2f}    songflow {b['phase2_tokens_per_s']:8.2f}")
    print(f"  plan tok/s  songflow {b['tokens_per_s']:.2f} (all tokens of both phases / wall)")
PY
