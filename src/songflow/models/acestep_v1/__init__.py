"""ACE-Step v1's networks: the DiT, the lyric Conformer, the mel DC-AE, the vocoder, the codec that joins
them and the UMT5 tag-encoder wrapper. Networks only: loading lives in ``songflow.checkpoint``."""
