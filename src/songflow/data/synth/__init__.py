"""Synthetic labeled music: procedural composer (``compose``), lyric lines (``lyrics_gen``), theory.

The composer needs ``pretty_midi`` and ``pronouncing`` (imported lazily, on first use).
"""
