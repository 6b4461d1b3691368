"""The REST server: the app factory (``app``), one router per resource (``routes/``), the shared
dependencies (``deps``), the request body derived from the request dataclasses (``bodies``), uploads,
response models (``schemas``) and the persistent job store with its worker (``jobs``)."""
