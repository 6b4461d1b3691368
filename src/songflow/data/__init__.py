"""Data tooling: synthetic corpora (``songflow.data.synth``)."""
