"""songflow: an independent implementation of the ACE-Step v1 music generation model."""

__version__ = "0.1.0"
