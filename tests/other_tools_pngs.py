"""Settings chunks as other tools write them, built from each tool's documented format, with what a reader
should find in each. Used by the reader's tests and its fuzzing."""

from __future__ import annotations

import json

from core.generation.prompts import SYSTEM_PROMPTS

REAL = SYSTEM_PROMPTS["real"]


def _graph(**nodes) -> str:
    """A ComfyUI API-format graph from n<id>=(class_type, inputs)."""
    return json.dumps({key.lstrip("n"): {"class_type": kind, "inputs": inputs}
                       for key, (kind, inputs) in nodes.items()})


# SDXL base + refiner (ComfyUI's example): the refiner has the lower id, seed 0 and no noise of its own.
COMFY_BASE_REFINER = _graph(
    n4=("CheckpointLoaderSimple", {"ckpt_name": "sd_xl_base_1.0.safetensors"}),
    n5=("EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 1}),
    n6=("CLIPTextEncode", {"text": "evening sunset scenery blue sky nature, glass bottle", "clip": ["4", 1]}),
    n7=("CLIPTextEncode", {"text": "text, watermark", "clip": ["4", 1]}),
    n11=("KSamplerAdvanced", {"add_noise": "disable", "noise_seed": 0, "steps": 25, "cfg": 8.0,
                              "sampler_name": "euler", "scheduler": "normal", "start_at_step": 20,
                              "end_at_step": 10000, "return_with_leftover_noise": "disable", "model": ["12", 0],
                              "positive": ["15", 0], "negative": ["16", 0], "latent_image": ["10", 0]}),
    n10=("KSamplerAdvanced", {"add_noise": "enable", "noise_seed": 721897303308196, "steps": 25, "cfg": 8.0,
                              "sampler_name": "euler", "scheduler": "normal", "start_at_step": 0, "end_at_step": 20,
                              "return_with_leftover_noise": "enable", "model": ["4", 0], "positive": ["6", 0],
                              "negative": ["7", 0], "latent_image": ["5", 0]}),
    n12=("CheckpointLoaderSimple", {"ckpt_name": "sd_xl_refiner_1.0.safetensors"}),
    n15=("CLIPTextEncode", {"text": "refiner prompt", "clip": ["12", 1]}),
    n16=("CLIPTextEncode", {"text": "refiner negative", "clip": ["12", 1]}),
)
COMFY_BASE_REFINER_READ = {"seed": 721897303308196, "steps": 25, "guidance": 8.0, "sampler": "euler",
                           "prompt": "evening sunset scenery blue sky nature, glass bottle",
                           "negative_prompt": "text, watermark", "width": 1024, "height": 1024,
                           "model": "sd_xl_base_1.0.safetensors"}

# Hires fix through pixels (decode, upscale, encode, sample again at denoise 0.5).
COMFY_HIRES_FIX = _graph(
    n3=("KSampler", {"seed": 156680208700286, "steps": 20, "cfg": 8.0, "sampler_name": "dpmpp_2m",
                     "scheduler": "karras", "denoise": 1.0, "model": ["16", 0], "positive": ["6", 0],
                     "negative": ["7", 0], "latent_image": ["5", 0]}),
    n5=("EmptyLatentImage", {"width": 768, "height": 512, "batch_size": 1}),
    n6=("CLIPTextEncode", {"text": "a mountain lake", "clip": ["16", 1]}),
    n7=("CLIPTextEncode", {"text": "bad hands", "clip": ["16", 1]}),
    n8=("VAEDecode", {"samples": ["3", 0], "vae": ["16", 2]}),
    n9=("ImageScaleBy", {"upscale_method": "bilinear", "scale_by": 2.0, "image": ["8", 0]}),
    n10=("VAEEncode", {"pixels": ["9", 0], "vae": ["16", 2]}),
    n11=("KSampler", {"seed": 1, "steps": 14, "cfg": 8.0, "sampler_name": "dpmpp_2m", "scheduler": "simple",
                      "denoise": 0.5, "model": ["16", 0], "positive": ["6", 0], "negative": ["7", 0],
                      "latent_image": ["10", 0]}),
    n16=("CheckpointLoaderSimple", {"ckpt_name": "v1-5.safetensors"}),
)
COMFY_HIRES_FIX_READ = {"seed": 156680208700286, "steps": 20, "width": 768, "height": 512, "prompt": "a mountain lake"}

# Custom sampling: noise, guider, sampler and sigmas as nodes; the prompts pass through a ControlNet node
# (its output 0 is the positive, 1 the negative); AuraFlow's shift on the model.
COMFY_CUSTOM_SAMPLING = _graph(
    n1=("UNETLoader", {"unet_name": "lumina_2_model_bf16.safetensors", "weight_dtype": "default"}),
    n2=("ModelSamplingAuraFlow", {"shift": 3.0, "model": ["1", 0]}),
    n3=("CLIPTextEncode", {"text": "a red fox in the snow", "clip": ["9", 0]}),
    n4=("CLIPTextEncode", {"text": "blurry", "clip": ["9", 0]}),
    n5=("ControlNetApplyAdvanced", {"strength": 0.6, "start_percent": 0.0, "end_percent": 1.0,
                                    "positive": ["3", 0], "negative": ["4", 0], "control_net": ["10", 0],
                                    "image": ["11", 0]}),
    n6=("CFGGuider", {"cfg": 4.5, "model": ["2", 0], "positive": ["5", 0], "negative": ["5", 1]}),
    n7=("RandomNoise", {"noise_seed": 98765}),
    n8=("KSamplerSelect", {"sampler_name": "res_multistep"}),
    n12=("BasicScheduler", {"scheduler": "simple", "steps": 30, "denoise": 1.0, "model": ["2", 0]}),
    n13=("EmptySD3LatentImage", {"width": 1024, "height": 768, "batch_size": 1}),
    n14=("SamplerCustomAdvanced", {"noise": ["7", 0], "guider": ["6", 0], "sampler": ["8", 0],
                                   "sigmas": ["12", 0], "latent_image": ["13", 0]}),
    n9=("CLIPLoader", {"clip_name": "gemma_2_2b_fp16.safetensors", "type": "lumina2"}),
)
COMFY_CUSTOM_SAMPLING_READ = {"seed": 98765, "guidance": 4.5, "steps": 30, "sampler": "res_multistep",
                              "prompt": "a red fox in the snow", "negative_prompt": "blurry", "width": 1024,
                              "height": 768, "shift": 3.0, "model": "lumina_2_model_bf16.safetensors"}

# ComfyUI's own Lumina 2 workflow: the system prompt and <Prompt Start> typed into the prompt text.
COMFY_LUMINA2 = _graph(
    n4=("CheckpointLoaderSimple", {"ckpt_name": "lumina_2.safetensors"}),
    n11=("ModelSamplingAuraFlow", {"shift": 6.0, "model": ["4", 0]}),
    n6=("CLIPTextEncode", {"text": f"{REAL} <Prompt Start> a cat sitting on a windowsill", "clip": ["4", 1]}),
    n7=("CLIPTextEncode", {"text": "blurry, lowres", "clip": ["4", 1]}),
    n13=("EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}),
    n3=("KSampler", {"seed": 2025, "steps": 25, "cfg": 4.0, "sampler_name": "res_multistep", "scheduler": "simple",
                     "denoise": 1.0, "model": ["11", 0], "positive": ["6", 0], "negative": ["7", 0],
                     "latent_image": ["13", 0]}),
)
COMFY_LUMINA2_READ = {"seed": 2025, "steps": 25, "guidance": 4.0, "shift": 6.0, "system_prompt": "real",
                      "prompt": "a cat sitting on a windowsill", "negative_prompt": "blurry, lowres",
                      "model": "lumina_2.safetensors"}

# ComfyUI's "CLIP Text Encode for Lumina2" node and RenormCFG, with SamplerCustom; the seed from a primitive.
COMFY_LUMINA2_NODES = _graph(
    n1=("CheckpointLoaderSimple", {"ckpt_name": "lumina_2.safetensors"}),
    n2=("RenormCFG", {"cfg_trunc": 100.0, "renorm_cfg": 1.0, "model": ["1", 0]}),
    n3=("CLIPTextEncodeLumina2", {"system_prompt": "alignment", "user_prompt": "a teapot on a table",
                                  "clip": ["1", 1]}),
    n4=("CLIPTextEncodeLumina2", {"system_prompt": "superior", "user_prompt": "", "clip": ["1", 1]}),
    n5=("KSamplerSelect", {"sampler_name": "euler"}),
    n6=("BasicScheduler", {"scheduler": "simple", "steps": 18, "denoise": 1.0, "model": ["2", 0]}),
    n7=("EmptySD3LatentImage", {"width": 768, "height": 1024, "batch_size": 1}),
    n8=("PrimitiveInt", {"value": 31337}),
    n9=("SamplerCustom", {"add_noise": True, "noise_seed": ["8", 0], "cfg": 5.0, "model": ["2", 0],
                          "positive": ["3", 0], "negative": ["4", 0], "sampler": ["5", 0], "sigmas": ["6", 0],
                          "latent_image": ["7", 0]}),
)
COMFY_LUMINA2_NODES_READ = {"seed": 31337, "guidance": 5.0, "steps": 18, "sampler": "euler", "cfg_renorm": 1.0,
                            "system_prompt": "align", "prompt": "a teapot on a table", "negative_prompt": "",
                            "width": 768, "height": 1024}

SWARMUI = json.dumps({
    "sui_image_params": {"prompt": "a photo of a lighthouse", "negativeprompt": "people", "model": "Lumina-Image-2",
                         "seed": 1234567, "steps": 30, "cfgscale": 4.0, "aspectratio": "Custom", "width": 1280,
                         "height": 768, "sigmashift": 6.0, "comfyuisampler": "euler", "swarm_version": "0.9.6.2"},
    "sui_extra_data": {"date": "2026-11-30", "prep_time": "0.01 sec", "generation_time": "12.80 sec"},
    "sui_models": [{"name": "Lumina-Image-2.safetensors", "param": "model", "hash": "0x1b2c"}],
})
SWARMUI_READ = {"source": "swarmui", "prompt": "a photo of a lighthouse", "negative_prompt": "people",
                "seed": 1234567, "steps": 30, "guidance": 4.0, "width": 1280, "height": 768, "shift": 6.0,
                "sampler": "euler", "model": "Lumina-Image-2"}

FOOOCUS = json.dumps({
    "adm_guidance": "(1.5, 0.8, 0.3)", "base_model": "juggernautXL_v8Rundiffusion.safetensors",
    "base_model_hash": "aeb7e9e689", "full_negative_prompt": ["unrealistic", "saturated"],
    "full_prompt": ["an astronaut riding a horse, cinematic"], "guidance_scale": 4, "loras": [],
    "metadata_scheme": "fooocus", "negative_prompt": "saturated", "performance": "Speed",
    "prompt": "an astronaut riding a horse", "refiner_model": "None", "refiner_switch": 0.5,
    "resolution": "(1152, 896)", "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras",
    "seed": "127589946317439009", "sharpness": 2, "steps": 30, "styles": "['Fooocus V2']",
    "vae": "Default (model)", "version": "Fooocus v2.5.5",
})
FOOOCUS_READ = {"source": "fooocus", "prompt": "an astronaut riding a horse", "negative_prompt": "saturated",
                "seed": 127589946317439009, "steps": 30, "guidance": 4, "width": 1152, "height": 896,
                "sampler": "dpmpp_2m_sde_gpu", "model": "juggernautXL_v8Rundiffusion.safetensors",
                "model_hash": "aeb7e9e689"}

RUINED_FOOOCUS = json.dumps({
    "Prompt": "a cozy cabin in the woods", "Negative": "", "steps": 24, "cfg": 7.0, "width": 896, "height": 1152,
    "seed": 42424242, "sampler_name": "dpmpp_2m_sde_gpu", "scheduler": "karras",
    "base_model_name": "sd_xl_base_1.0_0.9vae.safetensors", "base_model_hash": "e6bb9ea85b", "loras": [],
    "start_step": 0, "denoise": None, "clip_skip": 1, "software": "RuinedFooocus",
})
RUINED_FOOOCUS_READ = {"source": "fooocus", "prompt": "a cozy cabin in the woods", "negative_prompt": "",
                       "steps": 24, "guidance": 7.0, "width": 896, "height": 1152, "seed": 42424242,
                       "sampler": "dpmpp_2m_sde_gpu", "model": "sd_xl_base_1.0_0.9vae.safetensors"}

A1111_HIRES = ("a cottage, watercolor\nNegative prompt: photo\nSteps: 28, Sampler: DPM++ 2M, Schedule type: Karras, "
               "CFG scale: 6, Seed: 77, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned, Denoising "
               "strength: 0.45, Hires upscale: 2, Hires steps: 12, Hires upscaler: Latent, Version: v1.10.1")
A1111_HIRES_READ = {"source": "a1111", "prompt": "a cottage, watercolor", "negative_prompt": "photo", "steps": 28,
                    "guidance": 6.0, "seed": 77, "width": 512, "height": 768, "model": "v1-5-pruned"}

# (chunk name, text, what is read): every fixture above, as a reader finds it
FIXTURES = {
    "comfyui-base-refiner": ("prompt", COMFY_BASE_REFINER, {"source": "comfyui", **COMFY_BASE_REFINER_READ}),
    "comfyui-hires-fix": ("prompt", COMFY_HIRES_FIX, {"source": "comfyui", **COMFY_HIRES_FIX_READ}),
    "comfyui-custom-sampling": ("prompt", COMFY_CUSTOM_SAMPLING, {"source": "comfyui", **COMFY_CUSTOM_SAMPLING_READ}),
    "comfyui-lumina2": ("prompt", COMFY_LUMINA2, {"source": "comfyui", **COMFY_LUMINA2_READ}),
    "comfyui-lumina2-nodes": ("prompt", COMFY_LUMINA2_NODES, {"source": "comfyui", **COMFY_LUMINA2_NODES_READ}),
    "swarmui": ("parameters", SWARMUI, SWARMUI_READ),
    "fooocus": ("parameters", FOOOCUS, FOOOCUS_READ),
    "ruinedfooocus": ("parameters", RUINED_FOOOCUS, RUINED_FOOOCUS_READ),
    "a1111-hires": ("parameters", A1111_HIRES, A1111_HIRES_READ),
}
