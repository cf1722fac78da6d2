"""One callback renders the LightningModule's `log_images()` dict to PNG files and to the loggers."""
from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from text_ldm.callbacks import shared_log_dir
from text_ldm.utils.atomic import atomic_save_png
from text_ldm.utils.grid import captioned_grid


class ImageLogger(L.Callback):
    """Every `every_n_epochs` validation epochs, samples `images_per_prompt` images for each of the
    datamodule's preview prompts and writes a captioned grid to `<log_dir>/images/`."""

    def __init__(self, every_n_epochs: int = 1, images_per_prompt: int = 4, max_prompts: int = 4):
        self.every_n_epochs = int(every_n_epochs)
        self.images_per_prompt = int(images_per_prompt)
        self.max_prompts = int(max_prompts)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs <= 0 or not hasattr(pl_module, "log_images"):
            return
        last_epoch = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) > 0
        if (trainer.current_epoch + 1) % self.every_n_epochs and not last_epoch:
            return
        log_dir = shared_log_dir(trainer)
        if not trainer.is_global_zero:
            return
        prompts = trainer.datamodule.preview_prompts()[: self.max_prompts]
        if not prompts:
            return
        was_training = pl_module.training
        pl_module.eval()
        repeated = [p for p in prompts for _ in range(self.images_per_prompt)]
        for key, images in pl_module.log_images(repeated).items():
            rows = list(images.split(self.images_per_prompt))
            grid = captioned_grid(rows, prompts)
            out = log_dir / "images" / f"{key}_step{trainer.global_step:06d}.png"
            atomic_save_png(grid, out)
            self._to_loggers(trainer, key, grid)
        pl_module.train(was_training)

    @staticmethod
    def _to_loggers(trainer: L.Trainer, key: str, grid) -> None:
        import numpy as np

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"images/{key}", np.asarray(grid), trainer.global_step, dataformats="HWC")
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=f"images/{key}", images=[grid], step=trainer.global_step)
