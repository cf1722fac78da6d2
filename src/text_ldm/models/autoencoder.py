"""Frozen stage-1 autoencoder behind one interface: images <-> scaled latents."""
from __future__ import annotations

import hashlib
import json

import torch
from diffusers import AutoencoderKL, VQModel
from torch import nn

from text_ldm.utils.pretrained import resolve_pretrained

KINDS = ("vq", "kl", "identity")
ENCODE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class FrozenAutoencoder(nn.Module):
    """Encodes images (B, 3, H, W) in [-1, 1] to latents (B, C, H/f, W/f) multiplied by
    `scaling_factor`, and decodes them back.

    - `vq`: diffusers VQModel. Diffusion runs on the pre-quantisation latents; decoding quantises,
      as in CompVis latent-diffusion.
    - `kl`: diffusers AutoencoderKL; the cache stores the posterior mean.
    - `identity`: pixel-space diffusion (no autoencoder), f = 1, C = 3.

    `encode_dtype` ("float32", "bfloat16", "float16") runs `encode` under autocast: the weights stay
    float32 and normalisation layers stay in float32, the convolutions run in the low precision.
    It speeds up latent caching on GPUs; the latents differ in their last bits, so it is part of
    the fingerprint. float16 overflows in some KL VAEs (NaN latents); bfloat16 does not. "auto"
    is resolved once, here: bfloat16 on a CUDA GPU that supports it, else float32 (CPUs without
    native bf16 run it slower than float32).
    """

    def __init__(self, model: nn.Module | None, kind: str, scaling_factor: float, source: str = "",
                 force_not_quantize: bool = False, encode_dtype: str = "float32"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"autoencoder kind={kind!r}; choose one of {KINDS}")
        if encode_dtype == "auto":
            encode_dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
        if encode_dtype not in ENCODE_DTYPES:
            raise ValueError(f"vae.encode_dtype={encode_dtype!r}; choose one of {sorted(ENCODE_DTYPES)} or auto")
        if kind != "identity" and model is None:
            raise ValueError(f"autoencoder kind={kind!r} needs a model")
        self.model = model.eval().requires_grad_(False) if model is not None else None
        self.kind = kind
        self.scaling_factor = float(scaling_factor)
        self.source = source
        self.force_not_quantize = bool(force_not_quantize)
        self.encode_dtype = encode_dtype if model is not None else "float32"  # identity does no arithmetic

    @classmethod
    def from_pretrained(cls, pretrained: str | None = None, kind: str = "vq", subfolder: str | None = None,
                        scaling_factor: float | None = None, force_not_quantize: bool = False,
                        encode_dtype: str = "float32") -> "FrozenAutoencoder":
        """Load a hub id or local directory (hub layout, `subfolder` like "vqvae" or "vae").

        `scaling_factor=None` takes the model config's value. Set it explicitly where the config
        is wrong: CompVis/ldm-celebahq-256 latents are unscaled (1.0), not VQModel's 0.18215.
        `force_not_quantize` decodes a VQModel without its codebook (the toy autoencoder is trained so).
        """
        if kind == "identity":
            return cls(None, kind, 1.0 if scaling_factor is None else scaling_factor, "identity")
        if not pretrained:
            raise ValueError(f"vae.pretrained is empty: give a hub id or a local directory for kind={kind!r}")
        if kind not in KINDS:
            raise ValueError(f"autoencoder kind={kind!r}; choose one of {KINDS}")
        path = resolve_pretrained(pretrained)
        model_cls = VQModel if kind == "vq" else AutoencoderKL
        model = model_cls.from_pretrained(path, **({"subfolder": subfolder} if subfolder else {})).float()
        scale = model.config.scaling_factor if scaling_factor is None else scaling_factor
        return cls(model, kind, scale, f"{pretrained}/{subfolder or ''}", force_not_quantize, encode_dtype)

    @property
    def latent_channels(self) -> int:
        return 3 if self.model is None else int(self.model.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 1 if self.model is None else 2 ** (len(self.model.config.block_out_channels) - 1)

    def train(self, mode: bool = True):  # frozen
        return super().train(False)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f), already multiplied by scaling_factor."""
        if self.model is None:
            return images * self.scaling_factor
        dtype = ENCODE_DTYPES[self.encode_dtype]
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
            if self.kind == "vq":  # pre-quantisation latents: the codebook is applied when decoding
                latents = self.model.encode(images).latents
            else:
                latents = self.model.encode(images).latent_dist.mean
        return latents.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, h*f, w*f) images in [-1, 1]."""
        latents = latents / self.scaling_factor
        if self.model is None:
            return latents.clamp(-1, 1)
        if self.kind == "vq":
            return self.model.decode(latents, force_not_quantize=self.force_not_quantize).sample.clamp(-1, 1)
        return self.model.decode(latents).sample.clamp(-1, 1)

    def fingerprint(self) -> str:
        """Changes whenever the encoder would produce different latents: kind, scale, encode dtype, config,
        weights. Nothing that says where the model was loaded from, so a moved or copied checkout keeps its caches."""
        identity = {"kind": self.kind, "scale": self.scaling_factor}  # decode-only options do not change latents
        if self.encode_dtype != "float32":  # only when set, so float32 caches keep their fingerprints
            identity["encode_dtype"] = self.encode_dtype
        digest = hashlib.sha256(json.dumps(identity).encode())
        if self.model is not None:
            # diffusers' bookkeeping keys (_name_or_path: the load path, _diffusers_version, ...) leave the
            # latents alone; so does the config's scaling_factor, which `scale` above replaces.
            config = {k: v for k, v in dict(self.model.config).items()
                      if not k.startswith("_") and k != "scaling_factor"}
            digest.update(json.dumps(config, sort_keys=True, default=str).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
