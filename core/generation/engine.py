"""The engine: a loaded model that turns requests into images.

request -> prompt encoding (cached) -> seeded noise -> sampling loop (grid, solver, guidance, denoiser)
-> VAE decode -> PNG with metadata.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..backends import choice, onnx_export
from ..backends.denoiser import StagedDenoiser
from ..backends.onnx_backend import OrtStages
from ..backends.torch_backend import TorchStages
from ..devices import Placement, dtype_name, module_bytes, resolve_device, resolve_dtype, wants_low_vram
from ..errors import Cancelled, DeviceError, ModelLoadError, RequestError
from ..metadata import FORMAT, a1111_parameters, check_writable, png_info, write_png
from ..models import loader
from ..models.nextdit import NextDiTConfig
from ..models.registry import model_hash
from ..models.sources import ModelSource
from .preview import LatentPreviewer
from .prompt_encoder import PromptEncoder
from .prompts import full_prompt
from .request import GenerationRequest
from ..sampling.cache import CacheSettings, StepCache
from ..sampling.cache_fit import read_fitted
from ..sampling.guidance import DiffusersGuidance, OfficialGuidance
from ..sampling.sampler import StepInfo, sample
from ..sampling.schedule import diffusers_grid, official_grid
from ..sampling.solvers import make_solver
from ..storage import human_size

StepCallback = Callable[[int, StepInfo], None]  # (image index, step info)
PREVIEW_DECODE_PIXELS = 256 * 256  # up to this size a live preview is a real VAE decode


@dataclass
class GeneratedImage:
    image: Image.Image
    pixels: np.ndarray  # (H, W, 3) float32 in [0, 1], before rounding to 8 bits
    settings: dict  # every resolved setting, with this image's own seed
    record: dict  # the JSON stored in the PNG
    evaluations: int  # transformer passes per sample (conditional and unconditional counted apart)
    joint_evaluations: int  # of those, passes whose joint blocks ran (fewer with the cache)
    timings: dict
    warnings: list[str] = field(default_factory=list)
    path: Path | None = None


class Engine:
    def __init__(
        self,
        source: ModelSource,
        device: str = "auto",
        dtype: str = "auto",
        low_vram: str = "auto",
        backend: str = "torch",
        measure_backends: bool = True,
        batch_cfg: bool | None = None,
        on_export: Callable[[int, str | None], None] | None = None,
    ):
        if backend not in ("torch", "onnx", "auto"):
            raise RequestError(f"Unknown backend '{backend}': use torch, onnx or auto.")
        self.source = source
        self.backend = backend
        self._measure_at_load = measure_backends  # False: "auto" without a measurement yet starts on torch
        self.backend_measured = backend != "auto"
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if backend != "torch" and self.device.type == "cpu" and self.dtype != torch.float32:
            raise DeviceError("ONNX Runtime on the CPU runs fp32 graphs only: use --dtype fp32 (or auto).")
        self.low_vram_setting = low_vram
        # One batch of two fills a GPU better; on a CPU two single passes are as fast and skip padding.
        self.batch_cfg = self.device.type == "cuda" if batch_cfg is None else batch_cfg
        self.on_export = on_export
        self.loaded = False
        self._previewer: LatentPreviewer | None = None

    # ---- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        if self.loaded:
            return
        cpu = torch.device("cpu")
        components = self.source.components
        self.tokenizer = loader.load_tokenizer(components)
        self.text_encoder = loader.load_text_encoder(components, self.dtype, cpu)
        self.vae = loader.load_vae(components, self.dtype, cpu)
        self.hash = model_hash(self.source)
        if self.backend == "auto":
            self.backend = self._faster_backend()
        resident = [self.text_encoder, self.vae]
        if self.backend == "torch":
            self.dit = loader.load_dit(self.source, self.dtype, cpu)
            self.config = self.dit.config
            resident.append(self.dit)
        else:
            self.dit = None
            self.onnx_folder = self._onnx_graphs()
            self.config = self._onnx_config(self.onnx_folder)
        self._check_components()
        weights = sum(module_bytes(m) for m in resident)
        self.placement = Placement(self.device, wants_low_vram(self.low_vram_setting, self.device, weights))
        for module in resident:
            module.to(self.placement.home)
        if self.backend == "torch":
            self.stages = TorchStages(self.dit)
        else:
            self.stages = OrtStages(self.onnx_folder, self.config, self.device)
        max_tokens = min(256, self.config.max_caption_tokens)
        self.prompts = PromptEncoder(self.tokenizer, self.text_encoder, max_tokens=max_tokens)
        self.default_shift = loader.default_shift(components)
        self.sampling_defaults = loader.sampling_defaults(components)
        self.fitted_cache = None if self.source.is_single_file else read_fitted(self.source.dit)
        self.loaded = True

    def _check_components(self) -> None:
        components = self.source.components
        if self.vae.config.latent_channels != self.config.in_channels:
            raise ModelLoadError(
                f"{components / 'vae'} makes {self.vae.config.latent_channels}-channel latents but the DiT "
                f"expects {self.config.in_channels}: the VAE belongs to another model."
            )
        if self.text_encoder.config.hidden_size != self.config.cap_feat_dim:
            raise ModelLoadError(
                f"The text encoder's width ({self.text_encoder.config.hidden_size}) does not match the DiT's "
                f"caption width ({self.config.cap_feat_dim}): the components belong to another model."
            )

    def _faster_backend(self) -> str:
        """The backend measured faster here for this model (measured at first use, then remembered).

        Without a measurement yet and `measure_backends=False` (the app), PyTorch now: the app measures
        later, when the queue is idle, so the first image never waits for an ONNX export."""
        known = choice.remembered(self._choice_key())
        self.backend_measured = known is not None
        if known:
            return known
        if not self._measure_at_load:
            return "torch"
        return self.measure_backends()

    def _choice_key(self) -> str:
        return choice.choice_key(self.hash, self.device, dtype_name(self.dtype))

    def measure_backends(self, should_stop: Callable[[], bool] = lambda: False) -> str:
        """Time both backends here for this model (exporting ONNX graphs if needed); remember the faster.
        `should_stop()` is asked between the parts (and between exported graphs): Cancelled when it says so."""

        def check() -> None:
            if should_stop():
                raise Cancelled("The backend measurement was stopped.")

        key = self._choice_key()
        dit = loader.load_dit(self.source, self.dtype, self.device)
        check()
        timings = {"torch": choice.seconds_per_pass(TorchStages(dit), dit.config, self.device)}
        del dit
        check()
        folder = self._onnx_graphs(before_each_graph=check)
        config = self._onnx_config(folder)
        timings["onnx"] = choice.seconds_per_pass(OrtStages(folder, config, self.device), config, self.device)
        self.backend_measured = True
        return choice.remember(key, timings)

    @staticmethod
    def _onnx_config(folder: Path) -> NextDiTConfig:
        return NextDiTConfig.from_dict(json.loads((folder / "manifest.json").read_text())["config"])

    def _onnx_graphs(self, before_each_graph: Callable[[], None] = lambda: None) -> Path:
        """The exported graphs for this model and precision, exported now if not cached yet."""
        precision = dtype_name(self.dtype)
        folder = onnx_export.cache_folder(self.hash, precision)
        if not onnx_export.is_complete(folder):
            dit = loader.load_dit(self.source, self.dtype, torch.device("cpu"))

            def progress(done: int, name: str | None) -> None:
                if name is not None:  # raising here leaves no partial export (it is written to a temp folder)
                    before_each_graph()
                if self.on_export is not None:
                    self.on_export(done, name)

            onnx_export.export_graphs(dit, folder, precision, progress=progress)
            del dit
        return folder

    @property
    def model_info(self) -> dict:
        return {
            "name": self.source.name,
            "hash": self.hash,
            "kind": "single-file" if self.source.is_single_file else "diffusers",
            "path": str(self.source.dit if self.source.is_single_file else self.source.components),
        }

    @property
    def run_info(self) -> dict:
        return {
            "backend": self.backend,
            "provider": getattr(self.stages, "provider", None),
            "device": self.device.type,
            "dtype": dtype_name(self.dtype),
            "low_vram": self.placement.low_vram,
            "version": __version__,
        }

    # ---- requests --------------------------------------------------------------------------

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """Defaults filled in and checked against this model (sizes RoPE can address)."""
        self.load()
        # diffusers' convention: the transformer's sample_size (in latent pixels) x 8 is the default size.
        resolved = request.with_defaults(self.default_shift, self.config.sample_size * 8, self.sampling_defaults)
        max_h, max_w = self.config.max_image_size()
        if resolved.height > max_h or resolved.width > max_w:
            raise RequestError(
                f"{resolved.width}x{resolved.height} is larger than this model's position tables allow "
                f"({max_w}x{max_h} at most); Lumina-Image 2.0 was trained up to about 1024x1024."
            )
        return resolved

    def prompt_warnings(self, request: GenerationRequest) -> list[str]:
        """Notes about the prompts: truncation (with what was cut) and an empty prompt."""
        notes = []
        size_note = oversize_note(request.width, request.height, self.config.sample_size * 8, self.config.num_attention_heads)
        if size_note:
            notes.append(size_note)
        if not request.prompt.strip():
            notes.append("The prompt is empty: the image is unconditional (no text guides it).")
        positive = full_prompt(request.prompt, request.system_prompt_text)
        for label, text in (("prompt", positive), ("negative prompt", request.negative_prompt)):
            _, dropped, cut = self.prompts.truncation(text)
            if dropped:
                shown = cut if len(cut) <= 120 else cut[:120] + "..."
                notes.append(
                    f"The {label} is longer than {self.prompts.max_tokens} tokens (system prompt included); "
                    f"the last {dropped} tokens are dropped: '{shown}'"
                )
        return notes

    def generate(
        self,
        request: GenerationRequest,
        out_dir: Path | None = None,
        on_step: StepCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_image: Callable[[GeneratedImage], None] | None = None,
        make_cache: Callable[[], StepCache] | None = None,
        model_path: bool = False,
    ) -> list[GeneratedImage]:
        """Make request.count images with seeds seed, seed+1, ...; save each to out_dir if given.

        make_cache replaces the request's cache with one of the caller's (cache_fit records with it).
        Images name the model by name and hash; its local path only with model_path (a shared image would
        show the folders of the person who made it)."""
        req = self.resolve(request)  # loads the model on first use
        model = self.model_info if model_path else {k: v for k, v in self.model_info.items() if k != "path"}
        if out_dir is not None:
            check_writable(out_dir)
        warnings = self.prompt_warnings(req)
        base_seed = req.seed if req.seed is not None else secrets.randbelow(2**63)

        started = time.perf_counter()
        with self.placement.use(self.text_encoder):
            positive = self.prompts.encode(full_prompt(req.prompt, req.system_prompt_text))
            negative = self.prompts.encode(req.negative_prompt)
        encode_s = time.perf_counter() - started

        latent_size = (req.height // 8, req.width // 8)
        cache_settings = CacheSettings.parse(req.cache)
        denoiser = StagedDenoiser(self.stages, positive, negative, latent_size, self.batch_cfg)
        results = []
        for index in range(req.count):
            seed = base_seed + index
            timings = {"encode_s": encode_s if index == 0 else 0.0}
            # A fresh cache per image: no state leaks from one generation to the next.
            if make_cache is not None:
                cache = make_cache()
            else:
                cache = StepCache(cache_settings, self.fitted_cache) if cache_settings else None
            tick = time.perf_counter()
            with self.placement.use(self.dit) if self.dit is not None else contextlib.nullcontext():
                latent = sample_latent(denoiser, req, seed, self.config.in_channels, self.device, cache,
                                       on_step=(lambda info, i=index: on_step(i, info)) if on_step else None,
                                       should_stop=should_stop)
            timings["sample_s"] = time.perf_counter() - tick
            tick = time.perf_counter()
            pixels = self.decode(latent)
            timings["decode_s"] = time.perf_counter() - tick
            settings = {**req.to_dict(), "seed": seed, "count": 1, "system_prompt_text": req.system_prompt_text}
            result = self._finish(pixels, settings, model, denoiser, timings, warnings)
            if out_dir is not None:
                tick = time.perf_counter()
                stem = time.strftime("%Y%m%d-%H%M%S") + f"-{seed}"
                info = png_info(a1111_parameters(settings, model), result.record)
                result.path = write_png(result.image, out_dir, stem, info)
                timings["save_s"] = time.perf_counter() - tick
            timings["total_s"] = sum(timings.values())
            results.append(result)
            if on_image is not None:
                on_image(result)
        return results

    def _finish(self, pixels, settings, model: dict, denoiser: StagedDenoiser, timings, warnings) -> GeneratedImage:
        image = Image.fromarray((pixels * 255).round().astype(np.uint8))
        run = {
            **self.run_info,
            "transformer_evaluations": denoiser.evaluations,
            "joint_block_evaluations": denoiser.joint_evaluations,
            "cache_skipped": denoiser.evaluations - denoiser.joint_evaluations,
            "cache_coefficients": denoiser.cache.coefficients_used if denoiser.cache else None,
            "timings": timings,
        }
        record = {"format": FORMAT, "settings": settings, "model": model, "run": run}
        return GeneratedImage(
            image, pixels, settings, record, denoiser.evaluations, denoiser.joint_evaluations, timings, list(warnings)
        )

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """Latent (1, C, h, w) -> (H, W, 3) float32 pixels in [0, 1]."""
        with self.placement.use(self.vae):
            return loader.decode_latent(self.vae, latent)

    def preview(self, info: StepInfo) -> np.ndarray:
        """An RGB preview of the current estimate of the image. Small images are decoded by the VAE itself
        (a 64x64 one costs ~15 ms on a CPU), so the preview looks like the result; larger ones get the cheap
        linear map at latent resolution (one small matrix product per step)."""
        latent = info.denoised
        if latent.shape[-2] * latent.shape[-1] * 64 <= PREVIEW_DECODE_PIXELS:
            return (self.decode(latent) * 255).round().astype(np.uint8)
        if self._previewer is None:
            with self.placement.use(self.vae):
                self._previewer = LatentPreviewer.fit(self.vae)
        return self._previewer(latent)


def sample_latent(denoiser: StagedDenoiser, req: GenerationRequest, seed: int, channels: int, device: torch.device,
                  cache: StepCache | None = None, on_step=None, should_stop=None) -> torch.Tensor:
    """One image's latent for a resolved request: the seed's noise (drawn on the CPU, as diffusers does), the
    request's time grid, solver and guidance. Generate and the trainer's sample images both sample here."""
    latent_size = (req.height // 8, req.width // 8)
    noise = torch.randn((1, channels, *latent_size), generator=torch.Generator("cpu").manual_seed(seed))
    denoiser.start_image(cache)
    grid = diffusers_grid if req.compat == "diffusers" else official_grid
    if req.compat == "diffusers":
        guidance = DiffusersGuidance(req.guidance, req.cfg_trunc, req.cfg_renorm > 0)
    else:
        guidance = OfficialGuidance(req.guidance, req.cfg_trunc, req.cfg_renorm)
    return sample(denoiser, noise.to(device), grid(req.steps, req.shift), make_solver(req.solver), guidance,
                  on_step=on_step, should_stop=should_stop)


def oversize_note(width: int, height: int, own_size: int, heads: int) -> str | None:
    """A warning, before any work, for sizes above the model's own: what they cost in time and memory.

    Linear parts grow with the image tokens, attention with their square; PyTorch's CPU attention holds the
    whole score matrix of one head at a time (float32).
    """
    tokens, own_tokens = (width // 16) * (height // 16), (own_size // 16) ** 2
    if tokens <= 1.1 * own_tokens:
        return None
    factor = tokens / own_tokens
    scores = tokens**2 * 4 * heads
    return (f"{width}x{height} is larger than the {own_size}x{own_size} this model was trained on: expect repeated "
            f"or stretched subjects. It has {tokens:,} image tokens, {factor:,.0f}x as many, so each step takes at "
            f"least {factor:,.0f}x as long ({factor**2:,.0f}x for attention), and attention may need about "
            f"{human_size(scores)} of memory at once.")
