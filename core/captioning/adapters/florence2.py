"""Florence-2, through transformers' own Florence2ForConditionalGeneration (no remote code).

Florence-2 is asked by task tokens, not questions: the styles map to its caption tasks (tags have no task
of their own and get the short caption). A custom question is passed as it is.
"""

from __future__ import annotations

from ..styles import STYLES
from .base import Captioner

TASKS = {STYLES["detailed"].question: "<MORE_DETAILED_CAPTION>", STYLES["medium"].question: "<DETAILED_CAPTION>",
         STYLES["short"].question: "<CAPTION>", STYLES["tags"].question: "<CAPTION>"}


class Florence2Captioner(Captioner):
    model_type = "florence2"

    def __init__(self, folder, model, device, dtype):
        from transformers import AutoProcessor

        super().__init__(folder, model, device, dtype)
        self.processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)

    def inputs(self, images, questions, system):
        tasks = [TASKS.get(q, q) for q in questions]
        return dict(self.processor(text=tasks, images=images, padding=True, return_tensors="pt"))

    def answers(self, output, inputs):  # an encoder-decoder: the output holds only the answer
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)
