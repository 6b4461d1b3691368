"""Benchmarks that print figures: model speed/memory (``speed``) and server load (``serve``)."""
