"""asit: ASiT (Local-Global Audio Spectrogram vIsion Transformer) for teaching and reproduction."""

__version__ = "0.1.0"

from asit import models as _models  # noqa: E402,F401  (registers the asit_vit_* models with timm)
