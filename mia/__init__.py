"""mia: membership inference against diffusion models."""

__version__ = "0.1.0"
