"""Distribution metrics (FID/KID, or their honestly-named offline stand-ins) and CLIP score.

FID and KID need Inception-v3 weights (torch-fidelity downloads them, or `inception_weights=PATH`
names a local copy). When they cannot be had, the same Fréchet / kernel distances are computed on
a named fallback feature extractor and reported as "FD (<name> features)" / "KD (<name> features)":
those numbers are not comparable with published FIDs and are never called FID.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any, Sequence

import torch
from torch import nn


def inception_available() -> tuple[bool, str]:
    """(available, reason if not). torch-fidelity provides torchmetrics' Inception; this project
    does not depend on it."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return False, "torch-fidelity is not installed"
    return True, ""


def _distances(fid_feature: Any, kid_feature: nn.Module, real: torch.Tensor, fake: torch.Tensor,
               **fid_kwargs) -> dict[str, float | None]:
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    out: dict[str, float | None] = {"fd": None, "kd_mean": None, "kd_std": None}
    fid = FrechetInceptionDistance(feature=fid_feature, normalize=False, **fid_kwargs)
    kid_feature = fid.inception if kid_feature is None else kid_feature
    subset = max(2, min(1000, len(real), len(fake)))
    kid = KernelInceptionDistance(feature=kid_feature, subset_size=subset, subsets=50, normalize=False)
    with torch.no_grad():
        for metric in (fid, kid):
            for start in range(0, len(real), 256):
                metric.update(real[start: start + 256], real=True)
            for start in range(0, len(fake), 256):
                metric.update(fake[start: start + 256], real=False)
    if len(real) > 1 and len(fake) > 1:
        out["fd"] = float(fid.compute())
        kd_mean, kd_std = kid.compute()
        out["kd_mean"], out["kd_std"] = float(kd_mean), float(kd_std)
    return out


def fid_kid(real: torch.Tensor, fake: torch.Tensor, fallback: nn.Module, fallback_name: str,
            inception_weights: str | None = None) -> dict[str, Any]:
    """real, fake: (N, 3, H, W) uint8 (real and fake at the same size for the fallback extractor).

    Returns a dict with `feature_extractor`, `fd_label`, `kd_label`, `fd`, `kd_mean`, `kd_std`,
    `note` (None, or the one line saying why the fallback was used) and `line` (what to print).
    """
    ok, reason = inception_available()
    if ok:
        try:
            values = _distances(2048, None, real, fake, feature_extractor_weights_path=inception_weights)
            return {"feature_extractor": "inception-v3", "fd_label": "FID", "kd_label": "KID", "note": None,
                    **values, "line": _line("FID", "KID", values)}
        except Exception as e:  # no network and no local weights, corrupt weights, ...
            reason = f"Inception weights could not be loaded ({type(e).__name__}: {str(e)[:160]})"
    fd_label, kd_label = f"FD ({fallback_name} features)", f"KD ({fallback_name} features)"
    values = _distances(fallback, fallback, real, fake)
    note = (f"Inception unavailable: {reason}; Fréchet/kernel distances use the {fallback_name} "
            f"feature extractor instead (not comparable with published Inception numbers)")
    return {"feature_extractor": fallback_name, "fd_label": fd_label, "kd_label": kd_label, "note": note,
            **values, "line": note + "\n" + _line(fd_label, kd_label, values)}


def _fmt(v: float | None, spec: str) -> str:
    return "n/a (needs >= 2 images per side)" if v is None else format(v, spec)


def _line(fd_label: str, kd_label: str, v: dict) -> str:
    kd = _fmt(v["kd_mean"], ".4f") + ("" if v["kd_std"] is None else f" ± {v['kd_std']:.4f}")
    return f"{fd_label}: {_fmt(v['fd'], '.3f')}\n{kd_label}: {kd}"


@contextlib.contextmanager
def _hub_offline_unless_set():
    """HF_HUB_OFFLINE=1 for the duration unless the caller chose a value; yields whether offline."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    if previous is None:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield os.environ["HF_HUB_OFFLINE"].lower() not in ("0", "false", "no", "")
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)


def clip_score(images: torch.Tensor, texts: Sequence[str], model: str) -> tuple[float | None, str]:
    """CLIP score of uint8 images (N, 3, H, W) against their prompts: (score, "") or (None, reason)."""
    try:
        from torchmetrics.multimodal.clip_score import CLIPScore
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as e:
        return None, f"CLIP score skipped: {e}"
    with _hub_offline_unless_set() as offline:
        try:
            def load():  # a callable accepts local directories as well as hub ids
                return (CLIPModel.from_pretrained(model, local_files_only=offline),
                        CLIPProcessor.from_pretrained(model, local_files_only=offline))

            metric = CLIPScore(model_name_or_path=load)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:160]
            return None, f"CLIP score skipped: could not load {model!r} ({type(e).__name__}: {first})"
    with torch.no_grad():
        for start in range(0, len(images), 64):
            metric.update(images[start: start + 64], list(texts[start: start + 64]))
        return float(metric.compute()), ""
