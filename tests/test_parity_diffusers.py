"""--compat diffusers with Euler reproduces diffusers' Lumina2Pipeline from the same model and seed."""

import numpy as np
import pytest
import torch
from diffusers import Lumina2Pipeline

from core.generation.request import GenerationRequest

PROMPT = "a red circle on the left of a blue square"


@pytest.fixture(scope="module")
def pipeline(tiny_model):
    return Lumina2Pipeline.from_pretrained(str(tiny_model), torch_dtype=torch.float32)


def reference(pipeline, seed, width, height, steps, guidance, ratio, normalize, negative=None):
    output = pipeline(
        PROMPT, negative_prompt=negative, width=width, height=height, num_inference_steps=steps,
        guidance_scale=guidance, cfg_trunc_ratio=ratio, cfg_normalization=normalize,
        generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
    )
    return output.images[0]


@pytest.mark.parametrize(
    "width,height,steps,guidance,ratio,renorm,negative",
    [
        (64, 64, 8, 4.0, 1.0, 1.0, None),  # diffusers' defaults apart from the step count
        (96, 48, 10, 3.0, 0.5, 0.0, "blurry, low quality"),  # truncation by step fraction, no normalisation
        (48, 80, 6, 1.0, 1.0, 1.0, None),  # guidance 1: no unconditional pass at all
    ],
)
def test_same_image_as_diffusers(engine, pipeline, width, height, steps, guidance, ratio, renorm, negative):
    expected = reference(pipeline, 7, width, height, steps, guidance, ratio, renorm > 0, negative)
    request = GenerationRequest(
        PROMPT, negative_prompt=negative or "", width=width, height=height, steps=steps, guidance=guidance,
        cfg_trunc=ratio, cfg_renorm=renorm, solver="euler", seed=7, compat="diffusers",
    )
    ours = engine.generate(request)[0].pixels
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-4
    # The tolerance discriminates: another seed moves the image far more than it.
    other = reference(pipeline, 8, width, height, steps, guidance, ratio, renorm > 0, negative)
    assert np.abs(other - expected).max() > 1e-2


def test_batched_and_separate_cfg_passes_agree(engine):
    request = GenerationRequest(PROMPT, width=64, height=64, steps=5, seed=3, compat="diffusers")
    separate = engine.generate(request)[0].pixels
    engine.batch_cfg = True
    try:
        batched = engine.generate(request)[0].pixels
    finally:
        engine.batch_cfg = False
    assert np.abs(batched - separate).max() < 1e-5


def test_tokenizer_without_bos_gives_empty_negative_caption(tmp_path):
    """Models made elsewhere may use a tokenizer that adds no <bos>: "" is then zero tokens."""
    from tokenizers import processors

    from core.generation.engine import Engine
    from core.models.sources import resolve_source
    from core.models.scaffold import build_pipeline

    pipe = build_pipeline(seed=1)
    pipe.tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    assert pipe.tokenizer("").input_ids == []
    pipe.save_pretrained(str(tmp_path / "no-bos"))
    engine = Engine(resolve_source(tmp_path / "no-bos"), device="cpu")
    ours = engine.generate(GenerationRequest(PROMPT, width=64, height=64, steps=4, seed=2, compat="diffusers"))[0]
    expected = pipe(PROMPT, width=64, height=64, num_inference_steps=4, output_type="np",
                    generator=torch.Generator("cpu").manual_seed(2)).images[0]
    assert np.abs(ours.pixels - expected).max() < 1e-4
