"""The training loop (seed section 3.2, done right), read top to bottom: set up, restore, then for each
step the objective's D and G phases, EMA, the health check and the maintenance (log, grid, checkpoint,
eval), then finish.

What the phases compute lives elsewhere: the step maths in steps.py, the objectives that call it (GAN,
VAE) in objectives.py, the arithmetic and devices in precision.py, the run folder in runlog.py, signals
in guards.py. This module decides when each happens, and owns the run's state (`Run`) and its policies:
the learning rate, the collapse policy, resume. docs/architecture.md is the map.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ganforge import threads
from ganforge.augment import make_augment
from ganforge.checkpoint import CheckpointError, WriteError, load_checkpoint
from ganforge.config import (
    TRANSLATION_FAMILIES,
    Config,
    ConfigError,
    OptimConfig,
    RampConfig,
    RegConfig,
    TrainConfig,
    from_dict,
    model_family,
    planned_resolution,
    resolve,
)
from ganforge.data import ImageDataset, load_dataset
from ganforge.distributed import VOTE_EVERY, Dist, init_distributed, shutdown
from ganforge.draws import Draws
from ganforge.ema import ema_beta, recalibrate_bn, update_ema
from ganforge.guards import LoopGarbageCollector, StopFlag, raised_in_torch_compile, safe_output
from ganforge.losses import LOSSES
from ganforge.models import MODELS, build_models, is_vae
from ganforge.monitor import HealthMonitor, all_finite, weights_finite
from ganforge.objectives import (
    CycleGANObjective,
    CycleGrid,
    Feed,
    GANObjective,
    LatentGrid,
    Objective,
    PairGrid,
    Regularizers,
    StepOut,
    TranslationObjective,
    VAEObjective,
)
from ganforge.precision import Precision, cuda_speedups, make_adam, pick_device, resolve_precision
from ganforge.runlog import RunFiles, new_run_dir, require_tensorboard
from ganforge.steps import grad_norm

# What `ganforge train --resume RUN --set ...` may change: the run's length, cadences and where it runs,
# the learning rates and their schedule (Adam's moments do not depend on the rate; a new rate replaces the
# base rate a rollback may have lowered), and the health monitor's policy; each change is logged. The rest
# would make the resumed run a different run (and the model's shape cannot change at all). A folder
# dataset may be re-pointed (data.name, data.root) to a copy that holds the same images (checked by hash).
RESUMABLE = {
    "train": ("steps", "epochs", "time_limit", "log_every", "sample_every", "checkpoint_every", "eval_every",
              "device", "precision", "compile", "keep_checkpoints", "tensorboard"),
    "optim": ("g_lr", "d_lr", "lr_decay", "decay_start"),
    "monitor": ("every", "on_collapse", "n", "diversity_threshold", "entropy_threshold", "patience", "warmup",
                "lr_factor", "rollback_lr", "max_rollbacks"),
}  # fmt: skip
REPOINTABLE = ("name", "root")  # data.*: a folder dataset's new place, checked by the images' hash (repointed_data)
FOLDER_PREFIXES = ("folder:", "pairs:", "unpaired:")  # datasets that are the user's own files


class TrainingStopped(RuntimeError):
    """Training ended early (interrupt or divergence); the run folder holds a resumable checkpoint."""

    def __init__(self, message: str, run_dir: Path, exit_code: int):
        super().__init__(message)
        self.run_dir = run_dir
        self.exit_code = exit_code


@dataclass
class Run:
    """The live state of a run: the nets, their optimizers and the progress counters; with the config
    and the data's identity, what a checkpoint holds."""

    G: nn.Module
    D: nn.Module
    G_ema: Optional[nn.Module]
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    precision: Precision
    device: torch.device
    noise: torch.Generator  # the training draws (latents, labels, GP and DiffAugment): checkpointed
    G_run: nn.Module = None  # type: ignore[assignment]  # what the steps call: G, or G compiled
    D_run: nn.Module = None  # type: ignore[assignment]
    step: int = 0
    nimg: int = 0  # real images shown to D, over all processes
    best: float = math.inf  # the best in-training eval value so far (lower is better)
    rollbacks: int = 0
    ema_stale: bool = True  # G_ema's BN statistics do not match its weights (after an update or a restore)
    runaway_said: bool = False  # a runaway (see runaway) was reported: once until the next rollback
    # training wall time over all sessions (the cost `ganforge compare` reports); base None: a checkpoint
    # from before it was recorded
    clock_base: Optional[float] = 0.0
    clock_start: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.G_run = self.G if self.G_run is None else self.G_run
        self.D_run = self.D if self.D_run is None else self.D_run
        for opt in self.optimizers:
            init_base_rates(opt)

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return self.opt_G, self.opt_D

    def train_seconds(self) -> Optional[float]:
        return None if self.clock_base is None else self.clock_base + time.perf_counter() - self.clock_start


# ----------------------------------------------------------------------------------------------
# The learning rate, set in one place: each param group's rate = its base rate x the schedule.
# The base rate (the param group's "base_lr", as torch's schedulers keep "initial_lr") starts at the
# config's and only a rollback lowers it; it is checkpointed with the optimizer.


def lr_scale(step: int, total_steps: int, schedule: str, start: float) -> float:
    """The learning-rate multiplier at `step` (0-based) of `total_steps` (optim.lr_decay, decay_start)."""
    if schedule == "none":
        return 1.0
    first = int(start * total_steps)  # the first decayed step
    return 1.0 if step < first else (total_steps - step) / (total_steps - first)


def init_base_rates(opt: torch.optim.Optimizer) -> None:
    for group in opt.param_groups:
        group.setdefault("base_lr", group["lr"])  # (checkpoints from before the schedule have none)


def cosine_ramp(nimg: int, images: int, start: float, end: float) -> float:
    """`start` at 0 images, `end` from `images` on, half a cosine between (ramp.*)."""
    t = min(nimg / images, 1.0)
    return start + (end - start) * (1 - math.cos(math.pi * t)) / 2


def set_rates(run: Run, total_steps: int, optim: OptimConfig, ramp: Optional[RampConfig] = None) -> None:
    """Every learning rate of the run at `run.step` (and Adam's beta2 under ramp.beta2_final)."""
    scale = lr_scale(run.step, total_steps, optim.lr_decay, optim.decay_start)
    if ramp is not None and ramp.images and ramp.lr_final is not None:
        scale *= cosine_ramp(run.nimg, ramp.images, 1.0, ramp.lr_final)
    beta2 = None
    if ramp is not None and ramp.images and ramp.beta2_final is not None:
        beta2 = cosine_ramp(run.nimg, ramp.images, optim.beta2, ramp.beta2_final)
    for opt in run.optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
            if beta2 is not None:
                group["betas"] = (group["betas"][0], beta2)


