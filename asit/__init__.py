"""asit: ASiT (Local-Global Audio Spectrogram vIsion Transformer) for teaching and reproduction."""

__version__ = "0.1.0"
