#!/usr/bin/env bash
# The whole recipe of the shipped songflow-tiny model, from nothing to src/songflow/assets/songflow-tiny.
# Every step resumes where it stopped, so the script can be re-run after an interruption.
#
#   bash scripts/train_songflow_tiny.sh [WORK_DIR] [HOURS]      (defaults: runs/songflow-tiny, 20)
#
# Needs `bash scripts/setup.sh --dev` (corpus renderer, training and eval extras). On a GPU machine the DiT
# step picks the GPU by itself (device: auto).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/songflow-tiny}"
HOURS="${2:-20}"
mkdir -p "$WORK"

# 1. the labelled synthetic corpus (training) and a held-out one made with another seed (eval prompts)
songflow corpus make --hours "$HOURS" --out "$WORK/corpus" --seed 20
songflow corpus make --hours 0.35 --out "$WORK/heldout" --seed 777

# 2. the mel codec: vocoder (istft head) and DC-AE, both on the corpus audio
songflow train-codec vocoder configs/codec/songflow_tiny_vocoder.yaml \
  --set "data=\"$WORK/corpus/audio\"" --set "out_dir=\"$WORK/vocoder\""
songflow train-codec dcae configs/codec/songflow_tiny_dcae.yaml \
  --set "data=\"$WORK/corpus/audio\"" --set "out_dir=\"$WORK/dcae\""

# 3. the untrained checkpoint: trained codec + fresh DiT/lyric encoder + frozen tag encoder
[ -d "$WORK/init/ace_step_transformer" ] || songflow train init --dataset "$WORK/corpus/dataset" \
  --dcae "$WORK/dcae/music_dcae_f8c8" --vocoder "$WORK/vocoder/music_vocoder" --out "$WORK/init"

# 4. the DiT (latents, tag states and lyric ids are cached first)
songflow train configs/train/songflow_tiny.yaml --set "output_dir=$WORK/dit" \
  --set "model.checkpoint_dir=$WORK/init" --set "data.dataset_path=$WORK/corpus/dataset" \
  --set "resume_from=last"

# 5. adherence on prompts it was not trained on, then ship it with its card
songflow corpus prompts "$WORK/heldout" --out "$WORK/heldout.jsonl" --duration 10
songflow eval "$WORK/heldout.jsonl" --generate --checkpoint "$WORK/dit/final" \
  --audio-dir "$WORK/heldout_audio" --checks tempo,key,instruments,vocals,meter --json "$WORK/eval.json"
songflow train package "$WORK/dit/final" --out src/songflow/assets/songflow-tiny \
  --card src/songflow/assets/songflow-tiny/MODEL_CARD.md

# 6. the demo LoRA shipped beside the model (loras/waltz-demo, `--lora waltz-demo:0.8`): 20 waltzes at 84-96 BPM
#    from a waltz-only corpus, the LoRA recipe on the packaged model (bf16-mixed falls back to fp32 on CPUs
#    without AVX512-BF16/AMX), then the adapter's two files (weights + adapter_config.json) copied in
[ -d "$WORK/waltz/dataset_84_96" ] || python - "$WORK/waltz" <<'PY'
import functools, sys
import datasets
from songflow.data.synth.compose import compose_song
from songflow.data.synth.corpus import CorpusConfig, make_corpus
work = sys.argv[1]
make_corpus(CorpusConfig(out=f"{work}/corpus", hours=0.5, seed=3, progress=False),
            compose=functools.partial(compose_song, genre="waltz"))
ds = datasets.load_from_disk(f"{work}/corpus/dataset").filter(lambda r: 84 <= r["bpm"] <= 96)
ds.select(range(min(20, len(ds)))).save_to_disk(f"{work}/dataset_84_96")
PY
songflow train configs/train/songflow_tiny_lora_waltz.yaml --set model.checkpoint_dir=songflow-tiny \
  --set "data.dataset_path=$WORK/waltz/dataset_84_96" --set "output_dir=$WORK/waltz/lora"
mkdir -p src/songflow/assets/songflow-tiny/loras/waltz-demo
cp "$WORK/waltz/lora/final_lora/"* src/songflow/assets/songflow-tiny/loras/waltz-demo/