def ramped_gammas(objective: Any, reg: RegConfig, ramp: RampConfig, nimg: int) -> None:
    """R1's and R2's gamma at `nimg` images under ramp.gamma_final (the objective's Regularizers)."""
    if not ramp.images or ramp.gamma_final is None or getattr(objective, "reg", None) is None:
        return
    factor = cosine_ramp(nimg, ramp.images, 1.0, ramp.gamma_final)
    objective.reg.r1_gamma, objective.reg.r2_gamma = reg.r1_gamma * factor, reg.r2_gamma * factor


def ramped_ema_beta(t: TrainConfig, ramp: RampConfig, step: int, nimg: int) -> float:
    """G EMA's decay after G step `step`: train.ema_beta, or its ramp from ramp.ema_start; with ema.ema_beta's
    warm-up either way."""
    beta = t.ema_beta
    if ramp.images and ramp.ema_start is not None:
        beta = cosine_ramp(nimg, ramp.images, ramp.ema_start, t.ema_beta)
    return ema_beta(beta, step)


def lower_base_rates(run: Run, bases: list[list[float]], factor: float, which: str) -> None:
    """A rollback's cut: the base rates `bases` (from before the restore) times `factor`, for both nets
    (`which`="both") or D's only ("d"); compounding over repeated rollbacks."""
    lowered = (True, True) if which == "both" else (False, True)
    for opt, old, lower in zip(run.optimizers, bases, lowered):
        for group, base in zip(opt.param_groups, old):
            group["base_lr"] = base * factor if lower else base


# ----------------------------------------------------------------------------------------------
# Checkpoint state: what a checkpoint holds, and putting it back.


def G_show(run: Run, recalibrate: dict[str, Any]) -> nn.Module:
    """The generator to sample from: G_ema (its BN statistics recomputed once per change) when kept,
    else G. `recalibrate`: recalibrate_bn's arguments."""
    if run.G_ema is None:
        return run.G
    if run.ema_stale:
        recalibrate_bn(run.G_ema, **recalibrate)
        run.ema_stale = False
    return run.G_ema


