"""Lumina Studio core: everything that is not drawing (no Qt here)."""

import logging

__version__ = "0.1.0"

# torchao (the trainer's 8-bit AdamW) is imported by diffusers and transformers wherever it is installed, and
# logs at import that its CUDA kernels cannot load on this build, that diffusers misses tensor types torchao
# renamed, and torch deprecation notes: none concerns us, and people read them as errors.
for _noisy in ("torchao", "diffusers.quantizers.torchao.torchao_quantizer", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)
