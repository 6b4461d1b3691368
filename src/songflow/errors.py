"""User-facing errors.

Every error a user can cause (bad input, a wrong checkpoint folder, an unreadable file) is raised as a
:class:`SongflowError` whose message says what went wrong and what to do. The CLI prints the message
and exits with a non-zero code instead of showing a traceback.
"""


class SongflowError(Exception):
    """Base class of errors caused by the user's input or environment (not by a bug)."""


class ConfigError(SongflowError, ValueError):
    """A config file or a request field holds an unknown key or an invalid value."""


class CheckpointError(SongflowError):
    """A checkpoint folder or weight file is missing, incomplete or does not match the model."""


class AudioError(SongflowError):
    """An audio file cannot be read or written, or holds unusable audio."""
