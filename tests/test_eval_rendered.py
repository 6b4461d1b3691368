"""The adherence checkers reach their stated accuracy on clips rendered by our own corpus generator.

This is the end-to-end check of issue 4: compose -> FluidSynth -> MBROLA -> mix -> dataset -> eval. The
thresholds are below the figures measured on 29 clips (tempo Acc2 0.97, key 0.90, sung pitch 0.998) to
leave room for the small sample.
"""

from __future__ import annotations

import pytest

pytest.importorskip("librosa", reason="needs the eval extra (bash scripts/setup.sh --dev)")
pytest.importorskip("fluidsynth", reason="needs the synth extra (bash scripts/setup.sh --dev)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from songflow.data.synth.corpus import CorpusConfig, make_corpus
    from songflow.data.synth.render import SynthDependencyError, find_soundfont
    from songflow.data.synth.sing import mbrola_available

    try:
        find_soundfont()
    except SynthDependencyError as exc:
        pytest.skip(str(exc))
    if not mbrola_available():
        pytest.skip("mbrola voices absent: run scripts/install_synth_deps.sh")
    out = tmp_path_factory.mktemp("corpus")
    cfg = CorpusConfig(
        out=str(out),
        hours=8 * 12 / 3600,
        seed=7,
        workers=1,
        sample_rate=22050,
        channels=1,
        clip_seconds=(12.0, 12.0),
        vocal_share=0.5,
        progress=False,
    )
    report = make_corpus(cfg)
    assert report["made"] == 8
    return out


def test_checkers_reach_their_accuracy_on_rendered_clips(corpus):
    from songflow.eval.report import evaluate, items_from_corpus, summarize

    items = items_from_corpus(corpus)
    assert len(items) == 8
    summary = summarize(evaluate(items, ("tempo", "key", "pitch", "loudness", "clipping")))
    assert summary["tempo_acc_octave"] >= 0.75
    assert summary["key_acc"] >= 0.5
    assert summary["pitch_acc"] is not None and summary["pitch_acc"] >= 0.9  # some clips are sung
    assert summary["clipping_share_mean"] < 1e-3
