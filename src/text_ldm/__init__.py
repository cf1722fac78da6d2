"""text_ldm: text-to-image latent diffusion training with Lightning + Hydra."""

__version__ = "0.1.0"
