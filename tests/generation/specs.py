"""The one base generation spec the generation tests vary: a tiny txt2img job, and the init image img2img takes."""

from __future__ import annotations

import dataclasses

from PIL import Image

from sdqueue.worker.generate import GenerationSpec

TXT2IMG = GenerationSpec(
    mode="txt2img",
    prompt="a cat on the moon",
    negative_prompt="",
    width=64,
    height=64,
    steps=3,
    guidance_scale=7.5,
    seeds=(1,),
    scheduler=None,
    strength=0.75,
    init_image=None,
)
INIT_IMAGE = Image.new("RGB", (100, 70), (200, 40, 40))


def spec(base: GenerationSpec = TXT2IMG, **changes: object) -> GenerationSpec:
    """`base` with some fields changed."""
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]  # replace() checks the field names
