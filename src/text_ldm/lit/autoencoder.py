"""Stage 1: train the small VQ autoencoder of the embedded path, then export it in hub layout."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import VQModel
from lightning.pytorch.utilities import rank_zero_only

from text_ldm.utils.config import plain
from text_ldm.utils.optim import configure_from_partials


class VQAutoencoderModule(L.LightningModule):
    """diffusers VQModel trained with L1 + MSE reconstruction (+ the VQ commitment loss when
    `quantize`). With `quantize=False` the codebook is bypassed and the model is a plain
    convolutional autoencoder with continuous latents; decode it with `force_not_quantize`.
    `train_crop` trains on random crops: the model is fully convolutional, and on a CPU a 32px
    crop costs a quarter of the 64px image.

    After fitting, the latent scale is set so that the pre-quantisation latents of the training
    images have unit variance (recorded as the model config's `scaling_factor`), and the model is
    saved with `save_pretrained` to `export_dir`, in fp16 to keep the shipped file small.
    `init_from` (a hub-layout VQModel directory with the same `vq` config, e.g. the shipped
    artifacts/toy_vq) starts from those weights instead of random ones: continued training.
    batch: {"image": (B, 3, H, W) in [-1, 1]}.
    """

    def __init__(self, vq: dict, optimizer: dict, lr_scheduler: dict | None = None, export_dir: str | None = None,
                 quantize: bool = True, commit_weight: float = 1.0, train_crop: int | None = None,
                 scale_batches: int = 16, init_from: str | None = None):
        super().__init__()
        self.save_hyperparameters({k: plain(v) for k, v in locals().items() if k not in ("self", "__class__")})
        self.model = VQModel(**plain(vq))
        if init_from:
            # strict: a directory whose architecture differs from `vq` is an error, not a partial load
            self.model.load_state_dict(VQModel.from_pretrained(init_from).float().state_dict())

    def _losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        latents = self.model.encode(images).latents
        out = self.model.decode(latents, force_not_quantize=not self.hparams.quantize)
        l1, mse = F.l1_loss(out.sample, images), F.mse_loss(out.sample, images)
        commit = out.commit_loss.mean() if out.commit_loss is not None else torch.zeros((), device=images.device)
        psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))  # images span [-1, 1]: peak-to-peak 2
        return {"loss": l1 + mse + self.hparams.commit_weight * commit, "l1": l1, "commit": commit, "psnr": psnr}

    def _random_crop(self, images: torch.Tensor) -> torch.Tensor:
        crop, size = self.hparams.train_crop, images.shape[-1]
        if not crop or crop >= size:
            return images
        factor = 2 ** (len(self.model.config.block_out_channels) - 1)  # keep crops on the latent grid
        top, left = (int(torch.randint(0, (size - crop) // factor + 1, ())) * factor for _ in range(2))
        return images[..., top:top + crop, left:left + crop]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if len(batch["image"]) == 0:  # every image of the batch was corrupt (data.on_missing=skip)
            return None
        losses = self._losses(self._random_crop(batch["image"]))
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(batch["image"]))
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if len(batch["image"]) == 0:
            return
        losses = self._losses(batch["image"])
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, prog_bar=True, sync_dist=True,
                      batch_size=len(batch["image"]))

    def configure_optimizers(self):
        return configure_from_partials(self.model.parameters(), self.hparams.optimizer, self.hparams.lr_scheduler)

    @torch.no_grad()
    def latent_std(self, loader) -> float:
        """Std of pre-quantisation latents over the first `scale_batches` batches of `loader`."""
        chunks = []
        for i, batch in enumerate(loader):
            if i >= self.hparams.scale_batches:
                break
            chunks.append(self.model.encode(batch["image"].to(self.device)).latents.float().cpu())
        return float(torch.cat(chunks).std())

    def on_fit_end(self) -> None:
        # on_fit_end, not on_train_end: it also runs for trainer.max_steps=0 (a re-export of init_from)
        if self.hparams.export_dir:
            self.export(self.hparams.export_dir, self.trainer.datamodule.train_dataloader())

    @rank_zero_only
    def export(self, export_dir: str, loader) -> None:
        self.model.eval()
        scale = 1.0 / self.latent_std(loader)
        export_copy = VQModel.from_config(self.model.config)
        export_copy.load_state_dict(self.model.state_dict())
        # from_config drops scaling_factor, so it is registered on the copy that is saved.
        export_copy.register_to_config(scaling_factor=scale)
        export_copy.to(torch.float16).save_pretrained(Path(export_dir), safe_serialization=True)
        print(f"[autoencoder] saved to {export_dir} (latent scale {scale:.4f})")

