"""Each captioning family through save_pretrained / from_pretrained of a tiny model built here: our adapter's
greedy caption equals transformers' own processor + generate on the same images."""

from __future__ import annotations

import json

import pytest
import torch
from captioner_models import build_blip, build_blip2, build_florence2, build_llava, build_qwen2_vl
from PIL import Image

from core.captioning.adapters import ADAPTERS, load_captioner
from core.captioning.styles import prompts_for
from core.errors import ModelLoadError

GREEDY = {"do_sample": False, "min_new_tokens": 6}  # random weights: force some text to compare
IMAGES = [Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (40, 80), (10, 10, 200))]
PROMPT = prompts_for(["detailed"])[0]


def reference(processor, model, text_rows=None, prompt_rows=False):
    kwargs = {"images": IMAGES, "return_tensors": "pt"}
    if text_rows is not None:
        kwargs.update(text=text_rows, padding=True)
    inputs = processor(**kwargs)
    output = model.generate(**inputs, max_new_tokens=6, **GREEDY)
    new = output[:, inputs["input_ids"].shape[1]:] if prompt_rows else output
    return [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def ours(folder):
    captioner = load_captioner(folder, device="cpu")
    return captioner, captioner.caption(IMAGES, [PROMPT.question] * 2, PROMPT.system, GREEDY, 6)


def test_llava_matches_transformers(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    folder = build_llava(tmp_path / "llava")
    captioner, said = ours(folder)
    assert type(captioner).__name__ == "LlavaCaptioner"
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    processor.tokenizer.padding_side = "left"
    messages = [{"role": "system", "content": PROMPT.system},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT.question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    model = LlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    expected = reference(processor, model, [text, text], prompt_rows=True)
    assert said == expected and any(said)


def test_blip_matches_transformers_and_ignores_the_question(tmp_path):
    from transformers import AutoProcessor, BlipForConditionalGeneration

    folder = build_blip(tmp_path / "blip")
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    words_only = {**GREEDY, "suppress_tokens": processor.tokenizer.all_special_ids}  # random weights pick [PAD]
    captioner = load_captioner(folder, device="cpu")
    said = captioner.caption(IMAGES, [PROMPT.question] * 2, PROMPT.system, words_only, 6)
    assert not captioner.follows_questions
    model = BlipForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    inputs = processor(images=IMAGES, return_tensors="pt")
    expected = processor.tokenizer.batch_decode(model.generate(**inputs, max_new_tokens=6, **words_only),
                                                skip_special_tokens=True)
    assert said == [t.strip() for t in expected] and all(said)


def test_blip2_answers_the_question_in_its_own_form_as_transformers_does(tmp_path):
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    folder = build_blip2(tmp_path / "blip2")
    captioner, said = ours(folder)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    processor.tokenizer.padding_side = "left"
    model = Blip2ForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    question = f"Question: {PROMPT.question} Answer:"
    assert said == reference(processor, model, [question] * 2, prompt_rows=True) and any(said)


def qwen_reference_processor(folder):
    """transformers' own Qwen2VLProcessor. Its constructor insists on a video processor class, which needs
    torchvision; the type check alone is skipped, the processing code is transformers' own."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    check = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: None
    try:
        return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil.from_pretrained(folder),
                                tokenizer=AutoTokenizer.from_pretrained(folder, padding_side="left"),
                                video_processor=None, chat_template=template)
    finally:
        ProcessorMixin.check_argument_for_proper_class = check


def test_qwen2_vl_matches_transformers_with_the_template_from_chat_template_json(tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    folder = build_qwen2_vl(tmp_path / "qwen")
    captioner, said = ours(folder)
    processor = qwen_reference_processor(folder)
    messages = [{"role": "system", "content": PROMPT.system},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT.question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected_inputs = processor(text=[text, text], images=IMAGES, padding=True, return_tensors="pt",
                                return_mm_token_type_ids=True)
    built = captioner.inputs(IMAGES, [PROMPT.question] * 2, PROMPT.system)
    assert set(built) == set(expected_inputs)
    assert all(torch.equal(built[k], expected_inputs[k]) for k in built)
    model = Qwen2VLForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    output = model.generate(**expected_inputs, max_new_tokens=6, **GREEDY)
    expected = processor.tokenizer.batch_decode(output[:, expected_inputs["input_ids"].shape[1]:],
                                                skip_special_tokens=True)
    assert said == [t.strip() for t in expected] and any(said)


def test_qwen2_vl_positions_depend_on_mm_token_type_ids(tmp_path):
    """Why the adapter passes them: without them the image tokens get plain 1-D positions."""
    folder = build_qwen2_vl(tmp_path / "qwen")
    captioner = load_captioner(folder, device="cpu")
    inputs = captioner.inputs(IMAGES[:1], [PROMPT.question], PROMPT.system)
    with torch.no_grad():
        full = captioner.model(**inputs).logits
        try:
            plain = captioner.model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"}).logits
        except Exception:  # some versions refuse outright: as good a proof
            return
    assert not torch.allclose(full, plain)


def test_florence2_matches_transformers_with_the_styles_as_its_caption_tasks(tmp_path):
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    folder = build_florence2(tmp_path / "florence2")
    captioner, said = ours(folder)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = Florence2ForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    inputs = processor(text=["<MORE_DETAILED_CAPTION>"] * 2, images=IMAGES, return_tensors="pt")
    expected = processor.tokenizer.batch_decode(model.generate(**inputs, max_new_tokens=6, **GREEDY),
                                                skip_special_tokens=True)
    assert said == [t.strip() for t in expected] and any(said)


def test_out_of_memory_halves_the_batch_and_keeps_it(tmp_path, monkeypatch):
    captioner = load_captioner(build_llava(tmp_path / "llava"), device="cpu")
    real = type(captioner)._generate
    sizes = []

    def tight(self, images, questions, system, settings):
        sizes.append(len(images))
        if len(images) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(self, images, questions, system, settings)

    monkeypatch.setattr(type(captioner), "_generate", tight)
    images = IMAGES * 4
    said = captioner.caption(images, [PROMPT.question] * 8, PROMPT.system, {"do_sample": False}, 3)
    assert len(said) == 8 and sizes[:3] == [8, 4, 2] and captioner.batch_limit == 2
    sizes.clear()
    captioner.caption(images, [PROMPT.question] * 8, PROMPT.system, {"do_sample": False}, 3)
    assert sizes == [2, 2, 2, 2]


def test_a_folder_without_a_known_model_type_says_what_is_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelLoadError, match="'gpt2' model.*llava.*qwen2_vl.*--server"):
        load_captioner(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_captioner(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_captioner(tmp_path / "missing")
    assert {"llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "blip", "blip-2", "florence2"} <= set(ADAPTERS)


def test_a_folder_naming_custom_code_is_refused_without_asking(tmp_path, monkeypatch):
    import builtins

    folder = build_llava(tmp_path / "llava")
    processor = folder / "processor_config.json"
    config = json.loads(processor.read_text()) if processor.exists() else {}
    processor.write_text(json.dumps({**config, "auto_map": {"AutoProcessor": "evil.EvilProcessor"}}))
    (folder / "evil.py").write_text("import os\nos.system('touch ' + repr(__file__) + '.ran')\n")
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("transformers asked to run the custom code"))
    with pytest.raises(ModelLoadError, match="processor_config.json names custom code"):
        load_captioner(folder)
    assert not (folder / "evil.py.ran").exists()


def test_a_captioner_whose_weights_are_a_foreign_pickle_is_refused_with_a_message(tmp_path):
    folder = build_llava(tmp_path / "llava")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
    with pytest.raises(ModelLoadError) as raised:
        load_captioner(folder)
    assert "weights_only" not in str(raised.value) and "could not be loaded" in str(raised.value)
