"""BLIP and BLIP-2.

BLIP is a captioning model, not an instruction follower: it writes one kind of caption whatever the style
asks, so a job with several styles writes its caption once. BLIP-2 answers a question in its
"Question: ... Answer:" form.
"""

from __future__ import annotations

from .base import Captioner


class BlipCaptioner(Captioner):
    model_type = "blip"
    follows_questions = False

    def __init__(self, folder, model, device, dtype):
        from transformers import AutoProcessor

        super().__init__(folder, model, device, dtype)
        self.processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)

    def inputs(self, images, questions, system):
        return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}


class Blip2Captioner(Captioner):
    model_type = "blip-2"

    def __init__(self, folder, model, device, dtype):
        from transformers import AutoProcessor

        super().__init__(folder, model, device, dtype)
        self.processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"

    def inputs(self, images, questions, system):
        texts = [f"Question: {q} Answer:" for q in questions]
        return dict(self.processor(images=images, text=texts, padding=True, return_tensors="pt"))

    def answers(self, output, inputs):
        prompt = inputs["input_ids"]
        if self.model.config.text_config.is_encoder_decoder or output.shape[1] < prompt.shape[1]:
            return self.tokenizer.batch_decode(output, skip_special_tokens=True)
        return self.tokenizer.batch_decode(output[:, prompt.shape[1]:], skip_special_tokens=True)
