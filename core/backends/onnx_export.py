"""Export Next-DiT to ONNX in four stage graphs, cached on disk.

The stock diffusers model does not export (data-dependent caption compaction, complex RoPE). Our NextDiT
keeps captions padded with a key mask and uses real cos/sin RoPE, so each stage exports with dynamic batch,
caption length and resolution. The RoPE tables and masks are inputs, computed once per generation by
`Layout` (tensor ops on the host), so no graph depends on data values.

  caption.onnx  caption features, mask, RoPE -> refined caption tokens           (once per generation)
  embed.onnx    latent, t, caption tokens, RoPE -> joint sequence, t embedding, cache signal
  joint.onnx    joint sequence, t embedding, RoPE, mask -> joint sequence         (the part a cache skips)
  final.onnx    joint sequence, t embedding, latent -> velocity

Inputs and outputs are float32 at the graph boundary; inside, the weights' precision (fp32 for the CPU
provider, bf16/fp16 for CUDA). Graphs above 2 GB keep their weights in external data files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import LuminaError
from ..models.nextdit import NextDiT
from ..storage import data_dir

OPSET = 23
EXPORT_FORMAT = 1  # bump when the graphs' interface changes
GRAPHS = ("caption", "embed", "joint", "final")


def full_mask(key_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) key mask -> (B, 1, L, L): ONNX Runtime's Attention wants the query axis spelled out."""
    length = key_mask.shape[1]
    return key_mask[:, None, None, :].expand(-1, 1, length, -1)


class CaptionGraph(nn.Module):
    def __init__(self, model: NextDiT):
        super().__init__()
        self.model = model

    def forward(self, features, caption_mask, cos, sin):
        tokens = self.model.refine_captions(features, (cos, sin), full_mask(caption_mask))
        return tokens.float()


class EmbedGraph(nn.Module):
    def __init__(self, model: NextDiT):
        super().__init__()
        self.model = model

    def forward(self, x, t, caption_tokens, cos, sin):
        image, temb = self.model.embed_image(x, t, (cos, sin))
        hidden = torch.cat([caption_tokens.to(image.dtype), image], dim=1)
        signal = self.model.modulated_input(hidden, temb)
        return hidden.float(), temb.float(), signal.float()


class JointGraph(nn.Module):
    def __init__(self, model: NextDiT):
        super().__init__()
        self.model = model

    def forward(self, hidden, temb, cos, sin, joint_mask):
        dtype = self.model.dtype
        out = self.model.run_joint_blocks(hidden.to(dtype), temb.to(dtype), (cos, sin), full_mask(joint_mask))
        return out.float()


class FinalGraph(nn.Module):
    def __init__(self, model: NextDiT):
        super().__init__()
        self.model = model

    def forward(self, hidden, temb, x):
        height, width = x.shape[2], x.shape[3]
        p = self.model.config.patch_size
        image_tokens = (height // p) * (width // p)
        image = hidden[:, hidden.shape[1] - image_tokens :]
        dtype = self.model.dtype
        return self.model.velocity(image.to(dtype), temb.to(dtype), height, width)


@contextlib.contextmanager
def quiet_exporter():
    """The exporter logs notes (e.g. about torchvision) and warnings that mean nothing to a user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def cache_key(model_hash: str, precision: str) -> str:
    import onnxruntime

    parts = f"{model_hash}|{precision}|opset{OPSET}|ort{onnxruntime.__version__}|torch{torch.__version__}|v{EXPORT_FORMAT}"
    return hashlib.sha256(parts.encode()).hexdigest()[:20]


def cache_folder(model_hash: str, precision: str) -> Path:
    return data_dir() / "cache" / "onnx" / cache_key(model_hash, precision)


def is_complete(folder: Path) -> bool:
    return (folder / "manifest.json").exists() and all((folder / f"{g}.onnx").exists() for g in GRAPHS)


def _example_inputs(model: NextDiT):
    """Small example tensors; every named dimension is exported as dynamic."""
    from ..models.nextdit import Layout

    config = model.config
    lengths, latent_size = [5, 3], (6, 4)
    layout = Layout.build(config, lengths, latent_size, model.device)
    batch, width = 2, max(lengths)
    features = torch.randn(batch, width, config.cap_feat_dim, device=model.device)
    x = torch.randn(batch, config.in_channels, *latent_size, device=model.device)
    t = torch.full((batch,), 0.5, device=model.device)
    with torch.no_grad():
        tokens = CaptionGraph(model)(features, layout.caption_mask, *layout.caption_rope)
        hidden, temb, _ = EmbedGraph(model)(x, t, tokens, *layout.image_rope)
    return {
        "caption": (features, layout.caption_mask, *layout.caption_rope),
        "embed": (x, t, tokens, *layout.image_rope),
        "joint": (hidden, temb, *layout.joint_rope, layout.joint_mask),
        "final": (hidden, temb, x),
    }


NAMES = {
    "caption": (["features", "caption_mask", "cos", "sin"], ["caption_tokens"]),
    "embed": (["x", "t", "caption_tokens", "cos", "sin"], ["hidden", "temb", "signal"]),
    "joint": (["hidden", "temb", "cos", "sin", "joint_mask"], ["hidden_out"]),
    "final": (["hidden", "temb", "x"], ["velocity"]),
}
# Batch, sequence and spatial dimensions vary; channel and width dimensions do not.
DYNAMIC_DIMS = {
    "features": (0, 1), "caption_mask": (0, 1), "cos": (0, 1), "sin": (0, 1), "caption_tokens": (0, 1),
    "x": (0, 2, 3), "t": (0,), "hidden": (0, 1), "temb": (0,), "joint_mask": (0, 1),
}
MODULES = {"caption": CaptionGraph, "embed": EmbedGraph, "joint": JointGraph, "final": FinalGraph}


def export_graphs(model: NextDiT, folder: Path, precision: str, progress=None) -> Path:
    """Export the four graphs into `folder` atomically (a temp folder renamed into place).

    progress(done, name) is called before each graph (name) and once at the end (name None).
    """
    import onnxruntime
    from torch.export import Dim

    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".export-"))
    try:
        examples = _example_inputs(model)
        for done, name in enumerate(GRAPHS):
            if progress is not None:
                progress(done, name)
            inputs, outputs = NAMES[name]
            args = examples[name]
            dynamic = {arg: {dim: Dim.AUTO for dim in DYNAMIC_DIMS[arg]} for arg in inputs}
            with torch.no_grad(), quiet_exporter():
                program = torch.onnx.export(
                    MODULES[name](model).eval(), args, dynamo=True, input_names=inputs, output_names=outputs,
                    dynamic_shapes=dynamic, opset_version=OPSET, verbose=False,
                )
            size = sum(p.numel() * p.element_size() for p in model.parameters())
            program.save(str(work / f"{name}.onnx"), external_data=size > 1.5 * 2**30)
        manifest = {
            "graphs": list(GRAPHS), "precision": precision, "opset": OPSET, "format": EXPORT_FORMAT,
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "config": model.config.to_diffusers_dict(),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if progress is not None:
            progress(len(GRAPHS), None)
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
    except OSError as exc:
        raise LuminaError(f"Could not write the ONNX export to {folder.parent}: {exc.strerror or exc}.") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder
