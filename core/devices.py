"""Device and precision choice, and the low-VRAM placement of components."""

from __future__ import annotations

import contextlib

import torch

from .errors import DeviceError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise DeviceError(
                f"CUDA was requested but PyTorch sees no CUDA GPU (torch {torch.__version__}, {build}). "
                "Use --device cpu, or install a CUDA build of PyTorch and check the NVIDIA driver."
            )
        try:
            device = torch.device(name)
        except RuntimeError:
            raise DeviceError(f"Unknown device '{name}': use auto, cpu, cuda or cuda:N.") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"There is no GPU {device.index}: PyTorch sees {torch.cuda.device_count()}.")
        return device
    raise DeviceError(f"Unknown device '{name}': use auto, cpu, cuda or cuda:N.")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise DeviceError(f"Unknown precision '{name}': use auto, fp32, bf16 or fp16.")
    if name == "fp16" and device.type == "cpu":
        raise DeviceError("fp16 is not supported on the CPU: use fp32 (or bf16).")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def module_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def wants_low_vram(setting: str, device: torch.device, weight_bytes: int) -> bool:
    """'auto' offloads when all weights plus ~4 GiB working memory do not fit the GPU."""
    if setting in ("on", "off"):
        return setting == "on" and device.type == "cuda"
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return weight_bytes + 4 * 2**30 > total


class Placement:
    """Keeps components on the compute device, or (low VRAM) only the one in use."""

    def __init__(self, device: torch.device, low_vram: bool):
        self.device = device
        self.low_vram = low_vram
        self.home = torch.device("cpu") if low_vram else device

    @contextlib.contextmanager
    def use(self, module: torch.nn.Module):
        if not self.low_vram:
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to(self.home)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
