"""ACE-Step 1.5 networks (family ``acestep-v15``): the DiT checkpoint (:class:`AceStep15DiT`) and its
config (:class:`AceStep15Config`). The VAE and text-encoder wrappers live in ``vae.py`` /
``text_encoder.py`` and are imported from their own modules (they need optional dependencies)."""

from songflow.models.acestep_v15.config import AceStep15Config
from songflow.models.acestep_v15.model import AceStep15DiT

__all__ = ["AceStep15Config", "AceStep15DiT"]
