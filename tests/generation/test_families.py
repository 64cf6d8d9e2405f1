"""Model families: recognised from a UNet config, with defaults that fit the worker's default caps."""

from __future__ import annotations

import pytest

from sdqueue.config import LimitSettings
from sdqueue.contracts import FAMILY_DEFAULTS
from sdqueue.worker.generate import FAMILIES, Family, family_of_unet
from sdqueue.worker.generate.families import SD1, SD2, SDXL
from sdqueue.worker.generate.sd15 import UNET_CONFIG as SD15_UNET
from sdqueue.worker.generate.sdxl import UNET_CONFIG as SDXL_UNET

# SD 2.x (OpenCLIP ViT-H text states); the other keys are SD 1.5's.
SD2_UNET = SD15_UNET | {"cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20)}


@pytest.mark.parametrize(
    ("config", "family"),
    [(SD15_UNET, SD1), (SD2_UNET, SD2), (SDXL_UNET, SDXL), ({"cross_attention_dim": 32}, SD1)],
    ids=["sd15", "sd2", "sdxl", "tiny-sd1"],
)
def test_a_family_is_recognised_from_the_unet_config(config: dict[str, object], family: Family):
    assert family_of_unet(config) is family


def test_each_family_has_its_native_defaults():
    sizes = {name: (f.defaults.width, f.defaults.height, f.defaults.guidance_scale) for name, f in FAMILIES.items()}
    assert sizes == {"sd1": (512, 512, 7.5), "sd2": (768, 768, 7.5), "sdxl": (1024, 1024, 5.0)}


def test_the_worker_fills_requests_from_the_table_the_bridge_shows():
    shown = {name: (d.width, d.height, d.guidance_scale) for name, d in FAMILY_DEFAULTS.items()}
    filled = {name: (f.defaults.width, f.defaults.height, f.defaults.guidance_scale) for name, f in FAMILIES.items()}
    assert filled == shown


@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES.keys())
def test_family_defaults_fit_the_default_pixel_cap(family: Family):
    native = FAMILY_DEFAULTS[family.name]
    assert native.width * native.height <= LimitSettings().max_pixels
