"""Batch-invariant CPU kernels: an image is bit-equal whether it was generated alone or in a micro-batch.

On CPU, torch picks a kernel by the batch size in three places that a Stable Diffusion pipeline reaches
(torch 2.13, measured in docs/benchmarks.md):

- conv2d: a batch of 1 with at most 20,480 input elements goes to the native im2col + MKL kernel, and so do
  1x1 convolutions below batch 16 on one thread; everything else goes to oneDNN. oneDNN also keeps a
  channels-last input channels-last (the VAE's attention hands one over), the native kernel does not, and
  the two layouts then take different group-norm and oneDNN kernels downstream.
- linear on a 2-D input (the UNet's timestep embedding, and SDXL's added embedding of pooled text and size ids;
  one row per image): MKL uses a matrix-vector kernel for 1 row and other GEMM kernels for 2-5 and 8+ rows.
- group_norm on a channels-last input with 2+ threads and H x W >= 1024 splits its sums over batch x pixels.

Each kernel is exact for a given shape, so pinning one route per layer, whatever the batch, makes every
image's arithmetic the same alone and batched. Other layers (attention, 3-D linears, elementwise ops) were
measured batch-invariant already, with one condition: an elementwise op runs a tensor's last (size mod 2 vector
widths) elements through a scalar loop, whose exp/sigmoid/erf round differently from the vectorised ones. When
each image's activation size is a multiple of 32 floats (AVX-512; 16 on AVX2), that tail is empty at any batch,
as in every Stable Diffusion architecture (77 tokens x 768 or 3072, channels in multiples of 32); the tiny model
keeps to it (a text MLP width of 37 broke bit-equality on an AVX2 host).
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

_ONEDNN = hasattr(torch, "mkldnn_convolution") and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]


def make_batch_invariant(module: nn.Module) -> None:
    """Pin the batch-dependent CPU kernels of every layer inside `module` (in place; idempotent)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            layer._conv_forward = MethodType(_conv_forward, layer)  # type: ignore[method-assign]
        elif isinstance(layer, nn.Linear):
            layer.forward = MethodType(_linear_forward, layer)  # type: ignore[method-assign]
        elif isinstance(layer, nn.GroupNorm):
            layer.forward = MethodType(_group_norm_forward, layer)  # type: ignore[method-assign]


def _conv_forward(self: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One route per layer whatever the batch: 1x1 as batched matmuls, the rest through oneDNN."""
    if x.device.type != "cpu":
        output: torch.Tensor = nn.Conv2d._conv_forward(self, x, weight, bias)
        return output
    if weight.shape[2:] == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0) and self.groups == 1:
        return _pointwise_conv(x, weight, bias)
    channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if (
        x.dtype == torch.float32
        and self.padding_mode == "zeros"
        and not isinstance(self.padding, str)
        and _ONEDNN
        and torch.backends.mkldnn.enabled
    ):
        return torch.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation, self.groups)
    # Left to torch, whose choice here does not hang on the batch: bfloat16 always takes oneDNN, and with oneDNN
    # switched off every batch size takes the native kernel, which computes each image on its own.
    output = nn.Conv2d._conv_forward(self, x, weight, bias)
    return output


def _pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 convolution as one (out x in) @ (in x pixels) product per image.

    MKL runs each product of the batch alone, so the result does not depend on the batch size; on these small
    layers it is also 2-7x faster than oneDNN, which costs about 45 us per call here whatever the size.
    """
    images, channels, height, width = x.shape
    kernel = weight.flatten(1).expand(images, -1, -1)
    pixels = x.reshape(images, channels, height * width)
    product = torch.bmm(kernel, pixels) if bias is None else torch.baddbmm(bias.view(1, -1, 1), kernel, pixels)
    return product.view(images, -1, height, width)


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """One matrix-vector product per row for 2-D inputs, 1 row included; sequences (3-D) already are invariant."""
    if x.dim() != 2 or x.device.type != "cpu":
        return F.linear(x, self.weight, self.bias)
    # A batch of (1 x in) @ (in x out) products: MKL runs each alone, the same for any number of rows.
    product = torch.bmm(x.unsqueeze(1), self.weight.t().expand(x.shape[0], -1, -1))
    if self.bias is not None:
        product = product + self.bias
    return product.squeeze(1)


def _group_norm_forward(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """Group norm over a contiguous input, whose kernel reduces each image's groups on their own."""
    return F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
