"""Attribute fidelity during training: the evaluate.py metric, on a few held-out prompts, every N epochs."""
from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from text_ldm.callbacks import shared_log_dir
from text_ldm.data.celeba_layout import read_attributes
from text_ldm.evaluation.app import sample_images, to_uint8
from text_ldm.evaluation.attribute_classifier import ClassifierConfig, get_classifier, predict
from text_ldm.evaluation.fidelity import accuracy_vs_targets
from text_ldm.evaluation.prompts import build_prompts
from text_ldm.utils.plot import line_plot


class AttributeFidelityMonitor(L.Callback):
    """Every `every_n_epochs` validation epochs (and at the last one), samples one image for each of
    `n_prompts` held-out attribute prompts with the model being trained, scores them with the
    dataset's cached attribute classifier (the one evaluate.py uses; trained on first use), logs
    `eval/attr_acc/<attribute>` and `eval/attr_acc/mean` to every logger and redraws
    `<log_dir>/eval/attr_fidelity.png`, the mean accuracy against the training step."""

    def __init__(self, every_n_epochs: int = 5, n_prompts: int = 32, steps: int = 20, guidance_scale: float = 3.0,
                 seed: int = 0, batch_size: int = 32, classifier: dict | None = None):
        self.every_n_epochs, self.n_prompts, self.steps = int(every_n_epochs), int(n_prompts), int(steps)
        self.guidance_scale, self.seed, self.batch_size = float(guidance_scale), int(seed), int(batch_size)
        self.classifier_config = ClassifierConfig(**(classifier or {}))
        self.history: list[tuple[int, float]] = []
        self._classifier = None

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs > 0
        return self.every_n_epochs > 0 and (epoch % self.every_n_epochs == 0 or last)

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, not at validation time: validation runs without autograd, and the classifier may need training.
        datamodule = trainer.datamodule
        names, rows = read_attributes(datamodule.layout.attribute_path)
        self._classifier, _ = get_classifier(datamodule.root, names, rows, datamodule.layout.split_ids("train"),
                                             datamodule.image_size, self.classifier_config)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._due(trainer):
            return
        log_dir = shared_log_dir(trainer)
        if not trainer.is_global_zero or self._classifier is None:
            return
        datamodule = trainer.datamodule
        names, rows = read_attributes(datamodule.layout.attribute_path)
        test_ids = datamodule.layout.split_ids("test")
        prompts = build_prompts(names, rows, test_ids, min(self.n_prompts, len(test_ids)), self.seed)
        was_training = pl_module.training
        pl_module.eval()
        images = sample_images(pl_module.components, pl_module.sampling["sampler"], [p.text for p in prompts],
                               [self.seed + i for i in range(len(prompts))], self.steps, self.guidance_scale,
                               self.batch_size, "fidelity")
        pl_module.train(was_training)
        predictions = predict(self._classifier, to_uint8(images, datamodule.image_size))
        scores = accuracy_vs_targets(predictions, [p.targets for p in prompts], names)
        metrics = {f"eval/attr_acc/{name}": value for name, value in scores.items() if value is not None}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.history.append((trainer.global_step, scores["mean"]))
        out = log_dir / "eval" / "attr_fidelity.png"
        line_plot(self.history, out, title=f"attribute fidelity, {len(prompts)} held-out prompts",
                  y_label="mean accuracy")

    def state_dict(self) -> dict:
        return {"history": [list(p) for p in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(p) for p in state_dict.get("history", [])]
