"""Stage 2: the text-conditioned latent diffusion LightningModule."""
from __future__ import annotations


import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from hydra.utils import instantiate

from text_ldm.models.unet import build_unet
from text_ldm.sampling.pipeline import generate
from text_ldm.sampling.schedulers import make_sampler
from text_ldm.utils.config import plain
from text_ldm.utils.optim import configure_from_partials

FROZEN_PREFIXES = ("text_encoder.", "autoencoder.")


class LatentDiffusion(L.LightningModule):
    """UNet2DConditionModel trained to predict the noise added to cached latents, conditioned on a
    frozen text encoder through cross-attention.

    Every argument is a plain config dict, saved as hyper-parameters, so a checkpoint alone
    rebuilds the model (`load_from_checkpoint`). The frozen text encoder and autoencoder are
    loaded from their own `pretrained` sources and left out of checkpoints.

    batch: {"latent": (B, C, h, w) scaled latents, "caption": B strings}.
    """

    def __init__(self, unet: dict, text_encoder: dict, autoencoder: dict, noise_scheduler: dict,
                 image_size: int, optimizer: dict | None = None, lr_scheduler: dict | None = None,
                 caption_dropout: float = 0.1, snr_gamma: float | None = None, preview: dict | None = None):
        super().__init__()
        self.save_hyperparameters({k: plain(v) for k, v in locals().items() if k not in ("self", "__class__")})
        self.text_encoder = instantiate(plain(text_encoder))
        self.autoencoder = instantiate(plain(autoencoder))
        factor = self.autoencoder.downsample_factor
        if image_size % factor:
            raise ValueError(f"image_size={image_size} is not divisible by the autoencoder's factor {factor}")
        self.latent_shape = (self.autoencoder.latent_channels, image_size // factor, image_size // factor)
        self.unet = build_unet(plain(unet), self.latent_shape[0], self.latent_shape[1], self.text_encoder.embed_dim)
        self.noise_scheduler = DDPMScheduler(**plain(noise_scheduler))
        self.caption_dropout = float(caption_dropout)
        self.snr_gamma = snr_gamma
        self.preview = {"sampler": "ddim", "steps": 50, "guidance_scale": 3.0, "seed": 0, **(plain(preview) or {})}

    def forward(self, noisy_latents, timesteps, context):
        """(B, C, h, w), (B,), (B, L, D) -> predicted noise (B, C, h, w)."""
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=context).sample

    def _drop_captions(self, captions: list[str]) -> list[str]:
        """Classifier-free guidance: replace a `caption_dropout` fraction by the empty prompt."""
        keep = torch.rand(len(captions)) >= self.caption_dropout
        return [c if k else "" for c, k in zip(captions, keep.tolist())]

    def _diffusion_loss(self, latents, captions, generator=None) -> torch.Tensor:
        context = self.text_encoder(captions).to(latents.dtype)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator, device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        per_sample = F.mse_loss(self(noisy, timesteps, context).float(), noise.float(), reduction="none")
        return (per_sample.mean(dim=(1, 2, 3)) * self._loss_weights(timesteps)).mean()

    def _loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weighting (Hang et al. 2023) for epsilon prediction: min(SNR, gamma) / SNR.
        It stops the many easy low-noise steps from dominating; 1 everywhere when snr_gamma is None."""
        if self.snr_gamma is None:
            return torch.ones(timesteps.shape, device=timesteps.device)
        alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        snr = alphas_cumprod / (1 - alphas_cumprod)
        return torch.clamp(snr, max=self.snr_gamma) / snr

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._diffusion_loss(batch["latent"], self._drop_captions(batch["caption"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["latent"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Fixed noise and timesteps per batch, so the validation curve compares like with like.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self._diffusion_loss(batch["latent"], batch["caption"], generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["latent"].shape[0])

    def on_train_epoch_start(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        return configure_from_partials(self.unet.parameters(), self.hparams.optimizer, self.hparams.lr_scheduler)

    @torch.no_grad()
    def log_images(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """One preview image per prompt: {"samples": (N, 3, H, W) in [0, 1]}."""
        p = self.preview
        sampler = make_sampler(p["sampler"], self.noise_scheduler.config)
        seeds = [p["seed"] + i for i in range(len(prompts))]
        images = generate(self.unet, sampler, self.text_encoder, self.autoencoder, prompts, seeds,
                          self.latent_shape, steps=p["steps"], guidance_scale=p["guidance_scale"])
        return {"samples": images}

    # The frozen parts come from their own pretrained sources; keeping them out of checkpoints
    # saves hundreds of MB per file (CLIP, the VQ-VAE) and keeps resume cheap.
    # With EMA (Lightning's WeightAveraging), "state_dict" holds the averaged weights and
    # "current_model_state" the raw ones; both drop the frozen parts.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for state in _weight_states(checkpoint):
            for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for state in _weight_states(checkpoint):
            for key, value in self.state_dict().items():
                if key.startswith(FROZEN_PREFIXES):
                    state.setdefault(key, value)


def _weight_states(checkpoint: dict) -> list[dict]:
    return [checkpoint[k] for k in ("state_dict", "current_model_state") if k in checkpoint]
