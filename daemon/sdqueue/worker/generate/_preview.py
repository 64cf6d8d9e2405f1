"""Live previews: latents to RGB through a fixed linear map per model family, decoded only when one is due.

No VAE decode: a 4x3 matrix applied to each latent pixel gives a rough picture at 1/8 of the image size, which
costs a fraction of a millisecond per step against the tens or hundreds a UNet step takes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from sdqueue.worker.generate._spec import GenerationSpec, PreviewCallback, StepPreview

# One row per latent channel, giving its contribution to R, G and B (SD 1.x and 2.x share the VAE).
LatentRgbFactors = tuple[tuple[float, float, float], ...]
SD1_LATENT_RGB_FACTORS: LatentRgbFactors = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
MAX_PREVIEW_SIDE_PX = 256


def latents_to_rgb(latents: torch.Tensor, factors: LatentRgbFactors) -> list[Image.Image]:
    """One RGB picture per latent in the batch, at the latent's size, mapped through `factors`."""
    matrix = torch.tensor(factors, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("nchw,cr->nhwr", latents.float(), matrix)
    pixels: np.ndarray = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(picture) for picture in pixels]


def preview_picture(pictures: Sequence[Image.Image], *, max_side_px: int = MAX_PREVIEW_SIDE_PX) -> Image.Image:
    """The pictures of one job tiled in a near-square grid, scaled down to at most `max_side_px` on the long side."""
    columns = math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(len(pictures) / columns)
    width, height = pictures[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, picture in enumerate(pictures):
        grid.paste(picture, ((index % columns) * width, (index // columns) * height))
    grid.thumbnail((max_side_px, max_side_px), Image.Resampling.BILINEAR)
    return grid


class PreviewTap:
    """Watches a batch's latents step by step and decodes a spec's images only when its preview is due."""

    def __init__(
        self,
        specs: Sequence[GenerationSpec],
        *,
        factors: LatentRgbFactors,
        on_preview: PreviewCallback,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factors = factors
        self._on_preview = on_preview
        self._clock = clock
        starts = np.cumsum([0, *(len(spec.seeds) for spec in specs)])
        # (spec index, first image row, end row, interval) of each spec that asked for previews.
        self._wanted = [
            (index, int(starts[index]), int(starts[index + 1]), spec.preview_interval_s)
            for index, spec in enumerate(specs)
            if spec.preview_interval_s is not None
        ]
        # The first step of a job gets a preview: a caller sees something at once.
        self._last_at = [-math.inf] * len(specs)

    def offer(self, latents: torch.Tensor, *, step: int, steps: int) -> None:
        """Send a preview to each spec whose interval has passed since its last one; the others cost nothing."""
        now = self._clock()
        for index, start, end, interval_s in self._wanted:
            if now - self._last_at[index] < interval_s:
                continue
            self._last_at[index] = now
            image = preview_picture(latents_to_rgb(latents[start:end], self._factors))
            self._on_preview(index, StepPreview(step=step, steps=steps, image=image))
