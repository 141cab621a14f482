"""The ONNX Runtime backend: NextDiT's exported stage graphs run in ORT sessions.

Tensors stay torch tensors on the compute device and are bound to the sessions by pointer (IO binding),
so on CUDA nothing crosses to the host inside the step loop. The provider actually in use is checked:
asking for CUDA where ORT cannot use it is an error, never a silent fall-back to the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DeviceError
from ..models.nextdit import Conditioning, Layout, NextDiTConfig
from .onnx_export import GRAPHS, NAMES

_NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bool: np.bool_, torch.int64: np.int64}


def providers_for(device: torch.device) -> list:
    if device.type == "cuda":
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Graph:
    """One ORT session, called with torch tensors through IO binding."""

    def __init__(self, path: Path, device: torch.device, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.device = device
        self.session = ort.InferenceSession(str(path), options, providers=providers_for(device))
        wanted = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
        if self.session.get_providers()[0] != wanted:
            raise DeviceError(
                f"ONNX Runtime cannot use {wanted} here (it offers {', '.join(self.session.get_providers())}). "
                "Install onnxruntime-gpu matching your CUDA and cuDNN versions, or use --device cpu."
            )
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def __call__(self, inputs: dict[str, torch.Tensor], output_shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Run with inputs and outputs bound by pointer: outputs are float32 tensors allocated here."""
        binding = self.session.io_binding()
        kept = []  # contiguous copies must stay alive until the run ends
        for name, tensor in inputs.items():
            tensor = tensor.to(self.device).contiguous()
            kept.append(tensor)
            self._bind(binding.bind_input, name, tensor)
        outputs = [torch.empty(shape, dtype=torch.float32, device=self.device) for shape in output_shapes]
        for name, tensor in zip(self.output_names, outputs):
            self._bind(binding.bind_output, name, tensor)
        self.session.run_with_iobinding(binding)
        return outputs

    def _bind(self, bind, name: str, tensor: torch.Tensor) -> None:
        bind(name, self.device.type, self.device.index or 0, _NUMPY_TYPES[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())


class OrtStages:
    name = "onnx"

    def __init__(self, folder: Path, config: NextDiTConfig, device: torch.device):
        self.config = config
        self.device = device
        self.graphs = {name: Graph(folder / f"{name}.onnx", device) for name in GRAPHS}

    @property
    def provider(self) -> str:
        return self.graphs["joint"].provider

    def _call(self, graph: str, tensors, output_shapes):
        inputs, _ = NAMES[graph]
        return self.graphs[graph](dict(zip(inputs, tensors)), output_shapes)

    def prepare(self, features, mask, latent_size) -> Conditioning:
        layout = Layout.from_mask(self.config, mask, latent_size, self.device)
        features = features[:, : layout.caption_width].float().to(self.device)
        shape = (features.shape[0], layout.caption_width, self.config.hidden_size)
        (tokens,) = self._call("caption", (features, layout.caption_mask, *layout.caption_rope), [shape])
        return Conditioning(layout, tokens)

    def _sequence_shape(self, cond: Conditioning) -> tuple[int, int, int]:
        height, width = cond.layout.latent_size
        image_tokens = (height // self.config.patch_size) * (width // self.config.patch_size)
        return cond.batch_size, cond.caption_width + image_tokens, self.config.hidden_size

    def embed(self, x, t, cond: Conditioning, with_signal: bool):
        sequence = self._sequence_shape(cond)
        temb_shape = (cond.batch_size, self.config.time_embed_dim)
        hidden, temb, signal = self._call(
            "embed", (x.float(), t.float(), cond.caption_tokens, *cond.layout.image_rope), [sequence, temb_shape, sequence]
        )
        return hidden, temb, signal if with_signal else None

    def joint(self, hidden, temb, cond: Conditioning) -> torch.Tensor:
        inputs = (hidden, temb, *cond.layout.joint_rope, cond.layout.joint_mask)
        (out,) = self._call("joint", inputs, [tuple(hidden.shape)])
        return out

    def final(self, hidden, temb, cond: Conditioning) -> torch.Tensor:
        height, width = cond.layout.latent_size
        shape = (hidden.shape[0], self.config.latent_channels_out, height, width)
        shape_carrier = torch.empty(hidden.shape[0], self.config.in_channels, height, width, device=self.device)
        (velocity,) = self._call("final", (hidden, temb, shape_carrier), [shape])
        return velocity
