"""Inpaint, the hires fix and live previews through the real tiny model on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from sdqueue.contracts.errors import Cancelled, InvalidRequest
from sdqueue.worker.generate import HiresPass, StepPreview
from sdqueue.worker.generate._preview import latents_to_rgb, preview_picture
from sdqueue.worker.generate.families import SD1
from tests.generation.specs import TXT2IMG
from tests.generation.specs import spec as _spec
from tests.generation.test_generate import _pixels, _png_digest

pytestmark = pytest.mark.slow  # runs the tiny models on CPU: seconds, and many more on a loaded machine

INIT = Image.radial_gradient("L").convert("RGB").resize((80, 48))
INPAINT = _spec(TXT2IMG, mode="inpaint", steps=3, strength=1.0, init_image=INIT)
HIRES = _spec(TXT2IMG, steps=2, hires=HiresPass(width=96, height=96, steps=4, strength=0.5))


def _mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """Black (keep) everywhere but a white (repaint) box."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def test_inpaint_keeps_the_resized_init_image_exactly_where_the_mask_is_black(tiny_generator):
    mask = _mask((80, 48), (20, 10, 50, 30))
    result = tiny_generator.generate(_spec(INPAINT, mask_image=mask, seeds=(3, 4)))

    init = _pixels(INIT.resize((64, 64), Image.Resampling.LANCZOS))
    keep = np.asarray(mask.resize((64, 64), Image.Resampling.LANCZOS)) == 0
    for image in result.images:
        pixels = _pixels(image)
        assert image.size == (64, 64)
        assert (pixels[keep] == init[keep]).all()
        assert (pixels[~keep] != init[~keep]).any(), "the white part is repainted"


def test_mask_blur_softens_the_seam_but_keeps_what_the_blur_leaves_black(tiny_generator):
    mask = _mask((64, 64), (24, 24, 40, 40))
    sharp = tiny_generator.generate(_spec(INPAINT, mask_image=mask)).images[0]
    soft = tiny_generator.generate(_spec(INPAINT, mask_image=mask, mask_blur_px=4)).images[0]

    keep = np.asarray(mask.filter(ImageFilter.GaussianBlur(4))) == 0
    init = _pixels(INIT.resize((64, 64), Image.Resampling.LANCZOS))
    assert (_pixels(soft)[keep] == init[keep]).all()
    assert _png_digest(sharp) != _png_digest(soft)


def test_inpaint_without_a_mask_is_an_invalid_request(tiny_generator):
    with pytest.raises(InvalidRequest, match="mask"):
        tiny_generator.generate(INPAINT)


def test_hires_gives_the_final_size_and_the_same_pixels_for_the_same_seed(tiny_generator):
    first = tiny_generator.generate(_spec(HIRES, seeds=(5,)))
    again = tiny_generator.generate(_spec(HIRES, seeds=(5,)))
    plain = tiny_generator.generate(_spec(HIRES, seeds=(5,), hires=None))

    assert first.images[0].size == (96, 96)
    assert _png_digest(first.images[0]) == _png_digest(again.images[0])
    assert plain.images[0].size == (64, 64)


def test_hires_progress_counts_both_passes(tiny_generator):
    steps: list[tuple[int, int]] = []
    tiny_generator.generate(_spec(HIRES, scheduler="euler"), on_step=lambda done, of: steps.append((done, of)))

    # Two base steps, then 4 x 0.5 refine steps.
    assert steps == [(done, 4) for done in range(1, 5)]


def test_a_stop_between_the_passes_cancels_before_the_refine_pass(tiny_generator):
    steps: list[int] = []
    with pytest.raises(Cancelled):
        tiny_generator.generate(
            _spec(HIRES, scheduler="euler"),
            on_step=lambda done, _total: steps.append(done),
            should_stop=lambda: len(steps) == 2,
        )
    assert steps == [1, 2]


def test_previews_come_per_spec_at_most_every_interval_and_cost_no_change_in_pixels(tiny_generator):
    previews: list[tuple[int, StepPreview]] = []
    specs = [
        _spec(TXT2IMG, steps=4, scheduler="euler", seeds=(1, 2), preview_interval_s=0.0001),
        _spec(TXT2IMG, steps=4, scheduler="euler", seeds=(3,)),
        _spec(TXT2IMG, steps=4, scheduler="euler", seeds=(4,), preview_interval_s=3600),
    ]
    with_previews = tiny_generator.generate_batch(specs, on_preview=lambda index, p: previews.append((index, p)))
    without = tiny_generator.generate_batch(specs)

    # Spec 0 at every step, spec 1 never (it asked for none), spec 2 once (its interval never passes).
    assert [(index, preview.step) for index, preview in previews if index == 0] == [(0, s) for s in range(1, 5)]
    assert [index for index, _ in previews].count(1) == 0
    assert [(index, preview.step) for index, preview in previews if index == 2] == [(2, 1)]
    # Two 64 px images in a grid, at the latent's size (1/8).
    assert {preview.image.size for index, preview in previews if index == 0} == {(16, 8)}
    assert [_png_digest(i) for r in with_previews for i in r.images] == [
        _png_digest(i) for r in without for i in r.images
    ]


def test_hires_previews_count_both_passes_at_each_pass_size(tiny_generator):
    previews: list[StepPreview] = []
    tiny_generator.generate(
        _spec(HIRES, scheduler="euler", preview_interval_s=0.0001),
        on_preview=lambda _index, preview: previews.append(preview),
    )

    assert [(preview.step, preview.steps) for preview in previews] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [preview.image.size for preview in previews] == [(8, 8), (8, 8), (12, 12), (12, 12)]


def test_a_preview_grid_is_scaled_down_to_256_px_on_its_long_side():
    grid = preview_picture([Image.new("RGB", (128, 96))] * 8)

    assert grid.size == (256, 192)  # 3 x 3 cells of 128 x 96, scaled down


def test_latents_map_to_rgb_through_the_family_factors():
    latents = torch.zeros((2, 4, 3, 5))
    latents[1, 0] = 1.0  # the first channel alone: its factor row, mapped from [-1, 1] to [0, 255]

    pictures = latents_to_rgb(latents, SD1)

    assert [picture.size for picture in pictures] == [(5, 3), (5, 3)]
    assert pictures[0].getpixel((0, 0)) == (128, 128, 128)
    expected = tuple(round((factor + 1) / 2 * 255) for factor in SD1.latent_rgb[0])
    assert pictures[1].getpixel((4, 2)) == expected
