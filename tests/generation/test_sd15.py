"""The random-weight SD 1.5 architecture has the published parameter counts (built on the meta device: no RAM)."""

from __future__ import annotations

from typing import Any

import torch

from sdqueue.worker.generate.sd15 import sd15_modules

# Published sizes of SD 1.5: UNet 859.52M, VAE 83.65M, CLIP ViT-L/14 text encoder 123.06M parameters.
EXPECTED_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def test_sd15_modules_have_the_published_parameter_counts():
    with torch.device("meta"):
        unet, vae, text_encoder = sd15_modules()

    modules: dict[str, Any] = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    counts = {name: sum(parameter.numel() for parameter in module.parameters()) for name, module in modules.items()}

    assert counts == EXPECTED_PARAMETERS
