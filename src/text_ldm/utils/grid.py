"""Image grids with their prompts written under each row."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL RGB."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def captioned_grid(rows: Sequence[torch.Tensor], captions: Sequence[str], upscale: int = 2,
                   pad: int = 4, font_size: int = 12) -> Image.Image:
    """rows[r]: (K, 3, H, W) images in [0, 1] for captions[r]. Returns one RGB image with each row's
    images side by side (upscaled by `upscale`, nearest) and its caption wrapped underneath."""
    if len(rows) != len(captions):
        raise ValueError(f"{len(rows)} rows but {len(captions)} captions")
    font = ImageFont.load_default(size=font_size)
    cols = max(int(r.shape[0]) for r in rows)
    h, w = (int(s) * upscale for s in rows[0].shape[-2:])
    width = cols * w + (cols + 1) * pad
    chars_per_line = max(8, int(width / (font_size * 0.55)))
    wrapped = [textwrap.wrap(c, chars_per_line) or [""] for c in captions]
    line_h = font_size + 3
    height = sum(h + pad + len(lines) * line_h + pad for lines in wrapped) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for images, lines in zip(rows, wrapped):
        for k, image in enumerate(images):
            canvas.paste(to_pil(image).resize((w, h), Image.NEAREST), (pad + k * (w + pad), y))
        y += h + pad
        for line in lines:
            draw.text((pad, y), line, fill="black", font=font)
            y += line_h
        y += pad
    return canvas
