"""Stage 2: the text-conditioned latent diffusion LightningModule."""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_snr
from lightning.pytorch.utilities import rank_zero_warn

from text_ldm.models.components import CHECKPOINT_KEY, DiffusionComponents
from text_ldm.sampling.checks import guidance_problems
from text_ldm.sampling.pipeline import generate
from text_ldm.sampling.schedulers import make_sampler, recommended_sampling
from text_ldm.utils.checkpoint_io import check_state_matches, config_changes
from text_ldm.utils.config import plain
from text_ldm.utils.optim import configure_from_partials

FROZEN_PREFIXES = ("text_encoder.", "autoencoder.")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")
# Lightning precision flag -> the dtype the frozen text encoder and autoencoder run in.
FROZEN_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "bf16-true": torch.bfloat16,
                 "16-mixed": torch.float16, "16": torch.float16, "16-true": torch.float16}


class LatentDiffusion(L.LightningModule):
    """UNet2DConditionModel trained on cached latents, conditioned on a frozen text encoder through
    cross-attention, with one of three objectives (`objective`): predict the noise (epsilon, the classic
    recipe) or v = sqrt(a) noise - sqrt(1 - a) x0 on DDPM's schedule (`noise_scheduler`), or, for
    flow matching (rectified flow, SD3), the velocity noise - x0 along x_t = (1 - sigma) x0 + sigma noise
    (`flow_scheduler`: diffusers' FlowMatchEulerDiscreteScheduler, its `shift` moving sigma towards noise).

    The parts are built by `DiffusionComponents` (models/components.py), whose checkpoint entry lets
    sampling rebuild them without this module. The frozen text encoder and autoencoder are loaded from
    their own `pretrained` sources and left out of checkpoints.

    Optimisation options, each off by default: `noise_offset` (extra per-channel noise, Guttenberg
    2023), `snr_gamma` (min-SNR-gamma weighting), `gradient_checkpointing`, `channels_last`,
    `compile` (true, or a dict of torch.compile kwargs). `sampling` is the recipe's recommended
    sampler, steps and guidance: previews use it, and checkpoints carry it to sample.py.

    batch: {"latent": (B, C, h, w) scaled latents, "caption": B strings}.
    """

    def __init__(self, unet: dict, text_encoder: dict, autoencoder: dict, noise_scheduler: dict,
                 image_size: int, optimizer: dict | None = None, lr_scheduler: dict | None = None,
                 caption_dropout: float = 0.1, snr_gamma: float | None = None, sampling: dict | None = None,
                 noise_offset: float = 0.0, gradient_checkpointing: bool = False, channels_last: bool = False,
                 compile: bool | dict = False, timestep_sampling: dict | None = None, objective: str = "epsilon",
                 flow_scheduler: dict | None = None):
        super().__init__()
        self.save_hyperparameters({k: plain(v) for k, v in locals().items() if k not in ("self", "__class__")})
        if objective == "flow_matching" and snr_gamma is not None:
            raise ValueError("model.snr_gamma weights epsilon / v-prediction losses by SNR; flow matching weights "
                             "by its timestep sampling: set model.snr_gamma=null")
        sampling = plain(sampling) or {}
        if problems := guidance_problems(sampling.get("guidance_scale"), 0.0, sampling.get("guidance_interval")):
            raise ValueError("model.sampling: " + "; ".join(problems))
        self.sampling = recommended_sampling(objective, sampling)
        self.components = DiffusionComponents.build(unet, text_encoder, autoencoder, noise_scheduler, image_size,
                                                    objective, flow_scheduler, self.sampling)
        make_sampler(self.sampling["sampler"], self.components.noise_scheduler.config)  # refuse a mismatch now
        self.unet, self.noise_scheduler = self.components.unet, self.components.noise_scheduler
        self.text_encoder, self.autoencoder = self.components.text_encoder, self.components.autoencoder
        self.caption_dropout = float(caption_dropout)
        self.timestep_sampling = {"kind": "uniform", "mean": 0.0, "std": 1.0, **(plain(timestep_sampling) or {})}
        if self.timestep_sampling["kind"] not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"model.timestep_sampling.kind={self.timestep_sampling['kind']!r}; "
                             f"choose one of {TIMESTEP_SAMPLINGS}")
        self.snr_gamma = snr_gamma
        self.noise_offset = float(noise_offset)
        self.channels_last = bool(channels_last)
        self._rng_to_restore: dict | None = None
        self._batch_start_rng: dict | None = None
        if gradient_checkpointing:  # recompute activations in backward: less memory, ~30% more compute
            self.unet.enable_gradient_checkpointing()
        if self.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile:  # in place, so state_dict keys keep their names (no `_orig_mod.`)
            self.unet.compile(**(plain(compile) if isinstance(compile, dict) or hasattr(compile, "keys") else {}))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.components.latent_shape

    def forward(self, noisy_latents, timesteps, context):
        """(B, C, h, w), (B,), (B, L, D) -> the prediction (noise or v) (B, C, h, w)."""
        if self.channels_last:
            noisy_latents = noisy_latents.contiguous(memory_format=torch.channels_last)
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=context).sample

    def cast_frozen(self, precision: str | None) -> None:
        """Run the frozen text encoder and autoencoder in the low precision of a Lightning
        `precision` flag (bf16-mixed -> bfloat16, 16-mixed -> float16); the trainable UNet keeps
        fp32 master weights. Called by `train()` before the trainer builds EMA copies."""
        dtype = FROZEN_DTYPES.get(str(precision))
        if dtype is not None:
            self.text_encoder.to(dtype)
            self.autoencoder.to(dtype)

    def _drop_captions(self, captions: list[str]) -> list[str]:
        """Classifier-free guidance: replace a `caption_dropout` fraction by the empty prompt."""
        keep = torch.rand(len(captions)) >= self.caption_dropout
        return [c if k else "" for c, k in zip(captions, keep.tolist())]

    def _sample_noise(self, latents: torch.Tensor, generator=None) -> torch.Tensor:
        """(B, C, h, w) standard normal noise, plus `noise_offset` x a per-(sample, channel)
        constant, which lets the model learn to shift an image's mean brightness."""
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        if self.noise_offset:
            offset = torch.randn((*latents.shape[:2], 1, 1), generator=generator, device=latents.device,
                                 dtype=latents.dtype)
            noise = noise + self.noise_offset * offset
        return noise

    @property
    def objective(self) -> str:
        return self.components.objective

    def _target(self, latents, noise, index) -> torch.Tensor:
        """What the UNet learns to predict at training indices (B,): the noise, v, or the flow's velocity."""
        if self.objective == "flow_matching":
            return noise - latents
        if self.objective == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, index)
        return noise

    def sample_timesteps(self, n: int, device, generator=None, kind: str | None = None) -> torch.Tensor:
        """(n,) training indices in [0, T), higher = noisier (the DDPM timestep; for flow matching, the
        place in the sigma table). uniform: the classic recipe. logit_normal (Esser et al. 2024, SD3):
        T * sigmoid(N(mean, std)), which spends fewer steps on the nearly clean end, where the
        image already shows what the caption says and the text has little left to teach."""
        num_steps = self.noise_scheduler.config.num_train_timesteps
        if (kind or self.timestep_sampling["kind"]) == "uniform":
            return torch.randint(0, num_steps, (n,), generator=generator, device=device)
        u = compute_density_for_timestep_sampling("logit_normal", n, logit_mean=self.timestep_sampling["mean"],
                                                  logit_std=self.timestep_sampling["std"], device=device,
                                                  generator=generator)
        return (u * num_steps).long().clamp_(0, num_steps - 1)

    def _diffusion_loss(self, latents, captions, generator=None, timestep_kind: str | None = None) -> torch.Tensor:
        context = self.text_encoder(captions).to(latents.dtype)
        noise = self._sample_noise(latents, generator)
        index = self.sample_timesteps(latents.shape[0], latents.device, generator, timestep_kind)
        noisy, timesteps = self.components.forward_process(latents, noise, index)
        target = self._target(latents, noise, index)
        per_sample = F.mse_loss(self(noisy, timesteps, context).float(), target.float(), reduction="none")
        return (per_sample.mean(dim=(1, 2, 3)) * self._loss_weights(index)).mean()

    def _loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weighting (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon,
        min(SNR, gamma) / (SNR + 1) for v. It stops the many easy low-noise steps from dominating;
        1 everywhere when snr_gamma is None. timesteps: (B,) -> (B,)."""
        if self.snr_gamma is None:
            return torch.ones(timesteps.shape, device=timesteps.device)
        snr = compute_snr(self.noise_scheduler, timesteps)
        clipped = torch.clamp(snr, max=self.snr_gamma)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped / snr

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._diffusion_loss(batch["latent"], self._drop_captions(batch["caption"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["latent"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Fixed noise and uniform timesteps per batch, so validation curves compare like with like,
        # across checkpoints and across timestep samplings.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self._diffusion_loss(batch["latent"], batch["caption"], generator, timestep_kind="uniform")
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["latent"].shape[0])

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Exact resume: the RNG states saved with the checkpoint are put back just before the first
        # step, after the sanity check and loader setup (which draw from the global RNG) have run.
        if self._rng_to_restore is not None:
            _set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        self._batch_start_rng = _rng_states()

    def restore_batch_start_rng(self) -> None:
        """Back to the RNG states this batch started with, for a checkpoint of the state before it
        (callbacks/interrupt_checkpoint.py: an interrupt inside the batch's step)."""
        if self._batch_start_rng is not None:
            _set_rng_states(self._batch_start_rng)

    def configure_optimizers(self):
        return configure_from_partials(self.unet.parameters(), self.hparams.optimizer, self.hparams.lr_scheduler,
                                       total_steps=lambda: int(self.trainer.estimated_stepping_batches))

    @torch.no_grad()
    def log_images(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """One preview image per prompt, at the recommended sampling and seeds 0..N-1:
        {"samples": (N, 3, H, W) in [0, 1]}."""
        p = self.sampling
        sampler = make_sampler(p["sampler"], self.noise_scheduler.config)
        images = generate(self.unet, sampler, self.text_encoder, self.autoencoder, prompts, list(range(len(prompts))),
                          self.latent_shape, steps=p["steps"], guidance_scale=p["guidance_scale"],
                          guidance_interval=p["guidance_interval"])
        return {"samples": images}

    # The frozen parts come from their own pretrained sources; keeping them out of checkpoints
    # saves hundreds of MB per file (CLIP, the VQ-VAE) and keeps resume cheap.
    # With EMA (Lightning's WeightAveraging), "state_dict" holds the averaged weights and
    # "current_model_state" the raw ones; both drop the frozen parts.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for state in _weight_states(checkpoint):
            for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
                del state[key]
        checkpoint[CHECKPOINT_KEY] = self.components.checkpoint_entry()
        checkpoint["rng_states"] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A resumed run whose config changed since the checkpoint (a new recipe after `git pull`, say)
        # is told what changed: as the reason when the weights no longer fit, as a warning when they do.
        changes = config_changes(plain(checkpoint.get("hyper_parameters", {})), plain(dict(self.hparams)))
        hint = ("; the checkpoint was trained with a different config (" + "; ".join(changes[:8]) +
                "): start a fresh run (a new hydra.run.dir; for the demo, `make clean-demo`)") if changes else ""
        # Put back, not `strict_loading = False`: Lightning's WeightAveraging reloads both states with
        # a strict load_state_dict of its own, which would miss them.
        for state in _weight_states(checkpoint):
            for key, value in self.state_dict().items():
                if key.startswith(FROZEN_PREFIXES):
                    state.setdefault(key, value)
            # Here, not only in sample.py: Lightning's resume (`ckpt_path=`) comes through this hook
            # too, and gets the same list of keys instead of load_state_dict's traceback.
            check_state_matches(self.state_dict(), state, hint)
        # Lightning restores the optimiser's param groups (lr, betas, weight decay) and the schedule's state
        # after this hook: overrides of those would be printed as if they applied, and they do not.
        kept = [c for c in changes if c.startswith(("optimizer.", "lr_scheduler."))]
        applied = [c for c in changes if c not in kept]
        if applied:
            rank_zero_warn("resuming with a config that differs from the checkpoint's: " + "; ".join(applied))
        if kept:
            rank_zero_warn("resuming continues the checkpoint's optimiser and LR schedule, so these overrides are "
                           "ignored: " + "; ".join(kept) + " (a fresh run, another hydra.run.dir, uses them)")
        self._rng_to_restore = checkpoint.get("rng_states")


def _weight_states(checkpoint: dict) -> list[dict]:
    return [checkpoint[k] for k in ("state_dict", "current_model_state") if k in checkpoint]


def _rng_states() -> dict:
    """torch (CPU, CUDA), numpy and python RNG states as tensors / plain types, so the checkpoint
    still loads with torch.load(weights_only=True): Lightning's `_collect_rng_states` keeps numpy's
    state as an ndarray, which that loader refuses."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                         has_gauss, gauss], "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
