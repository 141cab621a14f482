"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (OmniCaptioner, the Lumina authors' released captioner, is a Qwen2-VL).

Their processors carry a video processor that needs torchvision, which many CPU builds of torch cannot use
(REFERENCE.md 7), so this adapter does the processor's job from its parts: the tokenizer, the image
processor (Pillow fallback), the chat template wherever the folder keeps it, and the image-token expansion:
each `<|image_pad|>` becomes one token per merged patch. It passes `mm_token_type_ids` (1 at image tokens):
without it `generate` silently drops the multimodal rotary positions.
"""

from __future__ import annotations

from .base import Captioner
from .chat import chat_messages, chat_template

IMAGE_PAD = "<|image_pad|>"


class QwenVLCaptioner(Captioner):
    model_type = "qwen2_vl"

    def __init__(self, folder, model, device, dtype):
        from transformers import AutoImageProcessor, AutoTokenizer

        super().__init__(folder, model, device, dtype)
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True, padding_side="left")
        self.image_processor = AutoImageProcessor.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
        self.template = chat_template(folder, self._tokenizer)
        self.image_token_id = model.config.image_token_id
        self.merge = getattr(self.image_processor, "merge_size", 2)

    @property
    def tokenizer(self):
        return self._tokenizer

    def inputs(self, images, questions, system):
        vision = self.image_processor(images=images, return_tensors="pt")
        texts = []
        for question, grid in zip(questions, vision["image_grid_thw"]):
            text = self._tokenizer.apply_chat_template(chat_messages(system, question), chat_template=self.template,
                                                       add_generation_prompt=True, tokenize=False)
            texts.append(text.replace(IMAGE_PAD, IMAGE_PAD * (int(grid.prod()) // self.merge**2), 1))
        encoded = self._tokenizer(texts, padding=True, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"],
                "mm_token_type_ids": (encoded["input_ids"] == self.image_token_id).long()}
