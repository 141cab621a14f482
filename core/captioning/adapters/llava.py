"""LLaVA-layout models (JoyCaption: SigLIP + Llama; any LlavaForConditionalGeneration folder).

Its processor loads as it is: the chat template puts the image where the user's message has it, and the
processor expands `<image>` to the vision tower's patch count.
"""

from __future__ import annotations

from .base import Captioner
from .chat import chat_messages, chat_template


class LlavaCaptioner(Captioner):
    model_type = "llava"

    def __init__(self, folder, model, device, dtype):
        from transformers import AutoProcessor

        super().__init__(folder, model, device, dtype)
        self.processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"  # generation continues each row from its end
        self.template = chat_template(folder, self.processor)

    def inputs(self, images, questions, system):
        texts = [self.processor.apply_chat_template(chat_messages(system, q), chat_template=self.template,
                                                    add_generation_prompt=True, tokenize=False)
                 for q in questions]
        return dict(self.processor(text=texts, images=images, padding=True, return_tensors="pt"))
