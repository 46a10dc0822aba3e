"""The GAN training loop (seed section 3.2, done right): alternate a D step and a G step.

D step: D sees a real batch and a fake batch (detached: no gradient flows into G), and the loss is
computed on raw logits. G step: the same fakes, kept with G's graph (train.reuse_fakes; else fresh
latents and a new G forward), judged by a fresh forward of the updated D, D's parameters frozen so
no gradient is computed for them. The VAE baseline's step (vae_step) takes the place of both for
model family "vae". Read top to bottom; this module owns every side effect of a run (files, console,
signals).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ganforge.augment import make_augment
from ganforge.checkpoint import (
    CheckpointError,
    WriteError,
    atomic_write_bytes,
    load_checkpoint,
    save_checkpoint,
)
from ganforge.config import Config, ConfigError, from_dict, planned_resolution, resolve
from ganforge.data import ImageDataset, load_dataset, to_float
from ganforge.distributed import VOTE_EVERY, Dist, init_distributed, shutdown
from ganforge.ema import ema_beta, recalibrate_bn, update_ema
from ganforge.losses import LOSSES, LossPair, gaussian_kl, reconstruction_nll
from ganforge.models import MODELS, LatentCodes, build_models, is_vae, per_sample
from ganforge.monitor import HealthMonitor, all_finite, weights_finite
from ganforge.regularizers import gradient_penalty, mode_seeking_loss, r1_penalty
from ganforge.sample import save_grid, save_scatter


class TrainingStopped(RuntimeError):
    """Training ended early (interrupt or divergence); the run folder holds a resumable checkpoint."""

    def __init__(self, message: str, run_dir: Path, exit_code: int):
        super().__init__(message)
        self.run_dir = run_dir
        self.exit_code = exit_code


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
    casts (grid25 preset, 1,000 steps on 2 cores: 45 s in bf16, 38 s in fp32), so auto keeps fp32 there.
    On CUDA GPUs with TF32 tensor cores (compute capability 8.0 and newer) auto is fp32, which runs on
    them as TF32 (train.tf32): on an H200, dcgan32 (batch 64-1024) and resnet32 (batch 64) trained
    12-25 % faster so than in bf16 autocast, whose casts and layout changes cost more than they save
    on kernels this small; bf16 paid only for resnet32 at batch 256 (1.5x; docs/benchmarks.md). Volta
    and Turing (7.x): fp16 on their tensor cores; older GPUs, without tensor cores: fp32."""
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
        # channels_last (NHWC) convolutions: faster on CPUs in every precision (fp32: +24 % vs plain on
        # dcgan28-classic and dcgan32, neutral on the seed's dcgan28; docs/benchmarks.md) and for GPU
        # tensor cores in bf16/fp16; plain NCHW for fp32 on GPUs
        self.memory_format = (torch.contiguous_format if name == "fp32" and device.type == "cuda"
                              else torch.channels_last)  # fmt: skip
        # several processes: averages the gradients of a list of parameters over them (Dist.sync_grads)
        self.sync: Optional[Callable[[list[nn.Parameter]], None]] = None

    def _sync(self, *optimizers: torch.optim.Optimizer) -> None:
        # all the optimizers' gradients in one sum: the simultaneous update (and the VAE's two nets)
        # then waits for the other ranks once per step, the alternating update once per D and per G update
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
            self._sync(*optimizers)
            for opt in optimizers:
                opt.step()
            return
        self.scaler.scale(loss).backward()
        self._sync(*optimizers)  # the same scale on every rank: averaging commutes with it
        for opt in optimizers:
            self.scaler.step(opt)
        self.scaler.update()


FP32 = Precision("fp32", torch.device("cpu"))


def make_adam(module: nn.Module, lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.Adam:
    """The training steps' Adam: fused (one kernel for all parameters) on CPUs and GPUs. The default
    per-tensor loop was 7 % of a grid25 step in a profile on a 2-core CPU; 800 grid25 steps took
    18.0-19.0 s fused against 18.4-22.2 s with the loop (two alternating repetitions, 2026-11-27)."""
    return torch.optim.Adam(module.parameters(), lr=lr, betas=betas, fused=device.type in ("cpu", "cuda"))


def raised_in_torch_compile(error: BaseException) -> bool:
    """Whether `error` was raised in torch.compile's machinery (dynamo, inductor, AOT autograd) or the
    code it generated, judged by the files of its traceback."""
    marks = ("torch/_dynamo", "torch/_inductor", "torch/_functorch", "torchinductor")
    tb = error.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if any(mark in name for mark in marks):
            return True
        tb = tb.tb_next
    return False


def topk_keep(batch: int, epoch: float, floor: float, gamma: float) -> Optional[int]:
    """Top-k training's k for a G batch of `batch` fakes after `epoch` (fractional) epochs: batch *
    max(floor, gamma ** epoch), at least 1; None when nothing is dropped (reg.topk = 1)."""
    if floor >= 1.0:
        return None
    return max(1, math.ceil(batch * max(floor, gamma**epoch)))


def lr_scale(step: int, total_steps: int, schedule: str, start: float) -> float:
    """The learning-rate multiplier at `step` (0-based) of `total_steps` (optim.lr_decay, decay_start)."""
    if schedule == "none":
        return 1.0
    first = int(start * total_steps)  # the first decayed step
    return 1.0 if step < first else (total_steps - step) / (total_steps - first)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch: a function of (seed, epoch) only, so a resumed run sees the same."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def grad_norm(module: nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()


# ----------------------------------------------------------------------------------------------
# The two phases.


def d_step(
    G: nn.Module,
    D: nn.Module,
    opt_D: torch.optim.Optimizer,
    loss: LossPair,
    real_img: torch.Tensor,
    z: torch.Tensor,
    penalty: Optional[Callable[..., torch.Tensor]] = None,
    augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    c_real: Optional[torch.Tensor] = None,
    c_fake: Optional[torch.Tensor] = None,
    precision: Precision = FP32,
    fake_img: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One D update; `penalty(real_img, fake_img, c_real, c_fake)` adds a regularizer. c_real/c_fake: class
    labels for conditional models. `fake_img`: G(z, c_fake) made by the caller (to reuse in the G
    step), else made here without a graph. Returns (d_loss, real_logits, fake_logits), detached;
    d_loss excludes the penalty."""
    if fake_img is None:
        with torch.no_grad(), precision.autocast():
            fake_img = G(z, c_fake)  # no graph: G is not updated in this phase
    fake_img = fake_img.detach().float()  # [N, C, H, W]
    if augment is not None:  # DiffAugment: D only ever sees augmented images
        real_img, fake_img = augment(real_img), augment(fake_img)
    with precision.autocast():
        real_logits = D(real_img, c_real).float()  # [N]; losses in fp32
        fake_logits = D(fake_img, c_fake).float()  # [N]
    d_loss = loss.d_loss(real_logits, fake_logits)
    total = d_loss if penalty is None else d_loss + penalty(real_img, fake_img, c_real, c_fake)  # fp32
    opt_D.zero_grad(set_to_none=True)
    precision.step(total, opt_D)
    return d_loss.detach(), real_logits.detach(), fake_logits.detach()


def g_step(
    G: nn.Module,
    D: nn.Module,
    opt_G: torch.optim.Optimizer,
    loss: LossPair,
    z: torch.Tensor,
    augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    c: Optional[torch.Tensor] = None,
    precision: Precision = FP32,
    fake_img: Optional[torch.Tensor] = None,
    mode_seeking: float = 0.0,
    z_pair: Optional[torch.Tensor] = None,
    keep: Optional[int] = None,
    real_img: Optional[torch.Tensor] = None,
    c_real: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One G update through a fresh D forward (D already updated), with D's parameters frozen, so no
    gradient is computed for them. `fake_img`: the D step's G(z, c) with its graph, reused (one G
    forward per step); else G(z, c) is made here. With `mode_seeking` > 0, G(z_pair, c) is made too
    and the mode-seeking term of (z, z_pair) is added with that weight (reg.mode_seeking). `keep`:
    top-k training, the loss of the `keep` fakes with the highest logits only (reg.topk). `real_img`
    (labels `c_real`): for a paired loss (relativistic), the reals D scores, without a graph, for
    the fakes to be judged against. Returns g_loss (without the mode-seeking term)."""
    D.requires_grad_(False)
    try:  # D unfrozen again even when the step fails (a compiled step's failure is redone: see train)
        with precision.autocast():
            if fake_img is None:
                fake_img = G(z, c)
            fake_logits = D(augment(fake_img) if augment is not None else fake_img, c).float()
            pair_img = G(z_pair, c) if mode_seeking and z_pair is not None else None  # mode seeking's second fakes
            real_logits = None
            if loss.paired:
                if real_img is None:
                    raise ValueError(f"{loss.description}: G's loss needs a real batch (real_img)")
                with torch.no_grad():  # no path from the reals to G
                    real_logits = D(augment(real_img) if augment is not None else real_img, c_real).float()
        if keep is not None and keep < len(fake_logits):
            fake_logits, kept = fake_logits.topk(keep)  # the others get no gradient
            real_logits = None if real_logits is None else real_logits[kept]  # (pairs stay pairs)
        g_loss = loss.g(fake_logits, real_logits)
        total = g_loss if pair_img is None else g_loss + mode_seeking * mode_seeking_loss(fake_img, pair_img, z, z_pair)
        opt_G.zero_grad(set_to_none=True)
        precision.step(total, opt_G)
    finally:
        D.requires_grad_(True)
    return g_loss.detach()


def simultaneous_step(
    G: nn.Module,
    D: nn.Module,
    opt_G: torch.optim.Optimizer,
    opt_D: torch.optim.Optimizer,
    loss: LossPair,
    real_img: torch.Tensor,
    z: torch.Tensor,
    penalty: Optional[Callable[..., torch.Tensor]] = None,
    augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    c_real: Optional[torch.Tensor] = None,
    c_fake: Optional[torch.Tensor] = None,
    precision: Precision = FP32,
    shared_backward: Optional[bool] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Keras tutorial's update (train.update=simultaneous): one G forward and one D forward on
    the fakes serve both nets; D's gradients come from its loss, G's from its loss through the same
    (not yet updated) D; then both step. Returns (d_loss, g_loss, real_logits, fake_logits), detached.

    Shared backward (`shared_backward`; None: whenever it applies): when D scores each sample on its
    own (`per_sample`) and D's loss has a nonzero slope at every fake logit f_i (non-saturating,
    minimax, wgan), one backward through D gives both D's parameter gradients and the gradient at
    D's fake inputs, dL_D/dx_i = dL_D/df_i * df_i/dx_i; G's is the same times the per-sample ratio
    (dL_G/df_i) / (dL_D/df_i) (-exp(-f_i) for the non-saturating pair). This saves the second
    backward through D that the two-tape form makes on the fakes; the result is the same up to
    rounding (tested). Where D's slope is 0 or tiny next to G's, G's input gradient takes its own
    backward through D."""
    if shared_backward is None:
        shared_backward = loss.d_grad_nonzero and per_sample(D)
    with precision.autocast():
        fake_img = G(z, c_fake)  # [N, C, H, W], with G's graph
        real_in, fake_in = (augment(real_img), augment(fake_img)) if augment is not None else (real_img, fake_img)
        d_fake_in = fake_in.detach().requires_grad_() if shared_backward else fake_in  # D's graph only
        real_logits = D(real_in, c_real).float()
        fake_logits = D(d_fake_in, c_fake).float()
    d_loss = loss.d_loss(real_logits, fake_logits)
    g_loss = loss.g(fake_logits, real_logits.detach())
    total_d = d_loss if penalty is None else d_loss + penalty(real_in, fake_in.detach().float(), c_real, c_fake)
    d_params = [p for p in D.parameters() if p.requires_grad]
    g_params = [p for p in G.parameters() if p.requires_grad]
    if not shared_backward:
        # each loss differentiated only for its own net's parameters (two tapes, as in the tutorial)
        d_grads = torch.autograd.grad(total_d, d_params, retain_graph=True)
        g_grads = torch.autograd.grad(g_loss, g_params)
    else:
        # both losses' slopes at each fake logit: cheap, the losses' own graph only
        d_slope, g_slope = (torch.autograd.grad(x, fake_logits, retain_graph=True)[0] for x in (d_loss, g_loss))
        # the fast path only while D's slope is not tiny (|ratio| <= 2^20; for the non-saturating
        # pair: every fake logit above about -13.9): a D that rejects a fake outright makes D's own
        # input gradient underflow (bf16 kernels flush it long before fp32 would) while G's is large
        if bool((g_slope.abs() <= d_slope.abs() * 2.0**20).all()):
            *d_grads, at_input = torch.autograd.grad(total_d, [*d_params, d_fake_in])
            ratio = (g_slope / d_slope).view(-1, *([1] * (at_input.dim() - 1)))  # [N, 1, 1, 1]
            at_input = (at_input.float() * ratio).to(fake_in.dtype)
        else:  # a slope is 0 or tiny (hinge's margin, a rejected fake): G's input gradient by its own backward
            at_input = torch.autograd.grad(g_loss, d_fake_in, retain_graph=True)[0]
            d_grads = torch.autograd.grad(total_d, d_params)
        g_grads = torch.autograd.grad(fake_in, g_params, at_input)
    for p, g in [*zip(d_params, d_grads), *zip(g_params, g_grads)]:
        p.grad = g
    precision._sync(opt_D, opt_G)
    opt_D.step()
    opt_G.step()
    return d_loss.detach(), g_loss.detach(), real_logits.detach(), fake_logits.detach()


def vae_step(
    decoder: nn.Module,
    encoder: nn.Module,
    opt_dec: torch.optim.Optimizer,
    opt_enc: torch.optim.Optimizer,
    real_img: torch.Tensor,
    eps: torch.Tensor,
    likelihood: str,
    kl_weight: float = 1.0,
    c: Optional[torch.Tensor] = None,
    precision: Precision = FP32,
) -> dict[str, torch.Tensor]:
    """One VAE update (the GAN loop's D+G step for model family "vae"): minimise the negative ELBO
    with the reparameterisation z = mu + sigma * eps (Kingma & Welling 2014). Returns the batch means
    of the loss and its two terms (nats per image), detached."""
    with precision.autocast():
        mu, logvar = (t.float() for t in encoder(real_img, c))  # [N, z_dim] each
        z = mu + (0.5 * logvar).exp() * eps
        pre = decoder.pre_activation(z, c).float()
    recon = reconstruction_nll(pre, real_img, likelihood)  # [N], fp32
    kl = gaussian_kl(mu, logvar)  # [N]
    loss = (recon + kl_weight * kl).mean()
    opt_dec.zero_grad(set_to_none=True)
    opt_enc.zero_grad(set_to_none=True)
    precision.step(loss, opt_dec, opt_enc)
    return {"vae_loss": loss.detach(), "recon_nll": recon.mean().detach(), "kl": kl.mean().detach()}


# ----------------------------------------------------------------------------------------------
# Run folder side effects.


def read_log(metrics_path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a line cut short by a crash (SIGKILL mid-write) is skipped."""
    return _parse_log(metrics_path.read_text(errors="replace"))


def _parse_log(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def trim_log(metrics_path: Path, size: Optional[int]) -> int:
    """Before a resume: cut metrics.jsonl back to `size` bytes, its length when the checkpoint was
    written (what came later belongs to steps that are redone, or is a line torn by a crash). Older
    checkpoints without the length: drop only torn lines. Returns how many lines went."""
    if not metrics_path.is_file():
        return 0
    raw = metrics_path.read_bytes()
    if size is not None and len(raw) > size:
        kept = raw[:size]
    else:  # keep every complete record
        kept = "".join(json.dumps(r) + "\n" for r in _parse_log(raw.decode(errors="replace"))).encode()
    if kept == raw:
        return 0
    atomic_write_bytes(metrics_path, kept)
    return raw.count(b"\n") + (not raw.endswith(b"\n")) - kept.count(b"\n")


def plot_losses(metrics_path: Path, out_path: Path) -> None:
    """Loss curves and D's mean outputs from metrics.jsonl, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(metrics_path)
    rows = [r for r in records if "d_loss" in r or "vae_loss" in r]
    evals = [r for r in records if r.get("event") == "eval"]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3 if evals else 2, figsize=(16 if evals else 11, 4))
    ax1, ax2 = axes[0], axes[1]
    if "vae_loss" in rows[0]:  # a VAE: the negative ELBO and its two terms
        ax1.plot(steps, [r["vae_loss"] for r in rows], label="-ELBO (loss)")
        ax1.plot(steps, [r["recon_nll"] for r in rows], label="reconstruction NLL")
        ax1.set_ylabel("nats per image")
        ax2.plot(steps, [r["kl"] for r in rows], label="KL(q(z|x) || p(z))", color="C2")
        ax2.set_title("KL term")
        ax1.set_title("VAE loss")
        for ax in (ax1, ax2):
            ax.set_xlabel("step")
            ax.legend()
    else:
        _plot_gan_curves(ax1, ax2, steps, rows)
    if evals:
        axes[2].plot([r["step"] for r in evals], [r["value"] for r in evals], marker="o")
        axes[2].set_xlabel("step")
        axes[2].set_title(f"{evals[-1]['metric']} (lower is better)")
    fig.tight_layout()
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_path)


def _plot_gan_curves(ax1: Any, ax2: Any, steps: list[int], rows: list[dict[str, Any]]) -> None:
    ax1.plot(steps, [r["d_loss"] for r in rows], label="D loss")
    ax1.plot(steps, [r["g_loss"] for r in rows], label="G loss")
    ax1.set_xlabel("step")
    ax1.set_title("losses")
    ax1.legend()
    probabilities = "d_real" in rows[0]  # critics (wgan, hinge, ...) log raw scores instead
    suffix = "" if probabilities else "_score"
    ax2.plot(steps, [r["d_real" + suffix] for r in rows], label="mean D(x)")
    ax2.plot(steps, [r["d_fake" + suffix] for r in rows], label="mean D(G(z))")
    if probabilities:
        ax2.set_ylim(0, 1)
    ax2.set_xlabel("step")
    ax2.set_title("discriminator outputs" if probabilities else "critic scores")
    ax2.legend()


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes its step, saves, and stops. A second signal aborts.

    The second signal's KeyboardInterrupt is raised wherever the main thread happens to be. When that is a
    weakref callback or a `__del__`, Python would print "Exception ignored ... Traceback" and carry on;
    `sys.unraisablehook` is therefore wrapped while the flag is installed, and such an interrupt is raised
    again, silently, in the main thread's own code (`_redeliver`). `uninstall` undoes all of it."""

    requested: bool = False
    aborting: bool = False
    signal_name: str = ""
    previous: dict[int, Any] = field(default_factory=dict)
    previous_hook: Any = None
    timer: Any = None  # while a swallowed interrupt is re-delivered: the pending timer (see _later)
    sigint_before: Any = None  # ... and SIGINT's handler before `_redeliver` (None: one not set from Python)

    def install(self) -> None:
        if not _in_main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        self.previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable

    def uninstall(self) -> None:
        self._settle()
        self._restore_signals()
        if self.previous_hook is not None:
            if sys.unraisablehook == self._unraisable:  # (not if someone replaced it since)
                sys.unraisablehook = self.previous_hook
            self.previous_hook = None

    def _restore_signals(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second signal: stop at once (files are written atomically)
            self._restore_signals()
            self.aborting = True
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(
            f"\nganforge: {self.signal_name} received; finishing this step and saving a checkpoint "
            "(press Ctrl-C again to quit at once)",
            file=sys.stderr,
        )

    def _unraisable(self, unraisable: Any) -> None:
        if not (self.aborting and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            (self.previous_hook or sys.__unraisablehook__)(unraisable)
            return
        if self.timer is None and _in_main_thread():  # (a handler can be set only there)
            self.sigint_before = signal.signal(signal.SIGINT, self._redeliver)
            self._later()

    def _later(self) -> None:
        """Interrupt the main thread in a millisecond, from another thread: it takes the interrupt at its next
        bytecode boundary, after this hook has returned."""
        import _thread
        import threading

        def fire() -> None:
            if self.timer is not None:
                _thread.interrupt_main(signal.SIGINT)

        self.timer = threading.Timer(0.001, fire)
        self.timer.daemon = True
        self.timer.start()

    def _redeliver(self, signum: int, frame: Any) -> None:
        hook = StopFlag._unraisable.__code__
        while frame is not None and frame.f_code is not hook:
            frame = frame.f_back
        if frame is not None:  # still inside the hook, where it would be swallowed again: a little later
            self._later()
            return
        self._settle()
        raise KeyboardInterrupt

    def _settle(self) -> None:
        """Cancel a pending re-delivery and give SIGINT back the handler it had before it."""
        if self.timer is None:
            return
        timer, self.timer = self.timer, None
        timer.cancel()
        if signal.getsignal(signal.SIGINT) == self._redeliver and self.sigint_before is not None:
            signal.signal(signal.SIGINT, self.sigint_before)


class LoopGarbageCollector:
    """Python's cyclic garbage collector, run by the training loop itself: every EVERY steps, at the same
    step on every rank, instead of whenever allocations trip its thresholds. With several processes in
    lockstep, an automatic collection pauses one rank at a moment of its own and every other rank waits
    for it at the next gradient sum (2 processes on 2 cores, dcgan28-classic, batch 64 each: median img/s
    2,507 -> 2,611 with the collector off, 3 runs each). The objects made before the loop (modules,
    data, imports) are frozen out of its scans, so a collection looks at the loop's own objects only.
    The loop leaves few cycles (about 4 unreachable objects per step, measured), so collecting
    every EVERY steps holds little memory back. `close` restores the collector as it was."""

    EVERY = 200

    def __init__(self) -> None:
        self.was_enabled = gc.isenabled()
        self.freezes = gc.get_freeze_count() == 0  # a caller's own freeze (e.g. a pre-fork server) is left alone
        gc.collect()
        if self.freezes:
            gc.freeze()
        gc.disable()

    def step(self, step: int) -> None:
        if step % self.EVERY == 0:
            gc.collect()

    def close(self) -> None:
        if self.freezes:
            gc.unfreeze()  # objects made before the loop that became garbage during it: collected from here on
        if self.was_enabled:
            gc.enable()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _new_run_dir(cfg: Config) -> Path:
    name = (
        cfg.run.name
        or f"{cfg.data.name.split(':')[0]}-{cfg.model.name}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    run_dir = Path(cfg.run.runs_dir) / name
    if (run_dir / "checkpoints").exists():
        raise ConfigError(
            f"run.name: the run folder '{run_dir}' already holds a run; continue it with "
            f"'ganforge train --resume {run_dir}', or pick another --name."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")  # a read-only folder fails here, before any training time is spent
        probe.unlink()
    except OSError as e:
        raise WriteError(
            f"cannot create the run folder '{run_dir}': {e.strerror or e}. Choose a writable folder with "
            "--runs-dir (or run.runs_dir)."
        ) from None
    return run_dir


def _load_data(cfg: Config) -> ImageDataset:
    d = cfg.data
    return load_dataset(
        d.name,
        root=d.root,
        split=d.split,
        resolution=planned_resolution(cfg),
        channels=d.channels,
        strict=d.strict,
        download=d.download,
        limit=d.limit,
    )


def prepare(cfg: Config) -> tuple[Config, ImageDataset]:
    """Load the data and resolve the config against it (no files written): what --dry-run shows."""
    ds = _load_data(cfg)
    return resolve(cfg, ds.name, ds.images.shape[1], len(ds), ds.is_points, ds.num_classes), ds


class InTrainingEval:
    """Domain FID of a few thousand samples against the dataset's test split, for --eval-every."""

    def __init__(self, cfg: Config, dataset: str, device: torch.device):
        from ganforge.metrics.features import EXTRACTOR_FOR_DATASET, extract, load_domain_extractor

        name = EXTRACTOR_FOR_DATASET[dataset]
        self.extractor = load_domain_extractor(name)
        d = cfg.data
        ref = load_dataset(dataset, root=d.root, split="test", resolution=d.resolution, channels=d.channels,
                           download=d.download)  # fmt: skip
        self.n = cfg.train.eval_n
        self.ref_features = extract(self.extractor, ref.images[: self.n])[0]
        self.metric = f"fid_{name}_{self.n}gen_vs_{min(self.n, len(ref))}test"
        self.z = torch.randn(
            self.n, cfg.model.z_dim, generator=torch.Generator().manual_seed(cfg.train.seed + 3)
        )
        nc = cfg.model.num_classes if cfg.model.conditional else None
        self.c = torch.arange(self.n) % nc if nc else None  # balanced classes
        self.device = device

    def __call__(self, G: nn.Module) -> float:
        from ganforge.metrics.evaluate import generated_features
        from ganforge.metrics.fidelity import fid

        feats = generated_features(G, self.z, self.extractor, self.device, c=self.c)[0]
        return fid(feats, self.ref_features)


# ----------------------------------------------------------------------------------------------
# The loop.


def _check_distributed(cfg: Config, dist: Dist) -> None:
    """What several processes cannot do, said before any work."""
    t = cfg.train
    if t.sync_bn and not (dist.enabled and t.device.startswith("cuda")):
        raise ConfigError("train.sync_bn needs several processes on CUDA GPUs (torchrun --nproc-per-node N, "
                          "or ganforge train --nproc N); leave it off otherwise.")  # fmt: skip
    if not dist.enabled:
        return
    if t.batch_size % dist.world:
        raise ConfigError(f"train.batch_size ({t.batch_size}) is the global batch and must split evenly over the "
                          f"{dist.world} processes; use a multiple of {dist.world}.")  # fmt: skip
    if (t.batch_size // dist.world) % cfg.model.pack:
        raise ConfigError(f"model.pack={cfg.model.pack}: each process's share of the batch ({t.batch_size // dist.world}) "
                          f"must be a multiple of it; use a batch size that is a multiple of "
                          f"{dist.world * cfg.model.pack}.")  # fmt: skip
    if cfg.monitor.every and cfg.monitor.on_collapse == "rollback" and not dist.one_machine:
        # every rank reloads rank 0's checkpoints/healthy.pt, which only this node's file system holds
        raise ConfigError("monitor.on_collapse=rollback works with several processes on one machine, not across "
                          "machines yet; use warn or stop (a stopped run resumes with --resume).")  # fmt: skip


def train(
    cfg: Optional[Config] = None,
    resume: Optional[str | Path] = None,
    overrides: Optional[dict[str, Any]] = None,
    progress: bool = True,
    resume_from: Optional[str] = None,
) -> Path:
    """Train a GAN; returns the run folder. With `resume`, continue that run exactly where it stopped
    (or from its checkpoint `resume_from`, e.g. "healthy.pt", when last.pt is damaged).

    `overrides` (resume only) may change the length of the run: {"train": {"steps": 2000}}.
    """
    try:
        return _train(cfg, resume, overrides, progress, resume_from)
    finally:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a job torchrun started: leave it cleanly
            shutdown()


def _train(
    cfg: Optional[Config] = None,
    resume: Optional[str | Path] = None,
    overrides: Optional[dict[str, Any]] = None,
    progress: bool = True,
    resume_from: Optional[str] = None,
) -> Path:
    """The body of `train`."""
    ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        ckpt_path = run_dir / "checkpoints" / Path(resume_from or "last.pt").name
        if not ckpt_path.is_file():
            raise CheckpointError(
                f"cannot resume '{run_dir}': no checkpoints/{ckpt_path.name} there. Is it a ganforge run folder?"
            )
        ckpt = load_checkpoint(ckpt_path)
        cfg = from_dict(ckpt["config"])
        if overrides:
            allowed = {
                "train": {
                    "steps",
                    "epochs",
                    "log_every",
                    "sample_every",
                    "checkpoint_every",
                    "eval_every",
                    "device",
                    "precision",
                    "compile",
                    "time_limit",
                }
            }
            for section, values in overrides.items():
                bad = set(values) - allowed.get(section, set())
                if bad:
                    raise ConfigError(
                        f"cannot change {', '.join(f'{section}.{k}' for k in sorted(bad))} when resuming; "
                        "only train.steps, train.epochs, train.time_limit, the cadences, train.device, "
                        "train.precision and train.compile may change."
                    )
            old_length = (cfg.train.steps, cfg.train.epochs)
            cfg = from_dict(
                {**cfg.to_dict(), "train": {**cfg.to_dict()["train"], **overrides.get("train", {})}}
            )
            if cfg.optim.lr_decay != "none" and (cfg.train.steps, cfg.train.epochs) != old_length:
                print(f"ganforge: note: optim.lr_decay={cfg.optim.lr_decay} follows the new length of the run, "
                      "so the learning rates jump to that schedule's value at the resumed step.",
                      file=sys.stderr)  # fmt: skip
        dist = init_distributed(pick_device(cfg.train.device))
        _check_distributed(cfg, dist)
        with dist.main_first():  # a download happens once, by rank 0
            ds = _load_data(cfg)
        if len(ds) != ckpt["dataset"]["n"]:
            raise ConfigError(
                f"cannot resume '{run_dir}': it was trained on {ckpt['dataset']['n']} images of "
                f"'{cfg.data.name}', but {len(ds)} were found now; the data changed."
            )
    else:
        cfg = cfg or Config()
        dist = init_distributed(pick_device(cfg.train.device))  # the device check fails before a run folder
        _check_distributed(cfg, dist)
        with dist.main_first():  # a download happens once, by rank 0
            cfg, ds = prepare(cfg)
        run_dir = dist.broadcast(_new_run_dir(cfg) if dist.main else None)  # rank 0 names it for all
    main = dist.main  # only rank 0 writes files and prints

    def say(*args: Any, **kwargs: Any) -> None:
        if main:
            print(*args, **kwargs)

    def save(path: Path, make: Callable[[], dict[str, Any]]) -> None:
        if main:
            save_checkpoint(path, make())

    def plot() -> None:
        if main:
            plot_losses(metrics_path, run_dir / "losses.png")

    if main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())

    t = cfg.train
    device = pick_device(t.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    torch.manual_seed(t.seed)  # weights; dropout masks use the same global generator afterwards
    m = cfg.model
    # the classes D and the real batches carry: a conditional model's, or model.clusters' pseudo-classes; g_nc:
    # the classes the loop asks G for by label (with clusters G picks its cluster from z: see ClusterPrior)
    nc = (m.num_classes or 0) if m.conditional else m.clusters
    g_nc = 0 if m.clusters else nc
    G, D = build_models(
        m.name,
        m.z_dim,
        m.channels,
        m.g_channels,
        m.d_channels,
        m.dropout,
        spectral_norm=m.spectral_norm,
        pack=m.pack,
        num_classes=g_nc,
        mbstd=m.mbstd,
        latent_codes=m.latent_codes,
        clusters=m.clusters,
    )
    cluster_labels, cluster_seconds = None, 0.0
    if m.clusters and ckpt is not None:  # a resume: the clusters the run was trained with, from its checkpoint
        cluster_labels = ckpt["cluster_labels"].long()
    elif m.clusters:  # the same clusters on every rank: rank 0 computes, all receive
        from ganforge.clusters import kmeans

        found = None
        if main:
            found = kmeans(ds.images, m.clusters, seed=t.seed)
            say(f"ganforge: {m.clusters} k-means clusters of the training images in {found.seconds:.1f} s "
                f"({found.iterations} rounds; shares {float(found.prior.min()):.4f}-{float(found.prior.max()):.4f})")
        cluster_labels = dist.broadcast(found.labels if found is not None else None)
        cluster_seconds = float(dist.broadcast(found.seconds if found is not None else None))
    if cluster_labels is not None:
        from ganforge.clusters import shares

        G.set_prior(shares(cluster_labels, m.clusters))
    precision = Precision(resolve_precision(t.precision, device, points=MODELS[m.name].resolution == 0), device)
    if device.type == "cuda":
        cuda_speedups(t.tf32)
    if t.update == "simultaneous" and precision.scaler is not None:
        raise ConfigError("train.update: the simultaneous update has no fp16 loss scaling; use bf16 or fp32.")
    G = G.to(device, memory_format=precision.memory_format)
    D = D.to(device, memory_format=precision.memory_format)
    if dist.enabled:
        dist.broadcast_module(G)  # one starting point (the same seed gives it already; this makes sure)
        dist.broadcast_module(D)
        precision.sync = dist.sync_grads
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if t.ema_beta is not None else None
    if t.sync_bn:  # after G_ema's copy: rank 0 alone runs G_ema (grids, BN recalibration), so plain BN there
        G, D = nn.SyncBatchNorm.convert_sync_batchnorm(G), nn.SyncBatchNorm.convert_sync_batchnorm(D)
    # the modules the training steps call: compiled (sharing G's and D's parameters) with train.compile
    G_run, D_run = (torch.compile(G), torch.compile(D)) if t.compile else (G, D)
    opt_G = make_adam(G, cfg.optim.g_lr, (cfg.optim.beta1, cfg.optim.beta2), device)
    opt_D = make_adam(D, cfg.optim.d_lr, (cfg.optim.beta1, cfg.optim.beta2), device)
    for opt in (opt_G, opt_D):  # the rates the schedule scales (a rollback lowers these)
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    vae = is_vae(m.name)  # a VAE baseline: same loop, run folder and files; vae_step replaces the game
    loss = None if vae else LOSSES[cfg.loss.name]
    noise = torch.Generator().manual_seed(t.seed + 1)  # training latents, drawn on the CPU
    fixed_z = torch.randn(t.n_samples, m.z_dim, generator=torch.Generator().manual_seed(t.seed + 2))
    fixed_c = torch.arange(t.n_samples) % g_nc if g_nc else None  # grid column k shows class k

    step, nimg, rollbacks = 0, 0, 0
    best = math.inf  # best in-training eval value so far (lower is better)

    def restore(saved: dict[str, Any]) -> None:
        """Load a checkpoint's state into the live objects (resume and rollback)."""
        nonlocal step, nimg, best, rollbacks
        best = saved.get("best_eval", math.inf)
        G.load_state_dict(saved["G"])
        D.load_state_dict(saved["D"])
        if G_ema is not None:
            G_ema.load_state_dict(saved["G_ema"])
        opt_G.load_state_dict(saved["opt_G"])
        opt_D.load_state_dict(saved["opt_D"])
        for opt in (opt_G, opt_D):
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])  # checkpoints from before the schedule existed
                group["fused"] = opt.defaults["fused"]  # this run's Adam kernel, not the saved one (an older
                # checkpoint's non-fused groups in a fused optimizer would trip fp16's GradScaler)
        step, nimg, rollbacks = saved["step"], saved["nimg"], saved.get("rollbacks", 0)
        if precision.scaler is not None and "scaler" in saved:
            precision.scaler.load_state_dict(saved["scaler"])
        noise.set_state(saved["rng"]["noise"])
        torch.set_rng_state(saved["rng"]["torch"])
        if device.type == "cuda" and saved["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])

    # training wall time over all sessions of the run (the cost `ganforge compare` reports)
    clock_base, clock_start = 0.0, time.perf_counter() - cluster_seconds
    if ckpt is not None:
        restore(ckpt)
        clock_base = ckpt.get("train_seconds")  # None: a checkpoint from before it was recorded

    images = ds.images.to(device)  # uint8 [N, C, H, W] decoded once (float [N, D] for points)
    labels = (ds.labels if cluster_labels is None else cluster_labels).to(device)
    n, batch = images.shape[0], t.batch_size
    batches_per_epoch = n // batch  # the incomplete last batch of an epoch is dropped
    # a step = n_critic D updates (each on a fresh real batch) + one G update
    total_steps = t.epochs * batches_per_epoch // t.n_critic if t.epochs is not None else t.steps
    ckpt_dir, sample_dir = run_dir / "checkpoints", run_dir / "samples"
    sample_dir.mkdir(exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    if ckpt is not None and main:  # after a crash: the log and temp files may hold what the checkpoint does not
        dropped = trim_log(metrics_path, ckpt.get("log_bytes"))
        for stale in [*run_dir.glob(".*.tmp-*"), *ckpt_dir.glob(".*.tmp-*")]:  # writers killed mid-write
            stale.unlink(missing_ok=True)
        if dropped:
            say(f"ganforge: resuming from step {step}; {dropped} log line(s) written after that checkpoint "
                  "were dropped (those steps are redone)", file=sys.stderr)  # fmt: skip

    ema_stale = True  # G_ema's BN statistics do not match its weights (after an update or a restore)
    # how many latents G_ema's BN statistics are averaged over. 2D points need them precise (grid25's clusters
    # have std 0.05 on a span of 8: from 2,048 latents one seed's G_ema gave 73.7 % high-quality samples with
    # one draw and 94.6 % with another, from 100,000 latents 99.6 %), and a point G costs next to nothing to run
    recalibration = dict(batches=40, batch_size=2500) if MODELS[m.name].resolution == 0 else dict(batch_size=max(batch, 64))

    def G_show() -> nn.Module:
        """The generator to sample from: G_ema (its BN statistics recomputed once per change) when
        kept, else G."""
        nonlocal ema_stale
        if G_ema is None:
            return G
        if ema_stale:
            recalibrate_bn(G_ema, m.z_dim, device, g_nc, seed=t.seed + 5, **recalibration)
            ema_stale = False
        return G_ema

    def state() -> dict[str, Any]:
        if G_ema is not None:
            G_show()  # the checkpoint's G_ema carries statistics that match its weights
        rng = {"torch": torch.get_rng_state(), "noise": noise.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "G": G.state_dict(),
            "D": D.state_dict(),
            **({"G_ema": G_ema.state_dict()} if G_ema is not None else {}),
            "opt_G": opt_G.state_dict(),
            "opt_D": opt_D.state_dict(),
            **({"scaler": precision.scaler.state_dict()} if precision.scaler is not None else {}),
            "step": step,
            "nimg": nimg,
            "rng": rng,
            "config": cfg.to_dict(),
            "dataset": {"name": ds.name, "n": n, "source": ds.source},
            # model.clusters: each image's cluster, so that a resume conditions on the very same ones
            **({"cluster_labels": cluster_labels.to(torch.int16 if m.clusters < 2**15 else torch.int32)}
               if cluster_labels is not None else {}),  # fmt: skip
            "best_eval": best,
            "rollbacks": rollbacks,
            "train_seconds": None if clock_base is None else clock_base + time.perf_counter() - clock_start,
            "log_bytes": metrics_path.stat().st_size if metrics_path.is_file() else 0,
        }

    def write_grid() -> Optional[Path]:
        if not main:
            return None
        G_s = G_show()
        G_s.eval()
        with torch.no_grad():
            fake = G_s(fixed_z.to(device), None if fixed_c is None else fixed_c.to(device))
        fake = fake.float().cpu()
        G.train()
        path = sample_dir / f"step_{step:07d}.png"
        if ds.is_points:
            save_scatter(fake, path, images[: len(fake)].cpu(), f"step {step}")
        else:
            save_grid(fake, path, g_nc if 0 < g_nc <= 16 else None)
        atomic_write_bytes(run_dir / "samples.png", path.read_bytes())  # always the newest, drawn once
        return path

    evaluator = InTrainingEval(cfg, ds.name, device) if t.eval_every else None

    def log(record: dict[str, Any]) -> None:
        if not main:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    reg = cfg.reg
    augment = make_augment(reg.diffaugment, noise)  # draws from the saved latent generator

    def penalty(d_iter: int) -> Optional[Callable[..., torch.Tensor]]:
        """The regularizers due at this D update, as one function of (real_img, fake_img, c_real, c_fake)."""
        use_gp = reg.gp_weight > 0
        lazy = d_iter % reg.r1_interval == 0
        use_r1, use_r2 = reg.r1_gamma > 0 and lazy, reg.r2_gamma > 0 and lazy
        if not (use_gp or use_r1 or use_r2):
            return None

        def total(real_img: torch.Tensor, fake_img: torch.Tensor, c: Optional[torch.Tensor],
                  c_fake: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
            D_c = lambda x: D(x, c)  # noqa: E731  (conditional D judges with the real labels)
            out = torch.zeros((), device=real_img.device)
            if use_gp:
                # eps for the interpolates comes from the saved latent generator: exact resume
                out = out + reg.gp_weight * gradient_penalty(D_c, real_img, fake_img, noise).mean()
            if use_r1:  # lazy: every r1_interval updates, weighted by the interval
                out = out + 0.5 * reg.r1_gamma * reg.r1_interval * r1_penalty(D_c, real_img).mean()
            if use_r2:  # the same penalty on the fakes (R2), with their own labels
                D_f = lambda x: D(x, c_fake)  # noqa: E731
                out = out + 0.5 * reg.r2_gamma * reg.r1_interval * r1_penalty(D_f, fake_img).mean()
            return out

        return total

    mon = cfg.monitor
    monitor = None
    if mon.every:
        mon_gen = torch.Generator().manual_seed(t.seed + 4)
        mon_z = torch.randn(mon.n, m.z_dim, generator=mon_gen)
        monitor = HealthMonitor(mon, ds, mon_z, torch.arange(mon.n) % g_nc if g_nc else None)
    healthy_path = ckpt_dir / "healthy.pt"

    class Rollback(Exception):
        pass

    def set_rates() -> None:
        """Each learning rate = its base rate (the config's, lowered by rollbacks) x the schedule at `step`."""
        scale = lr_scale(step, total_steps, cfg.optim.lr_decay, cfg.optim.decay_start)
        for opt in (opt_G, opt_D):
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale

    def handle_event(kind: str, reasons: list[str]) -> None:
        """Log a collapse/divergence event and apply monitor.on_collapse. Raises Rollback after
        restoring the last healthy state, or TrainingStopped."""
        nonlocal rollbacks, ema_stale
        policy = mon.on_collapse
        if kind == "divergence" and policy == "warn":
            policy = "stop"  # training cannot go on from NaN weights
        if policy == "rollback" and rollbacks >= mon.max_rollbacks:
            policy, reasons = "stop", [*reasons, f"already rolled back {rollbacks} times (monitor.max_rollbacks)"]
        if policy == "rollback" and not healthy_path.is_file():
            policy, reasons = "stop", [*reasons, "no healthy checkpoint to roll back to yet"]
        log({"event": kind, "step": step, "reasons": reasons, "action": policy})
        say(f"\nganforge: {kind} at step {step}: {'; '.join(reasons)} -> {policy}", file=sys.stderr)
        if policy == "warn":
            return
        if policy == "rollback":
            from_step, count = step, rollbacks + 1
            bases = [[g["base_lr"] for g in opt.param_groups] for opt in (opt_G, opt_D)]  # before the restore
            restore(load_checkpoint(healthy_path))
            ema_stale = True
            rollbacks = count  # the restored state's own count is older
            lowered = (True, True) if mon.rollback_lr == "both" else (False, True)
            for opt, old, lower in zip((opt_G, opt_D), bases, lowered):
                for group, base in zip(opt.param_groups, old):  # compounding over repeated rollbacks
                    group["base_lr"] = base * mon.lr_factor if lower else base
            set_rates()  # the restored step's rates, logged below
            record = {"event": "rollback", "from_step": from_step, "to_step": step, "rollbacks": rollbacks,
                      "g_lr": opt_G.param_groups[0]["lr"], "d_lr": opt_D.param_groups[0]["lr"]}  # fmt: skip
            log(record)
            say(f"ganforge: rolled back to step {step} (checkpoints/healthy.pt); learning rates now "
                  f"G {record['g_lr']:.3g}, D {record['d_lr']:.3g}", file=sys.stderr)  # fmt: skip
            raise Rollback
        if kind == "collapse":  # the weights are valid: keep them for inspection and resume
            save(ckpt_dir / "last.pt", state)
        hint = ("try --set monitor.on_collapse=rollback, a lower learning rate, or a stabiliser "
                "(model.spectral_norm, reg.r1_gamma, model.pack; see `ganforge presets`)")  # fmt: skip
        raise TrainingStopped(
            f"{kind} at step {step}: {'; '.join(reasons)}. "
            + ("The weights are not finite and were not saved. " if kind == "divergence" else "")
            + f"Last healthy state: {healthy_path if healthy_path.is_file() else 'none saved yet'}. "
            + f"Resume with: ganforge train --resume {run_dir}; {hint}.",
            run_dir,
            3,
        )

    say(
        f"ganforge: training {m.name} on {ds.name} ({n} {'points' if ds.is_points else 'images'} "
        f"{tuple(ds.images.shape[1:])}) on {device}{'' if precision.name == 'fp32' else f' ({precision.name})'}; "
        f"{total_steps} steps of {batch}"
        + (f" (global batch: {dist.world} processes x {batch // dist.world}, {dist.backend}"
           f"{' + shared memory' if dist.shared_memory else ''})" if dist.enabled else "")
        + f" -> {run_dir}",
        file=sys.stderr,
    )
    where = {"device": str(device), "precision": precision.name, "processes": dist.world,
             "batch_per_process": batch // dist.world, "global_batch": batch}  # fmt: skip
    if step == 0:
        write_grid()
        log({"event": "start", "step": 0, "dataset": ds.name, "n_images": n, **where})
        if monitor is not None:
            save(healthy_path, state)  # the initial state is the first rollback target
    else:
        log({"event": "resume", "step": step, "nimg": nimg, **where})

    bar = None
    if progress and main:
        from tqdm import tqdm

        bar = tqdm(
            total=total_steps * batch,
            initial=step * batch,
            unit="img",
            unit_scale=True,
            dynamic_ncols=True,
            mininterval=1.0,
            file=sys.stderr,
        )
    # D's mean output: a probability for probabilistic losses, the raw score for critics
    probabilistic = loss is not None and loss.probabilistic
    real_key, fake_key = ("d_real", "d_fake") if probabilistic else ("d_real_score", "d_fake_score")
    d_output = torch.sigmoid if probabilistic else torch.Tensor.float  # .float(): identity here
    norm_keys = ("enc_grad_norm", "dec_grad_norm") if vae else ("d_grad_norm", "g_grad_norm")
    sums: dict[str, Any] = {}  # running sums of this log window's per-step statistics
    window_steps, window_start = 0, time.perf_counter()
    order_epoch, order = -1, None

    def draw_z() -> torch.Tensor:
        """This rank's latents [batch / processes, z_dim], drawn for the whole global batch."""
        return dist.shard(torch.randn(batch, m.z_dim, generator=noise)).to(device)

    def draw_c(z: torch.Tensor) -> Optional[torch.Tensor]:
        """This rank's class labels for the fakes of a conditional model, drawn like draw_z; with
        model.clusters the clusters G picks for latents z."""
        if m.clusters:
            return G.cluster_of(z)
        return dist.shard(torch.randint(nc, (batch,), generator=noise)).to(device) if nc else None

    def pair_of(z: torch.Tensor) -> Optional[torch.Tensor]:
        """reg.mode_seeking's second latents: fresh noise with z's latent code (the class is shared by
        passing the same labels); None when the term is off."""
        if not cfg.reg.mode_seeking:
            return None
        fresh = draw_z()
        return G.same_code(z, fresh) if isinstance(G, LatentCodes) else fresh

    def real_batch(b: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The b-th real batch of the run (and its labels for a conditional model)."""
        nonlocal order_epoch, order
        epoch, i = divmod(b, batches_per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(t.seed, epoch, n).to(device)
        idx = dist.shard(order[i * batch : (i + 1) * batch])  # this rank's part of the global batch
        real_img = to_float(images[idx])
        if real_img.dim() == 4:  # channels_last below fp32, to match the models
            real_img = real_img.contiguous(memory_format=precision.memory_format)
        return real_img, (labels[idx] if nc else None)

    G.train()
    D.train()
    # the clustering counts as training time (train.time_limit, train_seconds): it is part of what the run costs
    t_start, out_of_time, interrupted = time.perf_counter() - cluster_seconds, False, False
    unvoted_nan = False  # a rank's NaN loss since the ranks last voted (several processes)
    collector = LoopGarbageCollector()
    stop = StopFlag()
    stop.install()
    try:
        while step < total_steps:
            if interrupted or out_of_time:  # decided at the end of the last step, the same on every rank
                out_of_time = out_of_time and not interrupted
                break
            stepping = True  # in the training step proper (the compile fallback below applies to it alone)
            try:
                set_rates()
                log_now = (step + 1) % t.log_every == 0 or step + 1 == total_steps
                check_now = monitor is not None and (step + 1) % mon.every == 0
                real_logits = fake_logits = None
                if vae:  # encoder in D's place, decoder in G's
                    real_img, c_real = real_batch(step)
                    eps = draw_z()  # the reparameterisation noise
                    stats = vae_step(G_run, D_run, opt_G, opt_D, real_img, eps, cfg.loss.likelihood,
                                     cfg.loss.kl_weight, c_real, precision)  # fmt: skip
                elif t.update == "simultaneous":
                    real_img, c_real = real_batch(step)
                    z_d = draw_z()
                    c_fake = draw_c(z_d)
                    d_loss, g_loss, real_logits, fake_logits = simultaneous_step(
                        G_run, D_run, opt_G, opt_D, loss, real_img, z_d, penalty(step), augment, c_real, c_fake,
                        precision)  # fmt: skip
                else:
                    fakes = None  # the last D update's fakes, with G's graph, when the G step reuses them
                    for k in range(t.n_critic):
                        b = step * t.n_critic + k  # global index of this real batch (and of this D update)
                        real_img, c_real = real_batch(b)
                        z_d = draw_z()
                        c_fake = draw_c(z_d)
                        if t.reuse_fakes and k == t.n_critic - 1:
                            with precision.autocast():
                                fakes = G_run(z_d, c_fake)
                        d_loss, real_logits, fake_logits = d_step(
                            G_run, D_run, opt_D, loss, real_img, z_d, penalty(b), augment, c_real, c_fake, precision,
                            fake_img=fakes,
                        )  # fmt: skip
                    if fakes is not None:  # one G forward per step (pytorch/examples' DCGAN does the same)
                        z_g, c_g = z_d, c_fake
                    else:
                        z_g = draw_z()
                        c_g = draw_c(z_g)
                    keep = topk_keep(len(z_g) // m.pack, nimg / n, cfg.reg.topk, cfg.reg.topk_gamma)
                    g_loss = g_step(G_run, D_run, opt_G, loss, z_g, augment, c_g, precision, fake_img=fakes,
                                    mode_seeking=cfg.reg.mode_seeking, z_pair=pair_of(z_g), keep=keep,
                                    real_img=real_img, c_real=c_real)  # fmt: skip
                    del fakes
                stepping = False
                # D's (or the encoder's) gradients of this step: the G step computes none for D
                d_norm = grad_norm(D) if log_now or check_now else None
                if not vae:
                    stats = {"d_loss": d_loss, "g_loss": g_loss, real_key: d_output(real_logits).mean(),
                             fake_key: d_output(fake_logits).mean()}  # fmt: skip
                if G_ema is not None:
                    update_ema(G_ema, G, ema_beta(t.ema_beta, step))
                    ema_stale = True
                g_norm = grad_norm(G) if log_now or check_now else None
                step += 1
                nimg += batch * t.n_critic

                # divergence is caught the step it happens, before a checkpoint could store it
                # a NaN loss, a signal, the clock: with several processes, the ranks vote every VOTE_EVERY
                # steps and the last step (each vote waits for the slowest rank), so all stop at one step.
                # The weights are the same on every rank: their check needs no vote.
                seen = (not all_finite(*stats.values()), stop.requested,
                        t.time_limit is not None and time.perf_counter() - t_start >= t.time_limit)  # fmt: skip
                if dist.enabled:
                    unvoted_nan = unvoted_nan or seen[0]
                    bad_stats = interrupted = out_of_time = False
                    if step % VOTE_EVERY == 0 or step == total_steps:
                        bad_stats, interrupted, out_of_time = dist.any(unvoted_nan, *seen[1:])
                        unvoted_nan = False
                else:
                    bad_stats, interrupted, out_of_time = seen
                if bad_stats or not weights_finite(G, D):
                    bad = [key for key, v in stats.items() if not all_finite(v)]
                    names = ("encoder", "decoder") if vae else ("D", "G")
                    bad += [f"{name} weights" for name, mod in zip(names, (D, G)) if not weights_finite(mod)]
                    handle_event("divergence", [f"{', '.join(bad)} became NaN/Inf" if bad
                                                else "a loss became NaN/Inf in another process"])  # fmt: skip

                if check_now:
                    collapsed, reasons = False, ["rank 0's health monitor flagged a collapse"]
                    if main:  # rank 0's monitor decides for every rank
                        record = monitor.check(G_show(), step, real_logits, fake_logits, device)
                        record.update({norm_keys[0]: d_norm, norm_keys[1]: g_norm})
                        log(record)
                        collapsed, reasons = monitor.collapse_due(record), record["reasons"]
                        if not collapsed and record["healthy"]:  # the rollback target: the last check that passed
                            save(healthy_path, state)
                    if dist.any(collapsed)[0]:
                        handle_event("collapse", reasons)
            except Rollback:
                sums = {}
                window_steps, window_start = 0, time.perf_counter()
                order_epoch = -1
                if monitor is not None:
                    monitor.unhealthy_streak = 0
                if bar is not None:
                    bar.reset(total=total_steps * batch)
                    bar.update(step * batch)
                continue
            except Exception as error:
                # torch.compile can fail inside PyTorch on a model it should handle (on an H200 with torch 2.11,
                # dcgan32 in bf16 hit a stride assertion in inductor's convolution backward: docs/benchmarks.md).
                # One process: redo the step (the D and G updates, before the step counter moves) with the plain
                # modules and go on without compiling; if the plain step fails too, that error is the run's own
                # and stops it. The failed step may have updated D already (its D updates ran before the G step
                # failed): up to n_critic extra D updates, and the latents drawn for it are skipped, so the run
                # is no longer the same as an uncompiled one; no work is lost.
                compiled = G_run is not G or D_run is not D  # until a failure below swaps in the plain modules
                if not (compiled and stepping) or isinstance(error, (TrainingStopped, ConfigError)):
                    raise
                first = str(error).strip().splitlines()
                reason = type(error).__name__ + (f": {first[0][:300]}" if first else "")
                if dist.enabled:  # the ranks cannot fall back together mid-step
                    if not raised_in_torch_compile(error):
                        raise
                    raise ConfigError(f"train.compile: the compiled step failed inside torch.compile at step {step} "
                                      f"({reason}); several processes cannot fall back together mid-step: run "
                                      "again without --compile (train.compile=false).") from error  # fmt: skip
                G_run, D_run = G, D  # (g_step leaves D trainable even when it fails)
                log({"event": "compile_failed", "step": step, "error": reason, "action": "eager"})
                say(f"\nganforge: the compiled step failed at step {step} ({reason}); redoing it with the plain modules, "
                    "and the run goes on without compiling (as with train.compile=false).", file=sys.stderr)  # fmt: skip
                continue

            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
            window_steps += 1
            if bar is not None:
                bar.update(batch)

            if log_now:
                elapsed = time.perf_counter() - window_start
                # the statistics of the whole global batch: each rank's averaged over the ranks
                record = dict(zip(sums, dist.mean([float(v) / window_steps for v in sums.values()])))
                log(
                    {
                        "step": step,
                        "epoch": step * t.n_critic / batches_per_epoch,
                        "nimg": nimg,
                        **record,
                        norm_keys[0]: d_norm,
                        norm_keys[1]: g_norm,
                        "img_per_s": window_steps * batch / max(elapsed, 1e-9),
                        # the rates of the last step (after lr decay and rollbacks)
                        "g_lr": opt_G.param_groups[0]["lr"],
                        "d_lr": opt_D.param_groups[0]["lr"],
                        "time": time.time(),
                    }
                )
                if bar is not None:  # d_loss and g_loss, or the VAE's loss and reconstruction term
                    bar.set_postfix({k: f"{record[k]:.3f}" for k in list(record)[:2]}, refresh=False)
                sums = {}
                window_steps, window_start = 0, time.perf_counter()

            epoch_end = (step * t.n_critic) // batches_per_epoch != (
                (step - 1) * t.n_critic
            ) // batches_per_epoch
            if (t.sample_every and step % t.sample_every == 0) or (
                not t.sample_every and epoch_end
            ):
                write_grid()
                plot()
            if main and (step % t.checkpoint_every == 0 or epoch_end):
                saved = state()
                save_checkpoint(ckpt_dir / "last.pt", saved)
                if t.keep_checkpoints:  # plus the K newest step snapshots, the older ones pruned
                    save_checkpoint(ckpt_dir / f"step_{step:07d}.pt", saved)
                    for old in sorted(ckpt_dir.glob("step_*.pt"))[: -t.keep_checkpoints]:
                        old.unlink(missing_ok=True)
            if main and evaluator is not None and step % t.eval_every == 0:  # rank 0 measures and keeps best.pt
                value = evaluator(G_show())
                log({"event": "eval", "step": step, "metric": evaluator.metric, "value": value})
                if value < best:
                    best = value
                    save(ckpt_dir / "best.pt", lambda v=value: {**state(), "best": {evaluator.metric: v}})
                plot()
            collector.step(step)
    finally:
        stop.uninstall()  # first: a later interrupt gets the caller's own handler
        collector.close()
        if bar is not None:
            bar.close()

    signal_name = stop.signal_name or "a signal to another process"
    if interrupted:
        log({"event": "interrupted", "step": step, "signal": signal_name})
    else:
        if dist.enabled:  # the processes must have stayed in lockstep: say so, with the number
            log({"event": "ranks", "processes": dist.world, "max_param_difference": dist.max_difference(G, D)})
        log({"event": "end", "step": step, "nimg": nimg, "seconds": time.perf_counter() - t_start,
             "train_seconds": None if clock_base is None else clock_base + time.perf_counter() - clock_start,
             **({"stopped_by": "train.time_limit"} if out_of_time else {})})  # fmt: skip
    # the last checkpoints after those lines: a resume cuts the log back to its checkpoint, and keeps them
    save(ckpt_dir / "last.pt", state)
    write_grid()
    plot()
    if interrupted:
        raise TrainingStopped(
            f"stopped by {signal_name} at step {step}/{total_steps}; checkpoint saved. "
            f"Resume with: ganforge train --resume {run_dir}",
            run_dir,
            143 if stop.signal_name == "SIGTERM" else 130,
        )
    save(ckpt_dir / "final.pt", state)
    if out_of_time:
        say(f"ganforge: train.time_limit ({t.time_limit:g} s) reached at step {step}/{total_steps}.",
              file=sys.stderr)  # fmt: skip
    say(
        f"ganforge: done. Samples: {run_dir / 'samples.png'}  Checkpoint: {ckpt_dir / 'final.pt'}",
        file=sys.stderr,
    )
    return run_dir
