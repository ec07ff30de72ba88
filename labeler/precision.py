"""How the forward passes run: precision (`--precision`: autocast to bf16/fp16, plain fp32, or fp32 with
TF32 math) and compilation (`--compile`).

`auto` is bf16 on CUDA and fp32 elsewhere. bf16 keeps fp32's exponent range (no overflow in attention
logits, unlike fp16) and runs on tensor cores: segment-anything-fast measured SAM ViT-H at 2.8 img/s in
fp32 and 14.9 in bf16 on an A100. It rounds the model's logits to ~3 significant digits, so pixels whose
scores sit at a threshold can flip; docs/LABELERS.md records bf16 against fp32 maps per preset. On CPUs
without AMX bf16 matmuls are slower than fp32, and fp32 is what the CPU tests compare against.
Only the forward passes are affected: post-processing always runs in fp32 (or wider).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .base import LabelerLoadError, gpu_shaped

CHOICES = ("auto", "bf16", "fp16", "fp32", "tf32")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    name: str  # resolved: bf16 | fp16 | fp32 | tf32
    device_type: str  # "cuda", "cpu", ...

    def autocast(self):
        """The context the forward passes run in."""
        if self.name in _AUTOCAST:
            return torch.autocast(self.device_type, _AUTOCAST[self.name])
        return contextlib.nullcontext()


def resolve_precision(name: str, device) -> Precision:
    """`--precision` for a device -> a Precision. TF32 and fp32 set CUDA's process-wide matmul and cuDNN
    flags (a labeling process runs one labeler): fp32 turns off the TF32 convolutions PyTorch allows by
    default, so fp32 means fp32."""
    if name not in CHOICES:
        raise LabelerLoadError(f"--precision must be one of {', '.join(CHOICES)}, not {name!r}")
    device_type = torch.device(device).type
    if name == "auto":
        name = "bf16" if device_type == "cuda" else "fp32"
    if device_type == "cuda" and name in ("fp32", "tf32"):
        tf32 = name == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return Precision(name, device_type)


def run_options(cfg, device) -> dict:
    """How a labeler's models run on `device` (cfg: a LabelerConfig): post-processing's layout (`gpu`,
    from --code-path), forward precision, canvas buckets (with --compile)."""
    return {
        "gpu": gpu_shaped(cfg.code_path, device),
        "precision": resolve_precision(cfg.precision, device),
        "buckets": cfg.compile,
    }


# Distinct input shapes a compiled model may see before torch falls back to eager (torch's default is 8):
# canvas buckets x (one image, several) stay below it for every processor we support.
RECOMPILE_LIMIT = 64


def compile_model(model, backend: str = "inductor"):
    """torch.compile for fixed shapes: each canvas bucket compiles once for a single image and once for a
    batch of any size (callers mark the batch dimension dynamic: `mark_batch_dynamic`), not once per
    shape. `backend` is for tests: recompilation is decided by dynamo's guards, whatever compiles."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(model, backend=backend, dynamic=False)


def mark_batch_dynamic(*tensors) -> None:
    """Let a compiled model take these inputs at any batch size >= 2 without recompiling (size 1 is
    specialised by torch: one more compilation per shape)."""
    import torch._dynamo

    for t in tensors:
        if t is not None and t.shape[0] > 1:
            torch._dynamo.mark_dynamic(t, 0)
