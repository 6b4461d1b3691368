#!/usr/bin/env bash
# Regenerate one song per task (and sampler) with the shipped model from this tree and from BASE_REV, and
# compare the decoded samples (sha256 of the float32 frames; WAV headers carry timestamps):
#   bash scripts/compare_outputs.sh [BASE_REV]      (default: the previous commit, HEAD~1; ~3 min on 2 cores)
# Prints one line per file and exits 1 when any output differs.
set -euo pipefail
cd "$(dirname "$0")/.."
base_rev="${1:-HEAD~1}"
work="$(mktemp -d)"
trap 'git worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/base" "$base_rev" >/dev/null 2>&1

render() {  # render SRC_DIR OUT_DIR
  local src="$1" out="$2"
  mkdir -p "$out"
  (
    cd "$out"
    export PYTHONPATH="$src" OMP_WAIT_POLICY=PASSIVE
    gen() { python -m songflow generate --quiet "$@"; }
    gen --tags "waltz, 90 bpm, piano, strings, G major, gentle" --lyrics "[verse]\nneon lights on the river" \
      --duration 20 --seed 42 --out song.wav
    gen --tags "pop, 120 bpm" --lyrics "[verse]\nhello" --duration 6 --seed 3 --steps 12 --batch-size 2 \
      --seeds 3,4 --out b.wav
    gen --from song.json --task retake --variance-frac 0.3 --retake-seeds 7 --duration 6 --steps 10 \
      --out retake.wav
    gen --task repaint --source-path song.wav --start-s 2 --end-s 5 --tags "rock, 120 bpm" --seed 5 \
      --retake-seeds 15 --steps 10 --out repaint.wav
    gen --task extend --source-path b_0.wav --left-s 2 --right-s 3 --tags "rock" --seed 6 --retake-seeds 16 \
      --steps 10 --out extend.wav
    gen --task edit --source-path b_0.wav --tags "pop, 120 bpm" --lyrics "[verse]\nhello" \
      --target-lyrics "[verse]\ngoodbye" --preset only_lyrics --seed 8 --steps 10 --out edit.wav
    gen --task audio2audio --reference-path b_1.wav --strength-frac 0.5 --tags "jazz" --seed 9 --steps 10 \
      --out a2a.wav
    gen --tags "pop" --duration 5 --seed 11 --steps 8 --sampler heun --guidance cfg_star --out heun.wav
    gen --tags "pop" --duration 5 --seed 12 --steps 8 --sampler pingpong --guidance cfg --out pp.wav
  )
}

render "$work/base/src" "$work/out_base"
render "$PWD/src" "$work/out_new"
python - "$work/out_base" "$work/out_new" "$base_rev" <<'PY'
import hashlib, pathlib, sys
import soundfile as sf

base, new, rev = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
def digest(path):
    frames, _ = sf.read(path, dtype="float32")
    return hashlib.sha256(frames.tobytes()).hexdigest()[:16]
same = True
for b in sorted(base.glob("*.wav")):
    d_base, d_new = digest(b), digest(new / b.name)
    same &= d_base == d_new
    print(f"{b.name:12s} {rev}: {d_base}  this tree: {d_new}  {'same' if d_base == d_new else 'DIFFERENT'}")
print("sample-identical" if same else "outputs differ")
sys.exit(0 if same else 1)
PY
