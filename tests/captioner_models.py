"""Tiny captioning models of each family, built offline in the real formats (save_pretrained), for tests.

Random weights: what they say is nonsense, but our adapter and transformers' own path must say the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = ["a red circle on the left of a white background", "a blue square above a green triangle",
          "describe this image in detail", "what are the key tags associated with this image?",
          "you are a helpful assistant that writes captions"] * 4


def byte_level_tokenizer(special: list[str], **roles):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=special, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **roles)


QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen2_vl(folder: Path, seed: int = 0) -> Path:
    """A Qwen2-VL folder laid out as the hub's: tokenizer files, preprocessor_config.json, and the chat
    template in chat_template.json (which AutoTokenizer does not read)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tokenizer = byte_level_tokenizer(special, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    torch.manual_seed(seed)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    Qwen2VLImageProcessorPil(min_pixels=2 * 28 * 28, max_pixels=16 * 28 * 28).save_pretrained(str(folder))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_TEMPLATE}))
    return folder


def build_blip(folder: Path, seed: int = 0) -> Path:
    from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + sorted({w for s in CORPUS for w in s.replace("?", "").split()})
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, bos_token="[DEC]")
    torch.manual_seed(seed)
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, encoder_hidden_size=32, bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"),
                         pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id),
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(str(folder))
    images = BlipImageProcessorPil(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


def build_llava(folder: Path, seed: int = 0) -> Path:
    """The demo captioner's architecture at the demo's size, untrained."""
    from trainer.demo_captioner import build_model, build_processor, save

    processor = build_processor()
    save(build_model(processor.tokenizer, seed), processor, folder)
    return folder


def build_florence2(folder: Path, seed: int = 0) -> Path:
    """transformers' native Florence-2 (a DaViT vision tower + BART), two small vision stages."""
    from transformers import (BartConfig, CLIPImageProcessorPil, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor, Florence2VisionConfig)

    special = ["<s>", "<pad>", "</s>", "<unk>", "<image>"]
    tokenizer = byte_level_tokenizer(special, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                     extra_special_tokens={"image_token": "<image>"})
    torch.manual_seed(seed)
    vision = Florence2VisionConfig(depths=(1, 1), patch_size=(7, 3), patch_stride=(4, 2), patch_padding=(3, 1),
                                   patch_prenorm=(False, True), embed_dim=(16, 32), num_heads=(2, 2),
                                   num_groups=(2, 2), window_size=4, projection_dim=32, drop_path_rate=0.0)
    text = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      max_position_embeddings=256, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                      decoder_start_token_id=2, forced_bos_token_id=0)
    config = Florence2Config(text_config=text, vision_config=vision,
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model = Florence2ForConditionalGeneration(config).eval()
    model.save_pretrained(str(folder))
    images = CLIPImageProcessorPil(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64},
                                   do_center_crop=False)
    images.image_seq_length = 65  # 8x8 spatial tokens + one pooled over time
    Florence2Processor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


def build_blip2(folder: Path, seed: int = 0) -> Path:
    """BLIP-2 with an OPT language model: a vision tower, a Q-Former of 4 queries, OPT."""
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil,
                              OPTConfig)

    tokenizer = byte_level_tokenizer(["<pad>", "</s>", "<unk>"], bos_token="</s>", eos_token="</s>",
                                     pad_token="<pad>", unk_token="<unk>")
    processor = Blip2Processor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, num_query_tokens=4)  # adds <image>, as for hub models
    torch.manual_seed(seed)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            encoder_hidden_size=32, vocab_size=64),
        text_config=OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                              num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=256,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id),
        num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder
