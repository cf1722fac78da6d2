"""Measure a checkpoint: `python evaluate.py ckpt=PATH [n_prompts=100 ...]` (see docs/evaluation.md)."""
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from text_ldm.utils.cli import report_errors

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@report_errors
def main(cfg: DictConfig) -> None:
    from text_ldm.evaluation.checks import check

    check(cfg)  # before torch and the dataset load: a bad argument is refused in a moment
    from text_ldm.evaluation.app import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
