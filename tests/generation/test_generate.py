"""Generation through the real tiny model on CPU: sizes, seeds, progress, cancellation and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdqueue.contracts.errors import Cancelled, GenerationFailed, InvalidRequest
from sdqueue.worker.encode import encode_images
from sdqueue.worker.generate import SCHEDULERS, load_generator
from tests.generation.specs import INIT_IMAGE, TXT2IMG
from tests.generation.specs import spec as _spec
from tests.plugins.tiny_model import TEST_RUNTIME

pytestmark = pytest.mark.slow  # runs the tiny model on CPU: seconds, and many more on a loaded machine

IMG2IMG = _spec(TXT2IMG, mode="img2img", steps=4, strength=0.5, init_image=INIT_IMAGE)


def _png_digest(image: Image.Image) -> str:
    return encode_images([image], fmt="png", parameters=[""])[0].sha256


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_txt2img_gives_one_image_per_seed_at_the_requested_size(tiny_generator):
    result = tiny_generator.generate(_spec(width=96, height=64, seeds=(1, 2, 3)))

    assert [image.size for image in result.images] == [(96, 64)] * 3
    assert {image.mode for image in result.images} == {"RGB"}
    assert len({_png_digest(image) for image in result.images}) == 3
    assert result.warnings == []


def test_same_seed_gives_byte_identical_png(tiny_generator):
    first = tiny_generator.generate(_spec(seeds=(7,)))
    second = tiny_generator.generate(_spec(seeds=(7,)))
    assert _png_digest(first.images[0]) == _png_digest(second.images[0])


def test_each_image_depends_only_on_its_own_seed_within_a_batch(tiny_generator):
    forward = tiny_generator.generate(_spec(seeds=(11, 12)))
    backward = tiny_generator.generate(_spec(seeds=(12, 11)))

    assert [_png_digest(image) for image in forward.images] == [_png_digest(image) for image in backward.images[::-1]]


def test_batched_image_matches_a_lone_run_of_its_seed(tiny_generator):
    batch = tiny_generator.generate(_spec(seeds=(11, 12)))
    lone = tiny_generator.generate(_spec(seeds=(12,)))

    # Kernels sum in a batch-size-dependent order, so floats differ by ~1e-5: at most one level after rounding.
    difference = np.abs(_pixels(batch.images[1]) - _pixels(lone.images[0]))
    assert difference.max() <= 1
    assert (difference == 0).mean() > 0.99


def test_img2img_resizes_the_init_image_to_the_requested_size(tiny_generator):
    result = tiny_generator.generate(_spec(IMG2IMG, width=128, height=64, seeds=(3, 4)))
    assert [image.size for image in result.images] == [(128, 64)] * 2


def test_img2img_output_follows_the_init_image(tiny_generator):
    red = tiny_generator.generate(IMG2IMG)
    again = tiny_generator.generate(IMG2IMG)
    blue = tiny_generator.generate(_spec(IMG2IMG, init_image=Image.new("RGB", (100, 70), (30, 40, 220))))

    assert _png_digest(red.images[0]) == _png_digest(again.images[0])
    assert _png_digest(red.images[0]) != _png_digest(blue.images[0])


@pytest.mark.parametrize(
    ("spec", "total"),
    [
        pytest.param(_spec(steps=4, scheduler="euler"), 4, id="txt2img"),
        pytest.param(_spec(IMG2IMG, steps=4, strength=0.5, scheduler="euler"), 2, id="img2img-half-strength"),
        pytest.param(_spec(steps=3, scheduler="heun"), 5, id="heun-second-order"),
    ],
)
def test_progress_counts_every_step_the_scheduler_runs(tiny_generator, spec, total):
    steps: list[tuple[int, int]] = []
    tiny_generator.generate(spec, on_step=lambda done, of: steps.append((done, of)))
    assert steps == [(done, total) for done in range(1, total + 1)]


def test_stop_request_interrupts_the_pipeline_and_cancels(tiny_generator):
    steps: list[int] = []
    with pytest.raises(Cancelled):
        tiny_generator.generate(
            _spec(steps=6), on_step=lambda done, _total: steps.append(done), should_stop=lambda: bool(steps)
        )
    assert steps == [1]


def test_stop_requested_at_the_last_step_lets_the_images_finish(tiny_generator):
    steps: list[int] = []
    result = tiny_generator.generate(
        _spec(steps=3, scheduler="euler"),
        on_step=lambda done, _total: steps.append(done),
        should_stop=lambda: len(steps) == 3,
    )
    assert steps == [1, 2, 3]
    assert len(result.images) == 1


def test_stop_requested_before_the_start_runs_no_step(tiny_generator):
    steps: list[int] = []
    with pytest.raises(Cancelled):
        tiny_generator.generate(TXT2IMG, on_step=lambda done, _total: steps.append(done), should_stop=lambda: True)
    assert steps == []


def test_a_cancelled_call_does_not_affect_the_next(tiny_generator):
    with pytest.raises(Cancelled):
        tiny_generator.generate(_spec(seeds=(5,)), should_stop=lambda: True)
    after = tiny_generator.generate(_spec(seeds=(5,)))
    fresh = tiny_generator.generate(_spec(seeds=(5,)))
    assert _png_digest(after.images[0]) == _png_digest(fresh.images[0])


def test_unknown_scheduler_is_an_invalid_request(tiny_generator):
    with pytest.raises(InvalidRequest, match="no_such_sampler"):
        tiny_generator.generate(_spec(scheduler="no_such_sampler"))


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_offered_scheduler_runs(tiny_generator, name):
    assert name in tiny_generator.scheduler_names
    first = tiny_generator.generate(_spec(scheduler=name, steps=2, seeds=(9,)))
    second = tiny_generator.generate(_spec(scheduler=name, steps=2, seeds=(9,)))

    assert first.images[0].size == (64, 64)
    # A fresh scheduler per call: no state leaks from one call into the next.
    assert _png_digest(first.images[0]) == _png_digest(second.images[0])


def test_schedulers_change_the_image(tiny_generator):
    digests = {
        name: _png_digest(tiny_generator.generate(_spec(scheduler=name, seeds=(9,))).images[0])
        for name in ("euler", "euler_a", "ddim")
    }
    assert len(set(digests.values())) == 3


def test_prompts_longer_than_the_text_encoder_takes_are_reported(tiny_generator):
    long_text = "the cat " * 60
    result = tiny_generator.generate(_spec(prompt=long_text, negative_prompt=long_text))
    assert result.warnings == ["prompt truncated to 77 tokens", "negative prompt truncated to 77 tokens"]


def test_a_prompt_that_fits_gets_no_warning(tiny_generator):
    result = tiny_generator.generate(_spec(prompt="the cat " * 30))
    assert result.warnings == []


def test_non_finite_output_is_a_generation_failure_not_a_black_image(tiny_generator):
    with pytest.raises(GenerationFailed, match="non-finite"):
        tiny_generator.generate(_spec(guidance_scale=float("inf")))


def test_a_size_the_pipeline_rejects_is_a_generation_failure(tiny_generator):
    with pytest.raises(GenerationFailed) as caught:
        tiny_generator.generate(_spec(width=60))
    assert isinstance(caught.value.__cause__, ValueError)


def test_no_seeds_is_an_invalid_request(tiny_generator):
    with pytest.raises(InvalidRequest, match="seed"):
        tiny_generator.generate(_spec(seeds=()))


def test_img2img_without_an_init_image_is_an_invalid_request(tiny_generator):
    with pytest.raises(InvalidRequest, match="init image"):
        tiny_generator.generate(_spec(IMG2IMG, init_image=None))


def test_img2img_with_less_than_one_denoising_step_is_an_invalid_request(tiny_generator):
    with pytest.raises(InvalidRequest, match="strength"):
        tiny_generator.generate(_spec(IMG2IMG, steps=2, strength=0.3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_model_runs_in_float16_on_cuda(tiny_model_dir):
    generator = load_generator(
        str(tiny_model_dir), runtime=TEST_RUNTIME.model_copy(update={"device": "cuda", "dtype": "auto"})
    )
    result = generator.generate(_spec(width=128, height=128, seeds=(1, 2)))
    assert [image.size for image in result.images] == [(128, 128)] * 2
