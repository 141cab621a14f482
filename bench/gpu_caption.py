"""Captioning throughput of a full-size Qwen2.5-VL-7B-shaped model (random weights, bf16) on one GPU,
through our Qwen adapter, at batch 1, 8 and 32: images/s and peak memory.

    python bench/gpu_caption.py            (on a GPU machine; writes bench/out/gpu_caption.json)
    python bench/gpu_caption.py --small    (the same path with a tiny model, to check it on a CPU)

Random weights never say "stop", so every caption runs to --new-tokens: the figure is images/s at that
caption length (a detailed caption is 100-200 tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from results import save_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# Qwen2.5-VL-7B-Instruct's published shape
FULL_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, max_position_embeddings=32768,
                 rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
FULL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                   fullatt_block_indexes=[7, 15, 23, 31])


def build(folder: Path, small: bool) -> Path:
    import torch
    from captioner_models import QWEN_TEMPLATE, byte_level_tokenizer
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tokenizer = byte_level_tokenizer(special, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    text = dict(FULL_TEXT) if not small else dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2,
                                                 rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                                  "mrope_section": [2, 3, 3]})
    vision = dict(FULL_VISION) if not small else dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                                     out_hidden_size=64, patch_size=14, spatial_merge_size=2,
                                                     temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config={**text, "vocab_size": len(tokenizer), "eos_token_id": ids["<|im_end|>"],
                                           "pad_token_id": ids["<|endoftext|>"], "bos_token_id": ids["<|endoftext|>"]},
                              vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"])
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16 if not small else torch.float32)
    model.save_pretrained(str(folder))
    del model
    tokenizer.save_pretrained(str(folder))
    # 448x448 images: 1,024 patches, 256 image tokens each
    Qwen2VLImageProcessorPil(min_pixels=448 * 448, max_pixels=448 * 448).save_pretrained(str(folder))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_TEMPLATE}))
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", default="1,8,32")
    args = parser.parse_args()
    import torch
    from PIL import Image

    from core.captioning.adapters import load_captioner
    from core.captioning.styles import prompts_for

    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompt = prompts_for(["detailed"])[0]
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "small": args.small,
               "new_tokens": args.new_tokens, "torch": torch.__version__, "batches": {}}
    with tempfile.TemporaryDirectory() as folder:
        captioner = load_captioner(build(Path(folder), args.small), device=device,
                                   dtype="bf16" if device == "cuda" else "fp32")
        sampling = {"do_sample": False, "min_new_tokens": args.new_tokens}
        for size in map(int, args.batches.split(",")):
            images = [Image.new("RGB", (448, 448), (i * 7 % 255, 90, 160)) for i in range(size)]
            captioner.caption(images[:1], [prompt.question], prompt.system, sampling, 4)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            captioner.caption(images, [prompt.question] * size, prompt.system, sampling, args.new_tokens)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            results["batches"][size] = {
                "images_per_second": round(size / seconds, 2), "seconds": round(seconds, 2),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device == "cuda" else None,
                "batch_after_oom_retries": captioner.batch_limit}
            print(size, results["batches"][size], flush=True)
    save_results("gpu_caption", results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