def run_state(run: Run, cfg: Config, ds: ImageDataset, files: RunFiles, objective: Objective,
              recalibrate: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The checkpoint of the run as it is now."""
    if run.G_ema is not None:
        G_show(run, recalibrate)  # the checkpoint's G_ema carries statistics that match its weights
    rng = {"torch": torch.get_rng_state(), "noise": run.noise.get_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    scaler = run.precision.scaler
    return {
        "G": run.G.state_dict(),
        "D": run.D.state_dict(),
        **({"G_ema": run.G_ema.state_dict()} if run.G_ema is not None else {}),
        "opt_G": run.opt_G.state_dict(),
        "opt_D": run.opt_D.state_dict(),
        **({"scaler": scaler.state_dict()} if scaler is not None else {}),
        "step": run.step,
        "nimg": run.nimg,
        "rng": rng,
        "config": cfg.to_dict(),
        "dataset": {"name": ds.name, "n": len(ds), "source": ds.source},
        **objective.extra_state(),
        "best_eval": run.best,
        "rollbacks": run.rollbacks,
        "train_seconds": run.train_seconds(),
        "log_bytes": files.log_bytes(),
    }


def restore(run: Run, saved: dict[str, Any]) -> None:
    """Load a checkpoint's state into the live run (resume and rollback)."""
    run.best = saved.get("best_eval", math.inf)
    run.G.load_state_dict(saved["G"])
    run.D.load_state_dict(saved["D"])
    if run.G_ema is not None:
        run.G_ema.load_state_dict(saved["G_ema"])
    run.opt_G.load_state_dict(saved["opt_G"])
    run.opt_D.load_state_dict(saved["opt_D"])
    for opt in run.optimizers:
        init_base_rates(opt)
        for group in opt.param_groups:  # this run's Adam kernel, not the saved one (an older checkpoint's
            group["fused"] = opt.defaults["fused"]  # non-fused groups in a fused optimizer would trip fp16's GradScaler)
    run.step, run.nimg, run.rollbacks = saved["step"], saved["nimg"], saved.get("rollbacks", 0)
    if run.precision.scaler is not None and "scaler" in saved:
        run.precision.scaler.load_state_dict(saved["scaler"])
    run.noise.set_state(saved["rng"]["noise"])
    torch.set_rng_state(saved["rng"]["torch"])
    if run.device.type == "cuda" and saved["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    run.ema_stale = True


# ----------------------------------------------------------------------------------------------
# The data, and the in-training eval.


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
    cfg = absolute_paths(cfg)
    ds = _load_data(cfg)
    if ds.unpaired and len(ds.inputs) < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is larger than domain A of '{ds.name}' "
                          f"({len(ds.inputs)} images); use at most {len(ds.inputs)}.")  # fmt: skip
    return resolve(cfg, ds.name, ds.images.shape[1], len(ds), ds.is_points, ds.num_classes,
                   None if ds.inputs is None else ds.inputs.shape[1]), ds


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


# ----------------------------------------------------------------------------------------------
# Setting a run up: a new run folder or a resumed one, the nets, the objective, the monitors.


@dataclass
class Setup:
    """What the loop's phases read but do not change: the resolved config, the data, the objective,
    the run folder, the processes, the run's length and the checks that watch it."""

    cfg: Config
    ds: ImageDataset
    objective: Objective
    files: RunFiles
    dist: Dist
    total_steps: int
    monitor: Optional[HealthMonitor]
    evaluator: Optional[InTrainingEval]
    recalibrate: dict[str, Any]  # recalibrate_bn's arguments for G_ema
    points_ref: Optional[torch.Tensor]  # 2D points: the real points drawn under the samples' scatter
    grid_nrow: Optional[int]  # a conditional grid: one column per class
    pre_seconds: float = 0.0  # training time spent before the loop (model.clusters' k-means)
    data_digest: str = ""  # dataset_digest of the data: checkpointed, so a re-pointed folder can be checked

    def state(self, run: Run) -> dict[str, Any]:
        state = run_state(run, self.cfg, self.ds, self.files, self.objective, self.recalibrate)
        if self.monitor is not None:  # the collapse patience carries over a resume
            state["monitor_streak"] = self.monitor.unhealthy_streak
        state["dataset"]["sha256"] = self.data_digest
        return state

    def show(self, run: Run) -> nn.Module:
        return G_show(run, self.recalibrate)

    def write_grid(self, run: Run) -> None:
        if not self.files.main:
            return
        fake = self.objective.grid(self.show(run), run.device)
        run.G.train()  # (grid() put the generator it drew from in eval mode)
        self.files.save_samples(fake, run.step, self.points_ref, self.grid_nrow)


def open_run(cfg: Optional[Config], resume: Optional[str | Path], overrides: Optional[dict[str, Any]],
             resume_from: Optional[str]) -> tuple[Config, Optional[dict[str, Any]], ImageDataset, Dist, Path]:  # fmt: skip
    """The config, the checkpoint to resume from (None: a new run), the data, the processes and the run
    folder (made, for a new run, by rank 0)."""
    if resume is None:
        cfg = cfg or Config()
        dist = init_distributed(pick_device(cfg.train.device))  # the device check fails before a run folder
        _check_distributed(cfg, dist)
        if cfg.train.tensorboard:
            require_tensorboard()
        with dist.main_first():  # a download happens once, by rank 0
            cfg, ds = prepare(cfg)
        run_dir = dist.broadcast(new_run_dir(cfg) if dist.main else None)  # rank 0 names it for all
        return cfg, None, ds, dist, run_dir
    run_dir = Path(resume)
    ckpt_path = run_dir / "checkpoints" / Path(resume_from or "last.pt").name
    if not ckpt_path.is_file():
        raise CheckpointError(missing_checkpoint(run_dir, ckpt_path.name))
    ckpt = load_checkpoint(ckpt_path)
    overrides = dict(overrides or {})
    data = dict(overrides.pop("data", {}))
    data_change = {key: data.pop(key) for key in REPOINTABLE if key in data}
    if data:  # the other data.* keys: resumed_config refuses them
        overrides["data"] = data
    saved = from_dict(ckpt["config"])
    cfg = resumed_config(saved, overrides)
    if data_change:
        cfg = repointed_data(cfg, data_change, run_dir)
    dist = init_distributed(pick_device(cfg.train.device))
    _check_distributed(cfg, dist)
    if cfg.train.tensorboard:
        require_tensorboard()
    with dist.main_first():  # a download happens once, by rank 0
        ds = _load_data(cfg)
    if len(ds) != ckpt["dataset"]["n"]:
        raise ConfigError(
            f"cannot resume '{run_dir}': it was trained on {ckpt['dataset']['n']} images of "
            f"'{cfg.data.name}', but {len(ds)} were found now; the data changed."
        )
    digest = ckpt["dataset"].get("sha256")
    if data_change and digest is None:
        raise ConfigError(f"cannot re-point the data of '{run_dir}': its checkpoint predates the images' hash "
                          "that would show the new folder holds the same images; resume it where its data is.")  # fmt: skip
    if data_change and dataset_digest(ds) != digest:
        raise ConfigError(f"cannot resume '{run_dir}' on '{cfg.data.name}': it holds {len(ds)} images as the run's "
                          "data did, but not the same ones (their hash differs); the data changed.")  # fmt: skip
    ckpt["resume_changes"] = config_changes(saved, cfg)
    return cfg, ckpt, ds, dist, run_dir


def missing_checkpoint(run_dir: Path, name: str) -> str:
    """Why `--resume run_dir` (from checkpoints/`name`) cannot start, and what can: the intact checkpoints
    the run does hold (a divergence stop, an abort or a full disk can leave no last.pt), with the command."""
    from ganforge.checkpoint import _alternatives

    ckpt_dir = run_dir / "checkpoints"
    if not run_dir.is_dir():
        return f"cannot resume '{run_dir}': no such folder."
    if any(ckpt_dir.glob("*.pt")):
        advice = _alternatives(ckpt_dir / name)
        return f"cannot resume '{run_dir}': it has no checkpoints/{name}. {advice}"
    if (run_dir / "config.yaml").is_file():
        return (f"cannot resume '{run_dir}': the run stopped before its first checkpoint, so there is nothing to "
                f"continue; start it again with: ganforge train --config {run_dir / 'config.yaml'}")  # fmt: skip
    return f"cannot resume '{run_dir}': no checkpoints/{name} there. Is it a ganforge run folder?"


def repointed_data(cfg: Config, change: dict[str, Any], run_dir: Path) -> Config:
    """A folder dataset's new place (data.name, data.root) for a resume; the images are checked after."""
    old = cfg.data.name
    new_name = change.get("name", old)
    if not (old.startswith(FOLDER_PREFIXES) and new_name.startswith(FOLDER_PREFIXES)
            and old.split(":")[0] == new_name.split(":")[0]):  # fmt: skip
        if new_name != old:
            raise ConfigError(f"cannot change data.name when resuming '{run_dir}' (it trained on '{old}'): only a "
                              "folder dataset may be re-pointed, to a folder of the same kind holding the same images.")  # fmt: skip
    values = cfg.to_dict()
    values["data"] = {**values["data"], **change}
    return absolute_paths(from_dict(values))


def absolute_paths(cfg: Config) -> Config:
    """The config with its data folders as absolute paths, so the run resumes and evaluates from anywhere."""
    d = cfg.data
    name, root = d.name, d.root
    for prefix in FOLDER_PREFIXES:
        if name.startswith(prefix):
            paths = name[len(prefix):].split(",")
            name = prefix + ",".join(str(Path(p).expanduser().resolve()) for p in paths)
    if root is not None:
        root = str(Path(root).expanduser().resolve())
    if (name, root) == (d.name, d.root):
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.data.name, cfg.data.root = name, root
    return cfg


def dataset_digest(ds: ImageDataset) -> str:
    """SHA-256 of the dataset's images (and a translation dataset's inputs), as trained on."""
    import hashlib

    h = hashlib.sha256()
    for t in (ds.images, ds.inputs):
        if t is not None:
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def config_changes(old: Config, new: Config) -> dict[str, list[Any]]:
    """{"section.key": [old, new]} for each value a resume changed (for the log)."""
    a, b = old.to_dict(), new.to_dict()
    return {f"{section}.{key}": [a[section][key], b[section][key]] for section in b if isinstance(b[section], dict)
            for key in b[section] if a.get(section, {}).get(key) != b[section][key]}  # fmt: skip


def resumed_config(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A resumed run's config: its own, with the changes RESUMABLE allows."""
    if not overrides:
        return cfg
    for section, values in overrides.items():
        bad = set(values) - set(RESUMABLE.get(section, ()))
        if bad:
            allowed = ", ".join(f"{s}.{k}" for s, keys in RESUMABLE.items() for k in keys)
            raise ConfigError(f"cannot change {', '.join(f'{section}.{k}' for k in sorted(bad))} when resuming; "
                              f"only {allowed} may change.")  # fmt: skip
    old_length = (cfg.train.steps, cfg.train.epochs)
    values = cfg.to_dict()
    cfg = from_dict({**values, **{section: {**values[section], **changed} for section, changed in overrides.items()}})
    if cfg.optim.lr_decay != "none" and (cfg.train.steps, cfg.train.epochs) != old_length:
        print(f"ganforge: note: optim.lr_decay={cfg.optim.lr_decay} follows the new length of the run, "
              "so the learning rates jump to that schedule's value at the resumed step.", file=sys.stderr)  # fmt: skip
    return cfg


def cluster_labels_of(cfg: Config, ds: ImageDataset, dist: Dist, files: RunFiles,
                      ckpt: Optional[dict[str, Any]]) -> tuple[Optional[torch.Tensor], float]:  # fmt: skip
    """model.clusters: each training image's cluster (a resume: the run's own, from its checkpoint) and
    the seconds the clustering took. The same clusters on every rank: rank 0 computes, all receive."""
    k = cfg.model.clusters
    if not k:
        return None, 0.0
    if ckpt is not None:
        return ckpt["cluster_labels"].long(), 0.0
    from ganforge.clusters import kmeans

    found = kmeans(ds.images, k, seed=cfg.train.seed) if dist.main else None
    if found is not None:
        files.say(f"ganforge: {k} k-means clusters of the training images in {found.seconds:.1f} s "
                  f"({found.iterations} rounds; shares {float(found.prior.min()):.4f}-{float(found.prior.max()):.4f})",
                  file=sys.stdout)  # fmt: skip
    labels = dist.broadcast(found.labels if found is not None else None)
    return labels, float(dist.broadcast(found.seconds if found is not None else None))


def build_run(cfg: Config, ds: ImageDataset, dist: Dist, files: RunFiles,
              ckpt: Optional[dict[str, Any]]) -> tuple[Run, Setup]:  # fmt: skip
    """The nets, optimizers and objective of a run, restored from `ckpt` when resuming."""
    t, m = cfg.train, cfg.model
    device = pick_device(t.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    torch.manual_seed(t.seed)  # weights; dropout masks use the same global generator afterwards
    # the classes D and the real batches carry: a conditional model's, or model.clusters' pseudo-classes; g_nc:
    # the classes the loop asks G for by label (with clusters G picks its cluster from z: see ClusterPrior)
    nc = (m.num_classes or 0) if m.conditional else m.clusters
    g_nc = 0 if m.clusters else nc
    G, D = build_models(m.name, m.z_dim, m.channels, m.g_channels, m.d_channels, m.dropout,
                        spectral_norm=m.spectral_norm, pack=m.pack, num_classes=g_nc, mbstd=m.mbstd,
                        latent_codes=m.latent_codes, clusters=m.clusters, in_channels=m.in_channels or 0)  # fmt: skip
    cluster_labels, cluster_seconds = cluster_labels_of(cfg, ds, dist, files, ckpt)
    if cluster_labels is not None:
        from ganforge.clusters import shares

        G.set_prior(shares(cluster_labels, m.clusters))
    points = MODELS[m.name].resolution == 0
    precision = Precision(resolve_precision(t.precision, device, points=points), device)
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
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    run = Run(G, D, G_ema, make_adam(G, cfg.optim.g_lr, betas, device), make_adam(D, cfg.optim.d_lr, betas, device),
              precision, device, noise=torch.Generator().manual_seed(t.seed + 1),  # latents, drawn on the CPU
              # the modules the steps call: compiled (sharing G's and D's parameters) with train.compile
              G_run=torch.compile(G) if t.compile else None, D_run=torch.compile(D) if t.compile else None,
              # the clustering counts as training time: it is part of what the run costs
              clock_start=time.perf_counter() - cluster_seconds)  # fmt: skip
    translation = model_family(cfg) in TRANSLATION_FAMILIES
    grid = pair_grid(cfg) if translation else LatentGrid(t.n_samples, m.z_dim, t.seed, g_nc)
    if ckpt is not None:
        restore(run, ckpt)
        run.clock_base = ckpt.get("train_seconds")
        for key, opt in (("optim.g_lr", run.opt_G), ("optim.d_lr", run.opt_D)):
            if key in ckpt.get("resume_changes", {}):  # the new rate replaces the base (a rollback's cut too)
                for group in opt.param_groups:
                    group["base_lr"] = ckpt["resume_changes"][key][1]
    images = ds.images.to(device)  # uint8 [N, C, H, W] decoded once (float [N, D] for points)
    labels = (ds.labels if cluster_labels is None else cluster_labels).to(device)
    feed = Feed(images, labels, t.batch_size, t.seed, m.z_dim, nc, run.noise, dist, device, precision.memory_format,
                G, clusters=bool(m.clusters), inputs=None if ds.inputs is None else ds.inputs.to(device))  # fmt: skip
    objective = make_objective(cfg, feed, grid, run.noise, cluster_labels)
    if ckpt is not None:
        objective.load_state(ckpt)
    # a step = n_critic D updates (each on a fresh real batch) + one G update
    per_epoch = feed.batches_per_epoch
    total_steps = t.epochs * per_epoch // objective.real_batches_per_step if t.epochs is not None else t.steps
    mon = cfg.monitor
    monitor = None
    if mon.every:
        mon_z = torch.randn(mon.n, m.z_dim, generator=torch.Generator().manual_seed(t.seed + 4))
        boundary = LOSSES[cfg.loss.name].boundary if cfg.loss.name in LOSSES else 0.0
        monitor = HealthMonitor(mon, ds, mon_z, torch.arange(mon.n) % g_nc if g_nc else None, boundary)
        monitor.unhealthy_streak = ckpt.get("monitor_streak", 0) if ckpt is not None else 0
    # how many latents G_ema's BN statistics are averaged over. 2D points need them precise (grid25's clusters
    # have std 0.05 on a span of 8: from 2,048 latents one seed's G_ema gave 73.7 % high-quality samples with
    # one draw and 94.6 % with another, from 100,000 latents 99.6 %), and a point G costs next to nothing to run
    batches = dict(batches=40, batch_size=2500) if points else dict(batch_size=max(t.batch_size, 64))
    setup = Setup(cfg, ds, objective, files, dist, total_steps, monitor,
                  InTrainingEval(cfg, ds.name, device) if t.eval_every else None,
                  dict(z_dim=m.z_dim, device=device, num_classes=g_nc, seed=t.seed + 5, **batches),
                  images[: t.n_samples].cpu() if ds.is_points else None,
                  grid.nrow if translation else g_nc if 0 < g_nc <= 16 else None, cluster_seconds,
                  dataset_digest(ds))  # fmt: skip
    return run, setup


def pair_grid(cfg: Config) -> PairGrid | CycleGrid:
    """The fixed inputs of a translation run's grids: the first of the dataset's test split (at most
    train.n_samples, and one row of sample.PAIR_COLUMNS); of both domains for an unpaired dataset."""
    from ganforge.sample import PAIR_COLUMNS

    d = cfg.data
    k = min(cfg.train.n_samples, PAIR_COLUMNS)
    test = load_dataset(d.name, root=d.root, split="test", resolution=d.resolution, channels=d.channels,
                        download=d.download, limit=k)  # fmt: skip
    return CycleGrid(test.inputs, test.images) if test.unpaired else PairGrid(test.inputs, test.images)


def make_objective(cfg: Config, feed: Feed, grid: LatentGrid | PairGrid | CycleGrid, noise: torch.Generator,
                   cluster_labels: Optional[torch.Tensor]) -> Objective:  # fmt: skip
    """The objective the config names: a VAE's (model family "vae"), pix2pix's, CycleGAN's, or the GAN game's."""
    if is_vae(cfg.model.name):
        return VAEObjective(feed, grid, cfg.loss.likelihood, cfg.loss.kl_weight)
    lo = cfg.loss
    if isinstance(grid, CycleGrid):
        return CycleGANObjective(feed, LOSSES[lo.name], grid, lo.adv_weight, lo.cycle_weight, lo.identity_weight,
                                 lo.pool_size)  # fmt: skip
    r, t = cfg.reg, cfg.train
    reg = Regularizers(r.gp_weight, r.r1_gamma, r.r2_gamma, r.r1_interval, r.mode_seeking, r.topk, r.topk_gamma)
    if isinstance(grid, PairGrid):
        return TranslationObjective(feed, LOSSES[cfg.loss.name], grid, cfg.loss.l1_weight, cfg.loss.adv_weight, reg)
    augment = make_augment(r.diffaugment, Draws(noise, feed.dist.world, feed.dist.rank))  # global-batch draws
    return GANObjective(feed, LOSSES[cfg.loss.name], reg, grid, augment,
                        t.n_critic, t.reuse_fakes, t.update == "simultaneous", cfg.model.pack,
                        cfg.model.clusters, cluster_labels)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The loop.


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
        threads.policy()  # a bad GANFORGE_THREADS fails before any work
        load_since = threads.snapshot()  # the other processes' load is measured from here (see loop)
        cfg, ckpt, ds, dist, run_dir = open_run(cfg, resume, overrides, resume_from)
        files = RunFiles(run_dir, main=dist.main, tensorboard=cfg.train.tensorboard)  # rank 0 writes and prints
        try:
            write_config(files, cfg, new_run=ckpt is None)
            run, s = build_run(cfg, ds, dist, files, ckpt)
            with safe_output():  # a closed pipe or terminal must not kill the run: its output is dropped
                begin(s, run, ckpt)
                halt = loop(s, run, progress, load_since)
                return finish(s, run, halt)
        finally:
            files.close()
    finally:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a job torchrun started: leave it cleanly
            shutdown()


def write_config(files: RunFiles, cfg: Config, new_run: bool) -> None:
    """config.yaml; a new run that cannot write it (a full disk) leaves no empty run folder behind, and
    says to run the command again (there is nothing to resume)."""
    try:
        files.write_config(cfg)
    except WriteError as e:
        if not new_run:
            raise
        if files.main and files.run_dir.is_dir() and not any(files.run_dir.iterdir()):
            files.run_dir.rmdir()
        raise WriteError(f"cannot start the run: {str(e).split('; ')[0]}. Nothing was trained; free some space "
                         "(or choose another folder with --runs-dir) and run the same command again.") from None  # fmt: skip


@dataclass
class Halt:
    """Why the loop stops early, decided at the end of a step, the same on every rank. With several
    processes the ranks vote every VOTE_EVERY steps and at the last step (each vote waits for the slowest
    rank), so all stop at the same step."""

    interrupted: bool = False
    out_of_time: bool = False
    signal_name: str = ""  # the signal that interrupted it (on this rank)
    unvoted_nan: bool = False  # a rank's NaN loss since the ranks last voted
    t_start: float = 0.0  # for train.time_limit

    def vote(self, s: Setup, run: Run, stats: dict[str, torch.Tensor], stop: StopFlag) -> bool:
        """After a step: update the stop reasons; returns whether a loss became NaN/Inf (on any rank)."""
        limit = s.cfg.train.time_limit
        seen = (not all_finite(*stats.values()), stop.requested,
                limit is not None and time.perf_counter() - self.t_start >= limit)  # fmt: skip
        if not s.dist.enabled:
            bad_stats, self.interrupted, self.out_of_time = seen
            return bad_stats
        self.unvoted_nan = self.unvoted_nan or seen[0]
        bad_stats = self.interrupted = self.out_of_time = False
        if run.step % VOTE_EVERY == 0 or run.step == s.total_steps:
            bad_stats, self.interrupted, self.out_of_time = s.dist.any(self.unvoted_nan, *seen[1:])
            self.unvoted_nan = False
        return bad_stats


class LogWindow:
    """Running sums of the per-step statistics between two log records, and the images/s over them."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Any] = {}
        self.steps, self.start = 0, time.perf_counter()

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1

    def means(self, dist: Dist) -> dict[str, float]:
        """The window's means over the whole global batch: each rank's averaged over the ranks."""
        return dict(zip(self.sums, dist.mean([float(v) / self.steps for v in self.sums.values()])))


def begin(s: Setup, run: Run, ckpt: Optional[dict[str, Any]]) -> None:
    """Before the first step: clean up after a crash (resume), say what runs, and log its start."""
    files, cfg = s.files, s.cfg
    files.sample_dir.mkdir(exist_ok=True)
    if ckpt is not None:  # after a crash: the log and temp files may hold what the checkpoint does not
        dropped = files.after_crash(ckpt.get("log_bytes"), run.step)
        if dropped:
            files.say(f"ganforge: {dropped} log line(s) written after step {run.step}'s checkpoint "
                      "were dropped (those steps are redone)")  # fmt: skip
    ds, dist, batch, p = s.ds, s.dist, cfg.train.batch_size, run.precision.name
    files.say(
        f"ganforge: training {cfg.model.name} on {ds.name} ({len(ds)} {'points' if ds.is_points else 'images'} "
        f"{tuple(ds.images.shape[1:])}) on {run.device}{'' if p == 'fp32' else f' ({p})'}; "
        f"{s.total_steps} steps of {batch}"
        + (f" (global batch: {dist.world} processes x {batch // dist.world}, {dist.backend}"
           f"{' + shared memory' if dist.shared_memory else ''})" if dist.enabled else "")
        + f" -> {files.run_dir}"
    )  # fmt: skip
    where = {"device": str(run.device), "precision": p, "processes": dist.world,
             "batch_per_process": batch // dist.world, "global_batch": batch}  # fmt: skip
    if ckpt is None:
        s.write_grid(run)
        files.log({"event": "start", "step": 0, "dataset": ds.name, "n_images": len(ds), **where})
        if s.monitor is not None:
            files.save("healthy.pt", lambda: s.state(run))  # the initial state is the first rollback target
    else:
        changes = ckpt.get("resume_changes", {})
        files.say(f"ganforge: resuming {files.run_dir} from step {run.step} of {s.total_steps}"
                  + (f" (checkpoints/{ckpt.path.name})" if getattr(ckpt, "path", None) else "")
                  + "".join(f"\nganforge:   {key}: {old} -> {new}" for key, (old, new) in changes.items()))  # fmt: skip
        files.log({"event": "resume", "step": run.step, "nimg": run.nimg, **where, "changes": changes})


def loop(s: Setup, run: Run, progress: bool, load_since: Optional[tuple] = None) -> Halt:
    """The training loop. Returns why it ended (normally: neither flag set)."""
    t, objective = s.cfg.train, s.objective
    bar = progress_bar(s, run) if progress and s.files.main else None
    window = LogWindow()
    # the clustering counts as training time (train.time_limit, train_seconds): it is part of what the run costs
    halt = Halt(t_start=time.perf_counter() - s.pre_seconds)
    collector = LoopGarbageCollector()
    stop = StopFlag()
    stop.install()
    threads_before = torch.get_num_threads()
    governor, how = threads.governor_for_run(run.device, s.dist.world, since=load_since)
    s.files.log({"event": "threads", "step": run.step, "threads": torch.get_num_threads(), "policy": how})
    retune_threads(s, run, governor)  # on the load since the run's start
    run.G.train()
    run.D.train()
    try:
        while run.step < s.total_steps:
            if halt.interrupted or halt.out_of_time:  # decided at the end of the last step
                halt.out_of_time = halt.out_of_time and not halt.interrupted
                break
            set_rates(run, s.total_steps, s.cfg.optim, s.cfg.ramp)
            ramped_gammas(objective, s.cfg.reg, s.cfg.ramp, run.nimg)
            log_now = (run.step + 1) % t.log_every == 0 or run.step + 1 == s.total_steps
            check_now = s.monitor is not None and (run.step + 1) % s.cfg.monitor.every == 0

            # D and G phases: the objective's iteration (n_critic D updates then a G update, or both at once)
            out = iterate(s, run)
            if out is None:  # torch.compile failed: the step is redone with the plain modules
                continue
            d_norm = grad_norm(run.D) if log_now or check_now else None  # the G phase computes none for D

            # EMA of G
            if run.G_ema is not None:
                update_ema(run.G_ema, run.G, ramped_ema_beta(t, s.cfg.ramp, run.step, run.nimg))
                run.ema_stale = True
            g_norm = grad_norm(run.G) if log_now or check_now else None
            run.step += 1
            run.nimg += objective.images_per_step

            # health: divergence at every step (before a checkpoint could store it), the monitor at its cadence
            norms = dict(zip(objective.norm_keys, (d_norm, g_norm)))
            if check_health(s, run, out, halt, stop, norms, check_now):
                window.reset()  # rolled back: the restored step runs next
                if bar is not None:  # a new bar from the restored step: its rate and time left start afresh
                    bar.close()
                    bar = progress_bar(s, run)
                continue

            # maintenance: log / grid / checkpoint / eval
            window.add(out.stats)
            if bar is not None:
                bar.update()
            if log_now:
                write_log(s, run, window, norms, bar)
            maintenance(s, run)
            collector.step(run.step)
            retune_threads(s, run, governor)  # other processes came or went
    finally:
        stop.uninstall()  # first: a later interrupt gets the caller's own handler
        if torch.get_num_threads() != threads_before:  # the caller's own setting back (the Python API)
            torch.set_num_threads(threads_before)
        collector.close()
        if bar is not None:
            bar.close()
    halt.signal_name = stop.signal_name
    return halt


def retune_threads(s: Setup, run: Run, governor: Optional[threads.ThreadGovernor]) -> None:
    """The governor's measurement when one is due (see ganforge.threads), and a log event per change."""
    if governor is not None and (change := governor.tick()) is not None:
        s.files.log({"event": "threads", "step": run.step, "threads": change[1], "was": change[0],
                     "others_cores": round(governor.others, 2)})  # fmt: skip


def progress_bar(s: Setup, run: Run) -> Any:
    """The terminal's progress bar, in steps (as --steps and the log count them; write_log adds the img/s).
    It starts at run.step (a resume, a rollback), and tqdm measures its rate and time left from the steps
    it sees itself (the updates after `initial`), so they start afresh instead of counting the steps
    before as done in no time."""
    from tqdm import tqdm

    return tqdm(total=s.total_steps, initial=run.step, unit="step", dynamic_ncols=True, mininterval=1.0,
                file=sys.stderr)  # fmt: skip


def iterate(s: Setup, run: Run) -> Optional[StepOut]:
    """One training iteration of the objective; None when a compiled step failed and the run falls back
    to the plain modules (the caller redoes the step).

    torch.compile can fail inside PyTorch on a model it should handle (on an H200 with torch 2.11,
    dcgan32 in bf16 hit a stride assertion in inductor's convolution backward: docs/benchmarks.md). One
    process: redo the step (before the step counter moves) with the plain modules and go on without
    compiling; if the plain step fails too, that error is the run's own and stops it. The failed step
    may have updated D already (up to n_critic extra D updates), and its latents are skipped, so the run
    is no longer the same as an uncompiled one; no work is lost."""
    try:
        return s.objective.step(run)
    except Exception as error:
        compiled = run.G_run is not run.G or run.D_run is not run.D
        if not compiled or isinstance(error, (TrainingStopped, ConfigError)):
            raise
        first = str(error).strip().splitlines()
        reason = type(error).__name__ + (f": {first[0][:300]}" if first else "")
        if s.dist.enabled:  # the ranks cannot fall back together mid-step
            if not raised_in_torch_compile(error):
                raise
            raise ConfigError(f"train.compile: the compiled step failed inside torch.compile at step {run.step} "
                              f"({reason}); several processes cannot fall back together mid-step: run "
                              "again without --compile (train.compile=false).") from error  # fmt: skip
        run.G_run, run.D_run = run.G, run.D  # (g_step leaves D trainable even when it fails)
        s.files.log({"event": "compile_failed", "step": run.step, "error": reason, "action": "eager"})
        s.files.say(f"\nganforge: the compiled step failed at step {run.step} ({reason}); redoing it with the plain "
                    "modules, and the run goes on without compiling (as with train.compile=false).")  # fmt: skip
        return None


def check_health(s: Setup, run: Run, out: StepOut, halt: Halt, stop: StopFlag,
                 norms: dict[str, Optional[float]], monitor_now: bool) -> bool:  # fmt: skip
    """Divergence (NaN/Inf losses or weights) after every step, runaway losses and vanished gradients
    wherever `norms` (the step's gradient norms, None where not computed) are, and the health monitor's
    check when `monitor_now`. Applies the collapse policy; returns True when it rolled the run back."""
    bad_stats = halt.vote(s, run, out.stats, stop)
    if bad_stats or not weights_finite(run.G, run.D):  # the weights are the same on every rank: no vote
        bad = [key for key, v in out.stats.items() if not all_finite(v)]
        bad += [f"{name} weights" for name, mod in zip(s.objective.nets, (run.D, run.G)) if not weights_finite(mod)]
        if on_event(s, run, "divergence", [f"{', '.join(bad)} became NaN/Inf" if bad
                                           else "a loss became NaN/Inf in another process"]):  # fmt: skip
            return True
    signs = runaway(out.stats, norms)
    if signs and not run.runaway_said:  # finite but going nowhere: the collapse policy decides, at the step
        run.runaway_said = True
        if on_event(s, run, "runaway", signs):
            return True
    if not monitor_now:
        return False
    collapsed, reasons = False, ["rank 0's health monitor flagged a collapse"]
    if s.files.main:  # rank 0's monitor decides for every rank
        record = s.monitor.check(s.show(run), run.step, out.real_logits, out.fake_logits, run.device)
        record.update(norms)
        s.files.log(record)
        collapsed, reasons = s.monitor.collapse_due(record), record["reasons"]
        notice = s.monitor.notice(record)  # the first failed check of a run of them, said at once
        if notice and not collapsed:  # (a collapse event says its own line)
            s.files.say(f"\n{notice}")
        if not collapsed and record["healthy"]:  # the rollback target: the last check that passed
            s.files.save("healthy.pt", lambda: s.state(run))
    return s.dist.any(collapsed)[0] and on_event(s, run, "collapse", reasons)


# A loss beyond this (per-step mean) has run away: the bounded losses stay within tens, and a WGAN critic's
# within thousands, when training works. g_lr=d_lr=10 gave g_loss 3e5 with d_loss exactly 0 from step 50.
LOSS_RUNAWAY = 1e5


def runaway(stats: dict[str, torch.Tensor], norms: Optional[dict[str, Optional[float]]]) -> list[str]:
    """Finite signs that training has diverged, checked at every step (losses) and wherever the gradient
    norms were computed: reasons, or [] when there are none."""
    reasons = [f"{key} is {float(v):.3g} (beyond ±{LOSS_RUNAWAY:g})" for key, v in stats.items()
               if v.numel() == 1 and math.isfinite(float(v)) and abs(float(v)) > LOSS_RUNAWAY]  # fmt: skip
    if norms and all(v is not None for v in norms.values()) and all(v == 0.0 for v in norms.values()):
        reasons.append(f"every gradient is exactly zero ({', '.join(norms)}): the losses are flat, D is saturated")
    return reasons


def on_event(s: Setup, run: Run, kind: str, reasons: list[str]) -> bool:
    """The collapse policy (monitor.on_collapse) for a collapse or divergence event: log it, then warn
    (return False), roll back to checkpoints/healthy.pt with lower learning rates (return True), or stop
    (raise TrainingStopped, exit code 3)."""
    mon, files = s.cfg.monitor, s.files
    policy = mon.on_collapse
    if kind == "divergence" and policy == "warn":
        policy = "stop"  # training cannot go on from NaN weights (a runaway's finite ones can: it warns)
    if policy == "rollback" and run.rollbacks >= mon.max_rollbacks:
        policy, reasons = "stop", [*reasons, f"already rolled back {run.rollbacks} times (monitor.max_rollbacks)"]
    if policy == "rollback" and not files.healthy_path.is_file():
        policy, reasons = "stop", [*reasons, "no healthy checkpoint to roll back to yet"]
    files.log({"event": kind, "step": run.step, "reasons": reasons, "action": policy})
    files.say(f"\nganforge: {kind} at step {run.step}: {'; '.join(reasons)} -> {policy}")
    if policy == "warn":
        return False
    if policy == "rollback":
        rollback(s, run)
        return True
    finite = weights_finite(run.G, run.D)
    if finite:  # the weights are valid: keep them for inspection and resume
        files.save("last.pt", lambda: s.state(run))
    healthy = files.healthy_path if files.healthy_path.is_file() else "none saved yet"
    raise TrainingStopped(
        f"{kind} at step {run.step}: {'; '.join(reasons)}. "
        + ("" if finite else "The weights are not finite and were not saved. ")
        + f"Last healthy state: {healthy}. {resume_advice(s, run)}",
        files.run_dir,
        3,
    )


def resume_advice(s: Setup, run: Run) -> str:
    """After a stop: commands that work as printed. From the last healthy state (else the newest
    checkpoint) with half the learning rates, or with the rollback policy; a stabiliser is a new run."""
    ckpt_dir, run_dir = s.files.ckpt_dir, s.files.run_dir
    periodic = sorted(ckpt_dir.glob("step_*.pt"))
    start = next((p for p in (s.files.healthy_path, ckpt_dir / "last.pt", *periodic[::-1]) if p.is_file()), None)
    stabilisers = "or start a new run with a stabiliser (model.spectral_norm, reg.r1_gamma, model.pack; see `ganforge presets`)"
    if start is None:
        return f"No checkpoint was saved before it; {stabilisers.removeprefix('or ')}."
    rates = [(opt.param_groups[0]["base_lr"], name) for opt, name in ((run.opt_G, "g_lr"), (run.opt_D, "d_lr"))]
    lower = " ".join(f"optim.{name}={rate / 2 if math.isfinite(rate) else 2e-4:.3g}" for rate, name in rates)
    base = f"ganforge train --resume {run_dir} --from {start.name}"
    rollback = (f"or roll back by itself at the next collapse: {base} --set monitor.on_collapse=rollback; "
                if s.cfg.monitor.on_collapse != "rollback" and all(math.isfinite(r) for r, _ in rates) else "")  # fmt: skip
    return f"Resume with half the learning rates: {base} --set {lower}; {rollback}{stabilisers}."


def rollback(s: Setup, run: Run) -> None:
    """Restore checkpoints/healthy.pt and lower the learning rates (monitor.lr_factor, rollback_lr)."""
    mon, files = s.cfg.monitor, s.files
    from_step, count = run.step, run.rollbacks + 1
    bases = [[g["base_lr"] for g in opt.param_groups] for opt in run.optimizers]  # before the restore
    healthy = load_checkpoint(files.healthy_path)
    restore(run, healthy)
    s.objective.load_state(healthy)
    run.rollbacks = count  # the restored state's own count is older
    lower_base_rates(run, bases, mon.lr_factor, mon.rollback_lr)
    set_rates(run, s.total_steps, s.cfg.optim, s.cfg.ramp)  # the restored step's rates, logged below
    record = {"event": "rollback", "from_step": from_step, "to_step": run.step, "rollbacks": run.rollbacks,
              "g_lr": run.opt_G.param_groups[0]["lr"], "d_lr": run.opt_D.param_groups[0]["lr"]}  # fmt: skip
    files.log(record)
    files.say(f"ganforge: rolled back to step {run.step} (checkpoints/healthy.pt); learning rates now "
              f"G {record['g_lr']:.3g}, D {record['d_lr']:.3g}")  # fmt: skip
    if s.monitor is not None:
        s.monitor.reset()
    run.runaway_said = False


def write_log(s: Setup, run: Run, window: LogWindow, norms: dict[str, Optional[float]], bar: Any) -> None:
    """One metrics.jsonl record of the window's means, and the progress bar's losses and img/s."""
    t = s.cfg.train
    elapsed = time.perf_counter() - window.start
    img_per_s = window.steps * t.batch_size / max(elapsed, 1e-9)
    record = window.means(s.dist)
    s.files.log({
        "step": run.step,
        "epoch": run.step * s.objective.real_batches_per_step / s.objective.feed.batches_per_epoch,
        "nimg": run.nimg,
        **record,
        **norms,
        "img_per_s": img_per_s,
        # the rates of the last step (after lr decay and rollbacks)
        "g_lr": run.opt_G.param_groups[0]["lr"],
        "d_lr": run.opt_D.param_groups[0]["lr"],
        "time": time.time(),
    })  # fmt: skip
    if bar is not None:  # d_loss and g_loss, or the VAE's loss and reconstruction term, and the images/s
        bar.set_postfix({**{k: f"{record[k]:.3f}" for k in list(record)[:2]}, "img/s": f"{img_per_s:.0f}"},
                        refresh=False)  # fmt: skip
    window.reset()


def maintenance(s: Setup, run: Run) -> None:
    """The cadences of train.*: the sample grid and loss plot, the checkpoints, the in-training eval."""
    t, files, step = s.cfg.train, s.files, run.step
    per_step, per_epoch = s.objective.real_batches_per_step, s.objective.feed.batches_per_epoch
    epoch_end = (step * per_step) // per_epoch != ((step - 1) * per_step) // per_epoch
    if (t.sample_every and step % t.sample_every == 0) or (not t.sample_every and epoch_end):
        s.write_grid(run)
        files.plot()
    if files.main and (step % t.checkpoint_every == 0 or epoch_end):
        files.save_periodic(s.state(run), t.keep_checkpoints, step)
    if files.main and s.evaluator is not None and step % t.eval_every == 0:  # rank 0 measures, keeps best.pt
        value = s.evaluator(s.show(run))
        files.log({"event": "eval", "step": step, "metric": s.evaluator.metric, "value": value})
        if value < run.best:
            run.best = value
            files.save("best.pt", lambda: {**s.state(run), "best": {s.evaluator.metric: value}})
        files.plot()


def finish(s: Setup, run: Run, halt: Halt) -> Path:
    """After the loop: the last log lines, checkpoints and grid; raises TrainingStopped when interrupted."""
    files, t = s.files, s.cfg.train
    signal_name = halt.signal_name or "a signal to another process"
    if halt.interrupted:
        files.log({"event": "interrupted", "step": run.step, "signal": signal_name})
    else:
        if s.dist.enabled:  # the processes must have stayed in lockstep: say so, with the number
            files.log({"event": "ranks", "processes": s.dist.world,
                       "max_param_difference": s.dist.max_difference(run.G, run.D)})  # fmt: skip
        files.log({"event": "end", "step": run.step, "nimg": run.nimg, "seconds": time.perf_counter() - halt.t_start,
                   "train_seconds": run.train_seconds(),
                   **({"stopped_by": "train.time_limit"} if halt.out_of_time else {})})  # fmt: skip
    # the last checkpoints after those lines: a resume cuts the log back to its checkpoint, and keeps them.
    # final.pt is the same state as last.pt: one file under both names (see RunFiles.save_state)
    files.save(["last.pt"] if halt.interrupted else ["last.pt", "final.pt"], lambda: s.state(run))
    s.write_grid(run)
    files.plot()
    if halt.interrupted:
        raise TrainingStopped(
            f"stopped by {signal_name} at step {run.step}/{s.total_steps}; checkpoint saved. "
            f"Resume with: ganforge train --resume {files.run_dir}",
            files.run_dir,
            {"SIGTERM": 143, "SIGHUP": 129}.get(halt.signal_name, 130),  # 128 + the signal's number
        )
    if halt.out_of_time:
        files.say(f"ganforge: train.time_limit ({t.time_limit:g} s) reached at step {run.step}/{s.total_steps}.")
    files.say(f"ganforge: done. Samples: {files.run_dir / 'samples.png'}  Checkpoint: {files.ckpt_dir / 'final.pt'}")
    return files.run_dir


class _CallableModule(types.ModuleType):
    """`ganforge.train` is both this module and the API's function, and importing the module makes it the
    package's attribute: so the module calls train() itself, and `ganforge.train(cfg)` (or `from ganforge
    import train`) works whichever of the two the name holds."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
