"""songflow.models: one sub-package per model family (``acestep_v1``); shared layers live in
``songflow.nn``."""
