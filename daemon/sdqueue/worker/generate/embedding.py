"""Textual-inversion embeddings: a token bound in the tokenizer(s) to learned vectors (SD1: one encoder; SDXL:
`clip_l` and `clip_g`)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from sdqueue.contracts.errors import InvalidRequest
from sdqueue.worker.generate._spec import AdapterFile
from sdqueue.worker.generate._tensors import read_tensors

log = logging.getLogger(__name__)

# The keys of an SDXL embedding file, per text encoder in pipeline order.
SDXL_KEYS = ("clip_l", "clip_g")


def load_embedding(pipeline: Any, adapter: AdapterFile, *, dtype: torch.dtype) -> None:
    """Bind the adapter's token to its vectors in every text encoder of the pipeline.

    Raises:
        InvalidRequest: not safetensors, another family's layout, or vectors of another width.
    """
    token = adapter.token or ""
    tensors = read_tensors(adapter, dtype=dtype)
    try:
        for tokenizer, encoder, vectors in _targets(pipeline, tensors):
            pipeline.load_textual_inversion(
                {"emb_params": vectors}, token=token, tokenizer=tokenizer, text_encoder=encoder
            )
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        log.info("embedding %s does not fit: %s", adapter.sha256[:12], exc)
        unload_embedding(pipeline, token)
        raise InvalidRequest(f"adapter {adapter.sha256[:12]} does not fit this model") from exc


def unload_embedding(pipeline: Any, token: str) -> None:
    """Remove the token (and its `_1`, `_2` … vectors) from every tokenizer and text encoder."""
    for tokenizer, encoder in _encoders(pipeline):
        added = [word for word in tokenizer.get_added_vocab() if word == token or word.startswith(f"{token}_")]
        if added:
            pipeline.unload_textual_inversion(tokens=added, tokenizer=tokenizer, text_encoder=encoder)


def _targets(pipeline: Any, tensors: dict[str, torch.Tensor]) -> list[tuple[Any, Any, torch.Tensor]]:
    encoders = _encoders(pipeline)
    if len(encoders) == 1:
        if len(tensors) != 1 or next(iter(tensors.values())).dim() != 2:
            raise InvalidRequest("an SD1-family embedding holds one (vectors x width) tensor")
        return [(*encoders[0], next(iter(tensors.values())))]
    if set(tensors) != set(SDXL_KEYS):
        raise InvalidRequest("an SDXL embedding holds the tensors clip_l and clip_g")
    return [(*encoder, tensors[key]) for encoder, key in zip(encoders, SDXL_KEYS, strict=True)]


def _encoders(pipeline: Any) -> list[tuple[Any, Any]]:
    pairs = [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")]
    return [
        (getattr(pipeline, tok), getattr(pipeline, enc))
        for tok, enc in pairs
        if getattr(pipeline, tok, None) is not None and getattr(pipeline, enc, None) is not None
    ]
