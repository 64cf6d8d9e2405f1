"""Model families: what a loaded pipeline was trained as, its native defaults and how its latents look. No torch here.

A family is recognised from the UNet's config, so any checkpoint in diffusers format is classified the same way,
whatever its folder or Hub id says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdqueue.config import ModelDefaults
from sdqueue.contracts import FAMILY_DEFAULTS, ModelFamily

LatentRgbFactors = tuple[
    tuple[float, float, float], tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]
]
SD2_CROSS_ATTENTION_DIM = 1024  # OpenCLIP ViT-H/14 hidden states; SD 1.x uses CLIP ViT-L/14's 768

# The latent-to-RGB approximations published with ComfyUI's previews (`latent_formats.py`): one row per latent
# channel, one column per colour. SD 2 shares SD 1's VAE, so its latents and factors are SD 1's.
SD1_LATENT_RGB: LatentRgbFactors = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SDXL_LATENT_RGB: LatentRgbFactors = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)


@dataclass(frozen=True, kw_only=True)
class Family:
    """A model family: the size and guidance its models were trained for (`FAMILY_DEFAULTS`, which the bridge also
    shows), and a cheap latent preview.

    A preview pixel is `latent @ latent_rgb + latent_rgb_bias` on the scaled latents the pipeline's step callback
    sees (channels x 1, per pixel), in -1 … 1: map it to 0 … 1 with `(x + 1) / 2`.
    """

    name: ModelFamily
    latent_rgb: LatentRgbFactors
    latent_rgb_bias: tuple[float, float, float]

    @property
    def defaults(self) -> ModelDefaults:
        """The request fields this family fills when neither the body nor the operator's `model_defaults` do."""
        native = FAMILY_DEFAULTS[self.name]
        return ModelDefaults(width=native.width, height=native.height, guidance_scale=native.guidance_scale)


SD1 = Family(
    name="sd1",
    latent_rgb=SD1_LATENT_RGB,
    latent_rgb_bias=(0.0, 0.0, 0.0),
)
SD2 = Family(
    name="sd2",
    latent_rgb=SD1_LATENT_RGB,
    latent_rgb_bias=(0.0, 0.0, 0.0),
)
SDXL = Family(
    name="sdxl",
    latent_rgb=SDXL_LATENT_RGB,
    latent_rgb_bias=(0.1084, -0.0175, -0.0011),
)
FAMILIES: dict[ModelFamily, Family] = {family.name: family for family in (SD1, SD2, SDXL)}


def family_of_unet(config: Mapping[str, Any]) -> Family:
    """The family of a pipeline from its UNet's config: SDXL conditions on text and time ids (`text_time`), SD 2 on
    1024-wide text states; any other UNet is taken as SD 1 (its size and latent space are SD 1's)."""
    if config.get("addition_embed_type") == "text_time":
        return SDXL
    if config.get("cross_attention_dim") == SD2_CROSS_ATTENTION_DIM:
        return SD2
    return SD1
