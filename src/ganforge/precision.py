"""Where and in what arithmetic the training steps run: the device, the precision (fp32, bf16 or fp16
autocast, with fp16's loss scaling), the memory layout, the gradient sum over several processes, and
the optimizer the steps use.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn as nn

from ganforge.config import ConfigError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device: cuda was asked for but no CUDA GPU is visible; use --device cpu or auto."
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError(
            "train.device: mps was asked for but is not available; use --device cpu or auto."
        )
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls/convolutions run natively (else they are emulated, slowly)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(name: str, device: torch.device, points: bool = False) -> str:
    """train.precision -> fp32, bf16 or fp16 for this device (auto picks what the hardware does fast).
    `points`: an MLP on 2D points, whose small matmuls gain nothing from bf16 on a CPU and lose its
    casts, so auto keeps fp32 there. On CUDA GPUs with TF32 tensor cores (compute capability 8.0 and
    newer) auto is fp32, which runs on them as TF32 (train.tf32): for the nets this project trains,
    bf16 autocast's casts and layout changes cost more there than they save. Volta and Turing (7.x):
    fp16 on their tensor cores; older GPUs, without tensor cores: fp32. The measurements behind each
    choice are in docs/benchmarks.md ("Precision")."""
    if name == "auto":
        if device.type == "cuda":
            major = torch.cuda.get_device_capability(device)[0]
            return "fp16" if major == 7 else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() and not points else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision: fp16 autocast is for GPUs; on a CPU use bf16 (or auto).")
    if name == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        print("ganforge: note: this CPU has no native bf16 (AVX512-BF16/AMX); bf16 is emulated and may be "
              "slower than fp32.", file=sys.stderr)  # fmt: skip
    return name


def cuda_speedups(tf32: bool) -> None:
    """The CUDA backend settings of the training steps: TF32 tensor cores for fp32 matmuls and
    convolutions (train.tf32), and cuDNN's autotuner, which pays for fixed shapes. Process-wide."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


class Precision:
    """Mixed precision of the training steps: autocast for the forward passes, fp32 losses, and loss
    scaling for fp16 (a GradScaler, whose state is checkpointed)."""

    def __init__(self, name: str, device: torch.device):
        self.name, self.device_type = name, device.type
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        # channels_last (NHWC) convolutions: faster on CPUs in every precision and for GPU tensor cores
        # in bf16/fp16 (docs/benchmarks.md, "Memory layout"); plain NCHW for fp32 on GPUs
        self.memory_format = (torch.contiguous_format if name == "fp32" and device.type == "cuda"
                              else torch.channels_last)  # fmt: skip
        # several processes: averages the gradients of a list of parameters over them (Dist.sync_grads)
        self.sync: Optional[Callable[[list[nn.Parameter]], None]] = None

    def sync_grads(self, *optimizers: torch.optim.Optimizer) -> None:
        """Average the gradients of every parameter of `optimizers` over the processes (a no-op in one
        process). All of them in one sum: the simultaneous update (and the VAE's two nets) then waits for
        the other ranks once per step, the alternating update once per D and once per G update."""
        if self.sync is not None:
            self.sync([p for opt in optimizers for group in opt.param_groups for p in group["params"]])

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16 if self.name == "bf16" else torch.float16)

    def step(self, loss: torch.Tensor, *optimizers: torch.optim.Optimizer) -> None:
        """Backward and step (the gradients were zeroed by the caller)."""
        if self.scaler is None:
            loss.backward()
            self.sync_grads(*optimizers)
            for opt in optimizers:
                opt.step()
            return
        self.scaler.scale(loss).backward()
        self.sync_grads(*optimizers)  # the same scale on every rank: averaging commutes with it
        for opt in optimizers:
            self.scaler.step(opt)
        self.scaler.update()


FP32 = Precision("fp32", torch.device("cpu"))


def make_adam(module: nn.Module, lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.Adam:
    """The training steps' Adam: fused (one kernel for all parameters) on CPUs and GPUs, where the
    default per-tensor loop costs a visible share of a small model's step (docs/benchmarks.md)."""
    return torch.optim.Adam(module.parameters(), lr=lr, betas=betas, fused=device.type in ("cpu", "cuda"))
