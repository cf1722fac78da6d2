"""Generate images from a trained checkpoint: `python sample.py ckpt=PATH prompt="..."` (see README)."""
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from text_ldm.utils.cli import quote_free_text, report_errors

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
# Keys whose values are whatever a person types: Hydra must not read their commas or quotes as syntax.
FREE_TEXT = ("prompt", "negative_prompt")


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
@report_errors
def main(cfg: DictConfig) -> None:
    from text_ldm.sampling.checks import check

    check(cfg)  # before torch and diffusers load: a bad argument is refused in a moment
    from text_ldm.sampling.app import run

    label = "export" if cfg.get("export_dir") else ("forward-noise strip" if cfg.mode == "forward_noise" else "grid")
    print(f"{label}: {run(cfg)}")


if __name__ == "__main__":
    sys.argv[1:] = quote_free_text(sys.argv[1:], FREE_TEXT)
    main()
