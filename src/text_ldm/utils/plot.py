"""A dependency-free line plot (PIL), for metric-vs-step pictures written during training."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from text_ldm.utils.atomic import atomic_save_png


def line_plot(points: Sequence[tuple[float, float]], path: str | Path, title: str, y_label: str = "",
              y_range: tuple[float, float] = (0.0, 1.0), size: tuple[int, int] = (480, 320)) -> Path:
    """Draw `points` (x, y), sorted by x, as a line with dots; y axis fixed to `y_range` so that
    successive plots compare. Written atomically to `path` (PNG)."""
    width, height = size
    left, right, top, bottom = 56, 16, 28, 36
    font = ImageFont.load_default(size=12)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 6), title, fill="black", font=font)
    x0, y0, x1, y1 = left, top, width - right, height - bottom
    lo, hi = y_range
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y1 - frac * (y1 - y0)
        draw.line((x0, y, x1, y), fill=(225, 225, 225))
        draw.text((4, y - 7), f"{lo + frac * (hi - lo):.2f}", fill="black", font=font)
    draw.rectangle((x0, y0, x1, y1), outline="black")
    points = sorted(points)
    if points:
        xs = [p[0] for p in points]
        span = (max(xs) - min(xs)) or 1.0
        coords = [(x0 + (x - min(xs)) / span * (x1 - x0) if len(points) > 1 else (x0 + x1) / 2,
                   y1 - (min(max(y, lo), hi) - lo) / ((hi - lo) or 1.0) * (y1 - y0)) for x, y in points]
        if len(coords) > 1:
            draw.line(coords, fill=(31, 119, 180), width=2)
        for cx, cy in coords:
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=(31, 119, 180))
        draw.text((x0, y1 + 6), f"step {min(xs):g}", fill="black", font=font)
        draw.text((x1 - 70, y1 + 6), f"step {max(xs):g}", fill="black", font=font)
    if y_label:
        draw.text((x0 + 6, y0 + 4), y_label, fill=(90, 90, 90), font=font)
    atomic_save_png(image, path)
    return Path(path)
