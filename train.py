"""Train a model: `python train.py [group=option ...] [key=value ...]` (see README)."""
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from text_ldm.utils.cli import report_errors

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@report_errors
def main(cfg: DictConfig) -> float | None:
    from text_ldm.training import train  # after Hydra parsed the command line: `--help` stays fast

    metrics = train(cfg)
    objective = cfg.get("optimized_metric")
    return metrics.get(objective) if objective else None


if __name__ == "__main__":
    main()
