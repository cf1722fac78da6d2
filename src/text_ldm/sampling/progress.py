"""Progress while sampling: one bar over every denoising step of every batch, and warnings and log
lines that print above the bar instead of inside its line."""
from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

# Libraries whose console handlers print while a bar is drawn (diffusers and transformers do not propagate to root).
LOGGERS = ("diffusers", "transformers")


class StepBar:
    """`progress=` for `generate` / `denoise`: counts denoising steps over `batches` batches. The total
    starts as batches x `steps` and is corrected when the first batch has its timesteps (img2img runs
    fewer, a second-order sampler more)."""

    def __init__(self, batches: int, steps: int, desc: str = "denoising", disable: bool = False):
        self.batches, self.started = batches, 0
        self.bar = tqdm(total=batches * steps, desc=desc, unit="step", disable=disable)

    def __call__(self, timesteps: Iterable) -> Iterator:
        timesteps = list(timesteps)
        if self.started == 0 and self.bar.total != self.batches * len(timesteps):
            self.bar.total = self.batches * len(timesteps)
        self.started += 1
        if self.batches > 1:
            self.bar.set_postfix_str(f"batch {self.started}/{self.batches}", refresh=False)
        self.bar.refresh()
        for t in timesteps:
            yield t
            self.bar.update(1)

    def __enter__(self) -> "StepBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()


def _show_above_bars(message, category, filename, lineno, file=None, line=None) -> None:
    tqdm.write(warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n"),
               file=file or sys.stderr)


@contextmanager
def output_above_bars():
    """While bars are drawn: Python warnings and the console log records of the root, diffusers and
    transformers loggers go through tqdm.write, which clears the bar, prints the line, and redraws."""
    shown = warnings.showwarning
    warnings.showwarning = _show_above_bars
    try:
        with logging_redirect_tqdm(loggers=[logging.root, *map(logging.getLogger, LOGGERS)]):
            yield
    finally:
        warnings.showwarning = shown
