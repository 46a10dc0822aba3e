"""Run configuration: nested dataclasses with defaults, YAML presets, dotted overrides, validation.

A config is built in three layers: the dataclass defaults below, then a preset (a YAML file in
`ganforge/configs/` that overrides only what differs), then `--set a.b=value` overrides. Every
key and value is checked before any work starts; `resolve()` later fills in what depends on the
dataset (resolution, channels, the model chosen by `auto`).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

PRESET_DIR = Path(__file__).parent / "configs"
MAX_CONFIG_BYTES = 1_000_000  # a YAML config (the largest preset is about 1 KB); a longer file is refused unread
MAX_SEED = 2**32 - 1  # numpy's seed range; it also keeps the seeds derived from it (seed * 1_000_003 + epoch for
# the data order, seed + k for the latents) within the 64 bits torch.manual_seed takes


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and the valid choices."""


@dataclass
class DataConfig:
    # Dataset name: auto (full MNIST if found or downloadable, else mnist-5k), a registered dataset
    # (`ganforge data --help` lists them: mnist, mnist-5k, fashion-mnist, cifar10, stacked-mnist, and the
    # 2D point mixtures ring8 and grid25), or folder:PATH for a folder of images; for translation also
    # pairs:DIR (paired images) and unpaired:DIR_A,DIR_B (two domains).
    name: str = "auto"
    # Folder searched first for the dataset files (None: $GANFORGE_DATA/<name>, then the user cache).
    root: Optional[str] = None
    # Which part of the dataset to train on.
    split: Literal["train", "test"] = "train"
    # Side length images are resized and centre-cropped to (None: the model's resolution).
    resolution: Optional[int] = None
    # 1 (grayscale) or 3 (RGB); None: the dataset's own (for folders: 1 if every image is grayscale).
    channels: Optional[int] = None
    # Folder datasets: fail on an unreadable image instead of skipping it.
    strict: bool = False
    # Download a missing named dataset with torchvision when online.
    download: bool = True
    # Use at most this many images (None: all). Handy for quick experiments.
    limit: Optional[int] = None


@dataclass
class ModelConfig:
    # Architecture: auto picks the model for the data's size (28 -> dcgan28-classic, 32 -> dcgan32,
    # otherwise dcgan64 with images resized to 64). dcgan28 is the TensorFlow DCGAN tutorial's network
    # (docs/seed.md).
    name: str = "auto"
    # Latent size: z ~ N(0, I) of this many dimensions.
    z_dim: int = 100
    # Base width of G and D; layers use multiples of it (e.g. dcgan28 G: 4x, 2x, 1x; D: 1x, 2x).
    # 32 keeps the quick start fast on a CPU; the seed presets use the papers' 64.
    g_channels: int = 32
    d_channels: int = 32
    # Dropout probability in D (dcgan28, dcgan32 only), as in the seed.
    dropout: float = 0.3
    # Image channels the models make and read (None: the dataset's; set by resolve()).
    channels: Optional[int] = None
    # Translation models: the channels of G's input images (set by resolve() from the paired dataset).
    in_channels: Optional[int] = None
    # Spectral normalisation of every conv/linear layer of D (Miyato et al. 2018).
    spectral_norm: bool = False
    # PacGAN packing (Lin et al. 2018): D judges this many samples at once (2 in the paper); 1 = off.
    pack: int = 1
    # Minibatch standard deviation (Karras et al. 2018): D's last layer also sees how varied the
    # batch is, which makes a collapsed G easy to spot.
    mbstd: bool = False
    # Class-conditional G and D (conditional BN in G, projection D; Miyato & Koyama 2018), trained
    # with the dataset's labels; `ganforge sample --class K` then makes class K.
    conditional: bool = False
    # Number of classes of a conditional model (None: unconditional, or set from the data by resolve()).
    num_classes: Optional[int] = None
    # A disconnected latent space: z's first coordinate picks one of this many fixed random codes that G
    # also reads (0 = off, the usual connected Gaussian). A continuous G of a connected latent must put
    # samples between separated modes (Khayatkhoei et al. 2018); with K codes it need not (a categorical
    # code as in InfoGAN, Chen et al. 2016, without its mutual-information term). Set K above the number
    # of modes expected; z ~ N(0, I) still, so sampling and every command work as before (truncation
    # leaves the code-picking coordinate untruncated).
    latent_codes: int = 0
    # Self-conditioning on K clusters of the training images (0 = off): k-means of the pixels, once before
    # training (ganforge.clusters), gives each image a pseudo-class; G (conditional BN) and D (projection)
    # are conditioned on it as on a class, and G draws its cluster from z with the clusters' shares in the
    # data, so it still samples like an unconditional G (Sage et al. 2018, Logo-GAN; Liu et al. 2020,
    # self-conditioned GANs). Needs no labels; a conditional model's benefit where there are none.
    clusters: int = 0


@dataclass
class LossConfig:
    # Adversarial loss pair on raw logits. non-saturating: G maximises log D(G(z)) (Goodfellow
    # 2014, sec. 3); minimax: the seed's literal objective, G minimises log(1 - D(G(z))).
    # elbo: the VAE baseline's objective (with the VAE models vae28, vae32, vae64; model.name=auto
    # then picks the VAE of the data's size).
    name: str = "non-saturating"
    # elbo only: the decoder's likelihood p(x | z). bernoulli suits MNIST-like data; gaussian uses
    # one shared, optimally calibrated sigma (Rybkin et al. 2021) and suits natural images.
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    # elbo only: weight of the KL term (1 = the ELBO; other values give a beta-VAE, Higgins et al. 2017).
    kl_weight: float = 1.0
    # Translation (pix2pix) only: G's loss is adv_weight x the adversarial loss + l1_weight x the mean
    # |G(x) - y| on [-1, 1] images (the paper's lambda = 100). adv_weight=0 is the paper's L1-only ablation
    # (a plain regression: D is not trained).
    l1_weight: float = 100.0
    adv_weight: float = 1.0
    # CycleGAN only (unpaired data): G's loss is adv_weight x both Gs' adversarial losses + cycle_weight x
    # the cycle-consistency L1 terms |G_ba(G_ab(a)) - a| and |G_ab(G_ba(b)) - b| (the paper's lambda = 10) +
    # identity_weight x cycle_weight x the identity terms |G_ab(b) - b| and |G_ba(a) - a| (the paper's 0.5;
    # 0 when the domains' channels differ). Their adversarial loss is least squares: with loss.name
    # least-squares, adv_weight 2 gives the paper's (D(G(x)) - 1)^2 (ganforge's LSGAN G loss carries Mao
    # et al.'s 1/2); the cyclegan presets set both.
    cycle_weight: float = 10.0
    identity_weight: float = 0.5
    # CycleGAN only: how many earlier fakes each D also sees (Shrivastava et al. 2017's history, the
    # paper's 50); 0 shows D only the current batch.
    pool_size: int = 50


@dataclass
class RegConfig:
    # WGAN-GP gradient penalty weight (Gulrajani et al. 2017 use 10); 0 turns it off. A conditional D is
    # judged at the interpolates with the real images' labels (the fakes' labels are not interpolated).
    gp_weight: float = 0.0
    # R1 penalty weight gamma on real images (Mescheder et al. 2018); 0 turns it off.
    r1_gamma: float = 0.0
    # R2: the same penalty on generated images (Mescheder et al. 2018); R1 + R2 with loss.name=relativistic
    # is R3GAN's objective (Huang et al. 2024, the same gamma for both). 0 turns it off.
    r2_gamma: float = 0.0
    # Apply R1 (and R2) every this many D updates, the weight scaled up by the interval (lazy, StyleGAN2).
    r1_interval: int = 16
    # Mode-seeking term in G's loss (MSGAN, Mao et al. 2019), this weight times 1 / (|G(z1) - G(z2)| /
    # |z1 - z2|) for pairs of latents of the same class (conditional G) or latent code (model.latent_codes):
    # G is rewarded for making different images from different noise; 0 turns it off.
    mode_seeking: float = 0.0
    # DiffAugment policy (Zhao et al. 2020) for small datasets: a comma-separated subset of
    # color,translation,cutout applied to everything D sees; "" turns it off.
    diffaugment: str = ""
    # Top-k training (Sinha et al. 2020): G's loss counts only the fraction k of each fake batch that D
    # rates most real (the rest would pull G towards the nearest mode, which may be the wrong one). k
    # starts at 1 and is multiplied by topk_gamma every epoch, down to this floor (the paper: 0.5 with
    # gamma 0.99 per epoch); 1 turns it off. topk_gamma may be set lower for runs of few epochs. With
    # several processes each keeps the top k of its own share of the batch (not of the global batch).
    topk: float = 1.0
    topk_gamma: float = 0.99


@dataclass
class OptimConfig:
    # Adam for both networks; separate learning rates allow TTUR (Heusel et al. 2017).
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    # Learning-rate schedule. linear: both rates fall linearly to 0 at the run's last step, starting
    # at the fraction decay_start of the run (0 = from the first step, as SNGAN's and BigGAN's CIFAR-10
    # recipes do); the schedule follows train.steps (or epochs), so a time-limited run decays by steps as
    # well, and a resume that changes the run's length moves the schedule to the new length.
    lr_decay: Literal["none", "linear"] = "none"
    decay_start: float = 0.0


@dataclass
class RampConfig:
    # R3GAN-style cosine ramps (Huang et al. 2024, sec. 4: the learning rate, R1/R2's gamma, Adam's beta2
    # and G's EMA move over the start of training): over the first `images` images each value goes from
    # its start to its end along half a cosine, then stays at its end. None: no ramps. A ramp is a function
    # of the images seen, so a resume continues it exactly.
    images: Optional[int] = None
    # Both learning rates end at this fraction of their base rates (R3GAN CIFAR-10: 2e-4 -> 5e-5, 0.25).
    lr_final: Optional[float] = None
    # reg.r1_gamma and reg.r2_gamma end at this fraction of their values (R3GAN: 0.05 -> 0.005, 0.1).
    gamma_final: Optional[float] = None
    # Adam's beta2 ends here, from optim.beta2 (R3GAN: 0.9 -> 0.99).
    beta2_final: Optional[float] = None
    # G's EMA decay starts here and ends at train.ema_beta (R3GAN ramps the EMA's half-life up from 0).
    ema_start: Optional[float] = None


@dataclass
class TrainConfig:
    # Images per step, for both the real and the fake batch.
    batch_size: int = 64
    # D updates per G update (WGAN uses 5), each on a fresh real batch.
    n_critic: int = 1
    # The G step reuses the last D update's fake batch (its latents and G's forward, kept with its
    # graph; D judges it again after its update), as pytorch/examples' DCGAN does: one G forward per
    # step instead of two. false: the G step draws fresh latents (one more G forward). None (auto): true
    # with n_critic = 1, false with n_critic > 1, where D has just fitted that batch over several
    # updates and WGAN-GP's Algorithm 1 draws fresh latents for the G step.
    reuse_fakes: Optional[bool] = None
    # alternating (the project's original description, §3.2): update D, then G against the updated D.
    # simultaneous (the TensorFlow/Keras DCGAN tutorial's train_step): one D forward on the fakes gives
    # both nets their gradients, both step at once; one D forward less per step. Needs n_critic=1, not fp16.
    update: Literal["alternating", "simultaneous"] = "alternating"
    # Keep an exponential moving average of G's weights with this decay (e.g. 0.999); sampling and
    # evaluation then use G_ema. None: no G_ema.
    ema_beta: Optional[float] = None
    # Length of the run in epochs (passes over the dataset); None: use steps.
    epochs: Optional[int] = None
    # Stop after this many seconds of training in this process (None: no limit), saving the run as
    # finished; for comparisons at an equal compute budget. A resumed run gets a fresh limit.
    time_limit: Optional[float] = None
    # Length of the run in optimisation steps (n_critic D updates + one G update), when epochs is None.
    # 5000 steps of 64 = 320k images: about 5 epochs of MNIST.
    steps: int = 5000
    # Seed for weights, data order, latents and dropout: the same seed gives the same run on CPU.
    seed: int = 0
    # auto picks cuda, then mps, then cpu.
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # Arithmetic of the forward passes (weights, gradients' accumulation and Adam stay fp32):
    # fp32; bf16 autocast (fast on CPUs with AVX512-BF16/AMX, and on GPUs for large nets and batches);
    # fp16 autocast with loss scaling (CUDA only). auto = bf16 on CPUs that have it (measured on a
    # 2-core CPU: 1.4-2x the img/s of fp32, the same FID at equal steps), else fp32; on GPUs fp32 with
    # TF32 tensor cores on Ampere and newer (on an H200 bf16 was slower for dcgan32 at batch 64-1024 and
    # resnet32 at 64, faster only for resnet32 at 256: docs/benchmarks.md), fp16 on Volta/Turing, fp32 on
    # older GPUs.
    # Models and batches use the channels_last (NHWC) memory layout, except in fp32 on GPUs.
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "auto"
    # On CUDA GPUs: let fp32 matmuls and convolutions use TF32 tensor cores (10-bit mantissa inputs,
    # fp32 accumulation; Ampere and newer). False keeps full-fp32 arithmetic. cuDNN's autotuner
    # (cudnn.benchmark) is always on there: the shapes of a GAN's steps do not change.
    tf32: bool = True
    # torch.compile G and D for the training steps (checkpoints, sampling and evaluation use the plain
    # modules). Costs compile time at start (and when a mode changes); see docs/benchmarks.md for when
    # it pays.
    compile: bool = False
    # Also write TensorBoard event files (RUN/tensorboard/): the scalars of metrics.jsonl, the sample grids
    # and the in-training eval; needs `pip install 'ganforge[tensorboard]'`. metrics.jsonl stays the record.
    tensorboard: bool = False
    # Several processes (torchrun, or `ganforge train --nproc N`): batch_size is the global batch, split
    # evenly over the processes. sync_bn: BatchNorm statistics over the global batch (SyncBatchNorm;
    # CUDA only), instead of each process's own shard.
    sync_bn: bool = False
    # Write a metrics.jsonl line every this many steps.
    log_every: int = 50
    # Write a fixed-noise sample grid every this many steps (None: at the end of every epoch).
    sample_every: Optional[int] = None
    # Write checkpoints/last.pt every this many steps (and at every epoch end).
    checkpoint_every: int = 1000
    # Also keep the K newest checkpoints of those as checkpoints/step_<step>.pt (older ones are
    # deleted); 0 keeps last.pt only. A damaged last.pt then still leaves recent states to resume from.
    keep_checkpoints: int = 2
    # Number of fixed latents in the sample grids.
    n_samples: int = 64
    # Every this many steps, compute the domain FID of eval_n samples against the dataset's test
    # split, log it to metrics.jsonl and keep checkpoints/best.pt (None: never). Needs a dataset
    # with a shipped domain extractor (mnist, mnist-5k, fashion-mnist, cifar10).
    eval_every: Optional[int] = None
    eval_n: int = 2000


@dataclass
class MonitorConfig:
    # Live health checks every this many steps (None: off): D's accuracy, gradient norms, the
    # diversity of a fixed batch of samples against real data, the class entropy of the samples under
    # the domain classifier (where one exists), NaN/Inf. Losses and weights are checked for NaN/Inf
    # at every step regardless.
    every: Optional[int] = 200
    # What a collapse or divergence event does: warn (log it and go on; a NaN always stops), stop
    # (checkpoint and exit with a report), rollback (restore checkpoints/healthy.pt, the state of the
    # last healthy check, multiply both learning rates by lr_factor and continue).
    on_collapse: Literal["warn", "stop", "rollback"] = "warn"
    # Samples in the fixed batch the checks look at (the real batch has as many).
    n: int = 256
    # Collapse signal: mean pairwise feature distance of the samples below this fraction of the real batch's.
    diversity_threshold: float = 0.35
    # Collapse signal: class entropy of the samples below this fraction of the real batch's.
    entropy_threshold: float = 0.6
    # Consecutive unhealthy checks before a collapse event (one noisy check is not a collapse).
    patience: int = 2
    # No collapse events before this step (an untrained G is not diverse yet); NaN checks still run.
    warmup: int = 500
    # Rollback multiplies the learning rates by this factor...
    lr_factor: float = 0.5
    # ...both of them, or D's only (a D that overpowers G, as with the minimax loss, is the usual
    # cause of collapse; halving both keeps their ratio).
    rollback_lr: Literal["both", "d"] = "both"
    # Give up (stop) after this many rollbacks in one run.
    max_rollbacks: int = 3


RUN_TIME_FORMAT = "%Y%m%d-%H%M%S"  # the timestamp of a default run name


def run_name(dataset: str, model: str, when: datetime.datetime) -> str:
    """The default run name, DATA-MODEL-YYYYMMDD-HHMMSS: `mnist-dcgan28-classic-20261207-101500`
    (a folder dataset counts as `folder`)."""
    return f"{dataset.split(':')[0]}-{model}-{when:{RUN_TIME_FORMAT}}"


@dataclass
class RunConfig:
    # Folder that holds all runs; each run gets runs_dir/<name>/.
    runs_dir: str = "runs"
    # Run name (None: run_name() of the dataset, the model and the start time: DATA-MODEL-YYYYMMDD-HHMMSS).
    name: Optional[str] = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ramp: RampConfig = field(default_factory=RampConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # Preset this config started from (informational).
    preset: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------
# Building a config from dicts, presets and overrides, with type checks.


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting the harmless cases (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{key}: '{value}' is not a valid choice; choose one of {', '.join(map(str, args))}."
                + _suggest(str(value), [str(a) for a in args])
            )
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - every field above has one of these types
        return value
    raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}.")


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    hints = _field_types(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"unknown config key '{full}'; valid keys here: {', '.join(prefix + n for n in names)}."
                + _suggest(key, names)
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a section (mapping), got {value!r}.")
            _apply(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


class _ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load's loader (plain data only, no Python objects), without aliases: `*name` repeats a node,
    and aliases of aliases make a few hundred bytes grow into a billion items ("billion laughs"); a config has
    no use for them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"found the alias *{event.anchor}; ganforge configs do not "
                                              "use YAML aliases (anchors &name and *name): write the value out",
                                              event.start_mark)  # fmt: skip
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """YAML text -> plain data (dicts, lists, str, int, float, bool, None), as yaml.safe_load, without aliases."""
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: no Python objects


def load_yaml_file(path: Path, what: str) -> Any:
    """A YAML config file, refused with a ConfigError when it is larger than MAX_CONFIG_BYTES or not valid YAML."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{what} '{path}' is {size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,} bytes "
                              "(the presets are about 1 KB), so this is not one.")  # fmt: skip
        text = path.read_text(encoding="utf-8")
        return load_yaml(text)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} '{path}': {e}.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} '{path}' is not valid YAML: {e}") from None


def _parse_scalar(text: str) -> Any:
    """`--set` values are YAML scalars: 64 -> int, 2e-4 -> float, true -> bool, null -> None."""
    try:
        value = load_yaml(text) if text.strip() else ""
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as e:  # also bad explicit tags: !!int x
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"--set value {text!r} is not a YAML scalar ({problem}); write a number, true/false, "
            "null or plain text, quoting the whole item in the shell if it has spaces."
        ) from None
    if isinstance(value, str):
        # YAML reads "2e-4" as a string (it wants "2.0e-4"); accept the usual float spellings.
        try:
            return float(value) if any(ch in value for ch in "eE.") else value
        except ValueError:
            return value
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ["train.batch_size=64", "loss.name=minimax"] into a nested dict."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"--set '{item}': expected KEY=VALUE, e.g. --set train.batch_size=64."
            )
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(
                f"--set '{item}': the key '{key}' is not a dotted name like train.seed."
            )
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set '{item}': '{part}' is both a value and a section.")
        node[parts[-1]] = _parse_scalar(text)
    return nested


def _preset_comments(path: Path) -> list[str]:
    """The comment lines a preset file opens with, without their `#`: its description."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def list_presets() -> dict[str, str]:
    """Preset name -> its first comment line: one sentence on what it is for."""
    return {path.stem: (_preset_comments(path) or [""])[0] for path in sorted(PRESET_DIR.glob("*.yaml"))}


def preset_description(name: str) -> str:
    """A preset's whole description (its opening comment lines): the sentence `list_presets` shows, then
    the details, as one paragraph each."""
    load_preset(name)  # an unknown name fails here, listing the presets
    first, *rest = _preset_comments(PRESET_DIR / f"{name}.yaml") or [""]
    return first + ("\n\n" + " ".join(rest) if rest else "")


def preset_changes(name: str) -> list[tuple[str, Any, Any]]:
    """(dotted key, the preset's value, the default) for every value a preset sets, in the file's order;
    both values as a resolved config holds them (2e-4 as 0.0002, 1 as 1.0 for a float field)."""
    values, defaults = load_preset(name), Config()
    changes: list[tuple[str, Any, Any]] = []

    def walk(obj: Any, section: dict[str, Any], prefix: str) -> None:
        for key, value in section.items():
            current = getattr(obj, key)
            if dataclasses.is_dataclass(current):
                walk(current, value, f"{prefix}{key}.")
            else:
                changes.append((f"{prefix}{key}", _coerce(value, _field_types(type(obj))[key], prefix + key), current))

    _apply(Config(), values)  # wrong keys and types fail as they do in a run
    walk(defaults, values, "")
    return changes


def load_config_file(path: str | Path) -> dict[str, Any]:
    """`ganforge train --config FILE`: a run's config.yaml or the user's own YAML of config sections."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--config: '{path}' is not a file (a run's config.yaml, or YAML of config sections).")
    values = load_yaml_file(path, "config file") or {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (data:, model:, ...), "
                          f"not {type(values).__name__}.")  # fmt: skip
    return values


def load_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    # a preset is a name, not a path: "../x" would read any YAML file on the machine
    if not path.is_file() or Path(name).name != name or name.startswith("."):
        names = list(list_presets())
        raise ConfigError(
            f"unknown preset '{name}'; available presets: {', '.join(names)}."
            + _suggest(name, names)
        )
    values = load_yaml_file(path, "preset") or {}
    if not isinstance(values, dict):
        raise ConfigError(f"preset '{path}' must hold a mapping of sections (data:, model:, ...), not {type(values).__name__}.")
    return values


def from_dict(values: dict[str, Any]) -> Config:
    cfg = Config()
    _apply(cfg, values)
    validate(cfg)
    return cfg


def build_config(
    preset: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    base: Optional[dict[str, Any]] = None,
) -> Config:
    """Defaults <- base (e.g. a resumed run's config) <- preset <- overrides, then validate."""
    cfg = Config()
    if base:
        _apply(cfg, base)
    if preset:
        _apply(cfg, load_preset(preset))
        cfg.preset = preset
    if overrides:
        _apply(cfg, overrides)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------
# Validation: impossible values fail here, before any data is read.


def _refuse_unconditional_model(name: str, key: str, says: str, resolution: Optional[int] = None) -> None:
    """ConfigError when model `name` has no conditional variant, naming the ones that do (of that
    `resolution` when given); nothing for a name that is not a model (`auto` before resolve())."""
    from ganforge.models import MODELS

    if name not in MODELS or MODELS[name].conditional:
        return
    choices = [n for n, spec in MODELS.items() if spec.conditional and resolution in (None, spec.resolution)]
    raise ConfigError(f"{key}: {name} {says}; "
                      + (f"use one of {', '.join(choices)}." if choices else "no model for this data has one."))  # fmt: skip


def validate(cfg: Config) -> None:
    """Refuse a config that cannot run, saying which key is wrong and what it accepts (first problem found)."""
    _check_choices(cfg)
    _check_model_and_optim(cfg)
    _check_conditioning(cfg)
    _check_monitor(cfg)
    _check_regularizers(cfg)
    _check_train(cfg)
    _check_ramp(cfg)


def _check_ramp(cfg: Config) -> None:
    r = cfg.ramp
    finals = {"ramp.lr_final": r.lr_final, "ramp.gamma_final": r.gamma_final, "ramp.beta2_final": r.beta2_final,
              "ramp.ema_start": r.ema_start}  # fmt: skip
    if r.images is None:
        given = [k for k, v in finals.items() if v is not None]
        if given:
            raise ConfigError(f"{given[0]}: is set but ramp.images is not; say over how many images the ramps run "
                              "(e.g. ramp.images=2000000).")  # fmt: skip
        return
    if r.images <= 0:
        raise ConfigError(f"ramp.images: must be greater than zero, got {r.images}.")
    if r.lr_final is not None and r.lr_final <= 0:
        raise ConfigError(f"ramp.lr_final: a fraction of the base rates, greater than zero; got {r.lr_final}.")
    _positive("ramp.gamma_final", r.gamma_final, allow_zero=True)
    for key in ("ramp.beta2_final", "ramp.ema_start"):
        v = finals[key]
        if v is not None and not 0 <= v < 1:
            raise ConfigError(f"{key}: must be in [0, 1), got {v}.")
    if r.ema_start is not None and cfg.train.ema_beta is None:
        raise ConfigError("ramp.ema_start: the run keeps no G EMA; set train.ema_beta (the ramp's end) too.")


def _positive(key: str, value: Any, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        need = "zero or more" if allow_zero else "greater than zero"
        raise ConfigError(f"{key}: must be {need}, got {value}.")


def _check_choices(cfg: Config) -> None:
    """The named choices (dataset, model, loss) exist and fit together: sizes, points or images, family."""
    from ganforge.data import DATASETS
    from ganforge.losses import LOSSES
    from ganforge.models import MODELS

    data_name = cfg.data.name
    if not (data_name == "auto" or data_name in DATASETS or data_name.startswith(("folder:", "pairs:", "unpaired:"))):
        choices = ["auto", *DATASETS, "folder:PATH", "pairs:DIR", "unpaired:DIR_A,DIR_B"]
        raise ConfigError(
            f"data.name: unknown dataset '{data_name}'; choose one of {', '.join(choices)}."
            + _suggest(data_name, choices)
        )
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels: must be 1 or 3, got {cfg.data.channels}.")
    _positive("data.resolution", cfg.data.resolution)
    _positive("data.limit", cfg.data.limit)
    if cfg.model.name != "auto" and cfg.model.name not in MODELS:
        choices = ["auto", *MODELS]
        raise ConfigError(
            f"model.name: unknown model '{cfg.model.name}'; choose one of {', '.join(choices)}."
            + _suggest(cfg.model.name, choices)
        )
    from ganforge.losses import ELBO

    family = model_family(cfg)
    if cfg.model.name == "auto" and cfg.data.resolution is not None:
        from ganforge.models import model_for_resolution

        model_for_resolution(cfg.data.resolution, family)  # raises when no model makes that size
    if cfg.model.name in MODELS and cfg.data.resolution not in (
        None,
        MODELS[cfg.model.name].resolution,
    ):
        spec = MODELS[cfg.model.name]
        raise ConfigError(
            f"data.resolution: {cfg.model.name} makes {spec.resolution}x{spec.resolution} images, "
            f"not {cfg.data.resolution}; drop data.resolution or pick a model of that size."
        )
    point_model = cfg.model.name in MODELS and MODELS[cfg.model.name].resolution == 0
    point_data = data_name in DATASETS and DATASETS[data_name].resolution == 0
    if point_model and not point_data:
        raise ConfigError(
            f"model.name: {cfg.model.name} is for 2D point data (ring8, grid25), but '{data_name}' holds images."
        )
    if point_data and cfg.model.name in MODELS and not point_model:
        raise ConfigError(
            f"model.name: '{data_name}' holds 2D points, not images; use model.name=mlp (or auto)."
        )
    if point_data and cfg.loss.name == "elbo":
        raise ConfigError(f"loss.name: the VAE baseline is for images; '{data_name}' holds 2D points.")
    if point_data and cfg.reg.diffaugment:
        raise ConfigError("reg.diffaugment: DiffAugment transforms images; it does not apply to 2D point data.")
    if cfg.loss.name not in (*LOSSES, ELBO):
        raise ConfigError(
            f"loss.name: unknown loss '{cfg.loss.name}'; choose one of {', '.join(LOSSES)} (GANs) or {ELBO} (VAEs)."
            + _suggest(cfg.loss.name, [*LOSSES, ELBO])
        )
    _validate_family(cfg, family)


def _check_model_and_optim(cfg: Config) -> None:
    _positive("model.z_dim", cfg.model.z_dim)
    _positive("model.g_channels", cfg.model.g_channels)
    _positive("model.d_channels", cfg.model.d_channels)
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {cfg.model.dropout}.")
    _positive("optim.g_lr", cfg.optim.g_lr)
    _positive("optim.d_lr", cfg.optim.d_lr)
    for key in ("beta1", "beta2"):
        value = getattr(cfg.optim, key)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"optim.{key}: must be in [0, 1), got {value}.")
    if cfg.optim.decay_start and cfg.optim.lr_decay == "none":
        raise ConfigError("optim.decay_start: it only applies with a schedule; set optim.lr_decay=linear or drop it.")
    if not 0.0 <= cfg.optim.decay_start < 1.0:
        raise ConfigError(f"optim.decay_start: must be in [0, 1) (a fraction of the run), got {cfg.optim.decay_start}.")
    _positive("train.batch_size", cfg.train.batch_size)
    _positive("train.n_critic", cfg.train.n_critic)
    if cfg.train.update == "simultaneous" and cfg.train.n_critic != 1:
        raise ConfigError(
            f"train.update: the simultaneous update makes one D update per G update; set train.n_critic=1 "
            f"(got {cfg.train.n_critic}) or use train.update=alternating."
        )


def _check_conditioning(cfg: Config) -> None:
    """Packing, class conditioning, latent codes and clusters: each valid, and the ones that clash refused."""
    from ganforge.losses import ELBO

    _positive("model.pack", cfg.model.pack)
    if cfg.model.conditional and cfg.model.pack > 1:
        raise ConfigError(
            "model.pack: PacGAN packing mixes samples of different classes, so it does not combine with "
            "model.conditional; use one of them."
        )
    if cfg.model.conditional:
        _refuse_unconditional_model(cfg.model.name, "model.conditional", "has no class-conditional variant")
    _positive("model.num_classes", cfg.model.num_classes)
    _positive("model.latent_codes", cfg.model.latent_codes, allow_zero=True)
    if cfg.model.latent_codes == 1:
        raise ConfigError("model.latent_codes: 1 code is the plain latent; use 0 (off) or at least 2.")
    if cfg.model.latent_codes and cfg.loss.name == ELBO:
        raise ConfigError("model.latent_codes: the VAE's latent is its encoder's Gaussian; latent codes are for GANs.")
    _positive("model.clusters", cfg.model.clusters, allow_zero=True)
    if cfg.model.clusters:
        if cfg.model.clusters == 1:
            raise ConfigError("model.clusters: 1 cluster is the unconditional model; use 0 (off) or at least 2.")
        clash = [key for key, on in (("model.conditional", cfg.model.conditional), ("model.pack > 1", cfg.model.pack > 1),
                                     ("model.latent_codes", cfg.model.latent_codes),
                                     ("an elbo loss (VAE)", cfg.loss.name == ELBO)) if on]  # fmt: skip
        if clash:
            hint = " (set model.conditional=false: clusters replace the labels)" if cfg.model.conditional else ""
            raise ConfigError(f"model.clusters: self-conditioning on clusters does not combine with {clash[0]}; "
                              f"use one of them{hint}.")  # fmt: skip
        _refuse_unconditional_model(cfg.model.name, "model.clusters", "has no conditional variant to condition on clusters")
    if cfg.train.batch_size % cfg.model.pack:
        raise ConfigError(
            f"model.pack: the batch ({cfg.train.batch_size}) must be a multiple of the pack size ({cfg.model.pack})."
        )


def _check_monitor(cfg: Config) -> None:
    mon = cfg.monitor
    _positive("monitor.every", mon.every)
    _positive("monitor.n", mon.n)
    if mon.n < 2:
        raise ConfigError(f"monitor.n: must be at least 2, got {mon.n}.")
    _positive("monitor.patience", mon.patience)
    _positive("monitor.warmup", mon.warmup, allow_zero=True)
    _positive("monitor.max_rollbacks", mon.max_rollbacks, allow_zero=True)
    for key in ("diversity_threshold", "entropy_threshold"):
        if not 0.0 <= getattr(mon, key) <= 1.0:
            raise ConfigError(f"monitor.{key}: must be in [0, 1], got {getattr(mon, key)}.")
    if not 0.0 < mon.lr_factor <= 1.0:
        raise ConfigError(f"monitor.lr_factor: must be in (0, 1], got {mon.lr_factor}.")


def _check_regularizers(cfg: Config) -> None:
    _positive("reg.gp_weight", cfg.reg.gp_weight, allow_zero=True)
    _positive("reg.r1_gamma", cfg.reg.r1_gamma, allow_zero=True)
    _positive("reg.r2_gamma", cfg.reg.r2_gamma, allow_zero=True)
    _positive("reg.r1_interval", cfg.reg.r1_interval)
    _positive("reg.mode_seeking", cfg.reg.mode_seeking, allow_zero=True)
    for key in ("topk", "topk_gamma"):
        if not 0.0 < getattr(cfg.reg, key) <= 1.0:
            raise ConfigError(f"reg.{key}: must be in (0, 1] (e.g. 0.5; 1 turns top-k training off), "
                              f"got {getattr(cfg.reg, key)}.")  # fmt: skip
    if cfg.reg.topk < 1.0 and cfg.train.update == "simultaneous":
        raise ConfigError("reg.topk: top-k training selects the fakes of the G step of the alternating update; "
                          "use train.update=alternating or set reg.topk=1.")  # fmt: skip
    if cfg.reg.mode_seeking and cfg.train.update == "simultaneous":
        raise ConfigError("reg.mode_seeking: the mode-seeking term is added in the G step of the alternating "
                          "update; use train.update=alternating or set reg.mode_seeking=0.")  # fmt: skip
    from ganforge.augment import POLICIES

    bad = [p for p in cfg.reg.diffaugment.split(",") if p.strip() and p.strip() not in POLICIES]
    if bad:
        raise ConfigError(
            f"reg.diffaugment: unknown transform(s) {', '.join(bad)}; use a comma-separated subset of "
            f"{','.join(POLICIES)}." + _suggest(bad[0].strip(), list(POLICIES))
        )


def _check_train(cfg: Config) -> None:
    """The EMA, the run's length and its cadences, and in-training evaluation."""
    from ganforge.metrics.features import EXTRACTOR_FOR_DATASET

    data_name = cfg.data.name
    if cfg.train.ema_beta is not None and not 0.0 <= cfg.train.ema_beta <= 1.0:
        raise ConfigError(
            f"train.ema_beta: must be in [0, 1] (e.g. 0.999) or null, got {cfg.train.ema_beta}."
        )
    _positive("train.epochs", cfg.train.epochs)
    _positive("train.steps", cfg.train.steps)
    _positive("train.time_limit", cfg.train.time_limit)
    _positive("train.log_every", cfg.train.log_every)
    _positive("train.sample_every", cfg.train.sample_every)
    _positive("train.checkpoint_every", cfg.train.checkpoint_every)
    _positive("train.keep_checkpoints", cfg.train.keep_checkpoints, allow_zero=True)
    _positive("train.n_samples", cfg.train.n_samples)
    _positive("train.eval_every", cfg.train.eval_every)
    _positive("train.eval_n", cfg.train.eval_n)
    if not 0 <= cfg.train.seed <= MAX_SEED:
        raise ConfigError(f"train.seed: must be a whole number from 0 to {MAX_SEED} (2**32 - 1), got {cfg.train.seed}.")
    if cfg.train.eval_n < 2:
        raise ConfigError(f"train.eval_n: must be at least 2, got {cfg.train.eval_n}.")
    if cfg.train.eval_every is not None and not (
        data_name == "auto" or data_name in EXTRACTOR_FOR_DATASET
    ):
        raise ConfigError(
            f"train.eval_every: no domain extractor for dataset '{data_name}'; in-training FID is available for "
            f"{', '.join(EXTRACTOR_FOR_DATASET)}. Evaluate afterwards with `ganforge eval --extractor inception`."
        )


TRANSLATION_FAMILIES = ("translation", "cyclegan")  # the model families whose G translates images, G(x) -> y
FAMILY_OF_KIND = {"paired": "translation", "unpaired": "cyclegan"}  # a translation dataset's kind -> its models


def model_family(cfg: Config) -> str:
    """What the config trains: "vae" (loss.name=elbo), "translation" (pix2pix: a paired dataset, or its
    model), "cyclegan" (an unpaired dataset, or its model), else "gan"."""
    from ganforge.data import translation_kind
    from ganforge.models import MODELS

    if cfg.loss.name == "elbo":
        return "vae"
    kind = translation_kind(cfg.data.name)
    model = MODELS.get(cfg.model.name)
    if kind is not None:
        return FAMILY_OF_KIND[kind]
    return model.family if model is not None and model.family in TRANSLATION_FAMILIES else "gan"


def _validate_translation(cfg: Config) -> None:
    """A pix2pix model on a paired dataset or a CycleGAN one on an unpaired dataset, and none of the
    settings that assume G(z)."""
    from ganforge.data import DATASETS, translation_kind
    from ganforge.models import MODELS

    spec = MODELS.get(cfg.model.name)
    kind = translation_kind(cfg.data.name)
    family = FAMILY_OF_KIND.get(kind)
    if kind is not None and spec is not None and spec.family != family:  # (auto picks the dataset's kind of model)
        models = ", ".join(n for n, s in MODELS.items() if s.family == family)
        raise ConfigError(f"model.name: '{cfg.data.name}' is {'an unpaired' if kind == 'unpaired' else 'a paired'} "
                          f"translation dataset; use a translation model for it ({models}) or auto, not "
                          f"{cfg.model.name}.")  # fmt: skip
    if kind is None:  # a translation model (the only way here without translation data) on other data
        wanted = next(k for k, f in FAMILY_OF_KIND.items() if f == spec.family)
        of_kind = [n for n in DATASETS if translation_kind(n) == wanted]
        form = "pairs:DIR" if wanted == "paired" else "unpaired:DIR_A,DIR_B"
        raise ConfigError(f"data.name: {cfg.model.name} translates {wanted} images; use {'an' if wanted == 'unpaired' else 'a'} "
                          f"{wanted} dataset ({', '.join(of_kind)}, or your own as {form}).")  # fmt: skip
    latent = {
        "model.conditional": cfg.model.conditional,
        "model.pack": cfg.model.pack != 1,
        "model.latent_codes": cfg.model.latent_codes != 0,
        "model.clusters": cfg.model.clusters != 0,
        "model.mbstd": cfg.model.mbstd,
        "reg.mode_seeking": cfg.reg.mode_seeking != 0,
        "reg.topk": cfg.reg.topk != 1.0,
        "reg.diffaugment": bool(cfg.reg.diffaugment),  # it would have to move input and output alike
        "train.ema_beta": cfg.train.ema_beta is not None,  # its BN recalibration samples latents
        "train.update": cfg.train.update != "alternating",
        "train.n_critic": cfg.train.n_critic != 1,
        "train.eval_every": bool(cfg.train.eval_every),  # its FID samples G from latents; `ganforge eval` after
    }
    bad = [key for key, is_set in latent.items() if is_set]
    if bad:
        raise ConfigError(f"{bad[0]}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not available for "
                          "image translation (pix2pix, CycleGAN) yet; drop them.")  # fmt: skip
    for key in ("l1_weight", "adv_weight", "cycle_weight", "identity_weight"):
        value = getattr(cfg.loss, key)
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"loss.{key}: must be zero or more, got {value}.")
    if cfg.loss.pool_size < 0:
        raise ConfigError(f"loss.pool_size: must be zero or more, got {cfg.loss.pool_size}.")
    if family == "translation" and cfg.loss.l1_weight == 0 and cfg.loss.adv_weight == 0:
        raise ConfigError("loss.l1_weight, loss.adv_weight: both are 0, so G has nothing to learn from; keep one.")
    if family == "cyclegan" and cfg.loss.adv_weight == 0:
        raise ConfigError("loss.adv_weight: CycleGAN without its adversarial terms only learns to copy; keep it above 0.")


def _validate_family(cfg: Config, family: str) -> None:
    """VAE models go with loss.name=elbo and none of the adversarial settings; GANs the other way round;
    translation models with paired datasets."""
    from ganforge.models import MODELS

    if family in TRANSLATION_FAMILIES:
        return _validate_translation(cfg)
    spec = MODELS.get(cfg.model.name)
    if spec is not None and spec.family in TRANSLATION_FAMILIES:
        return _validate_translation(cfg)  # (its message: a translation model needs paired data)
    if spec is not None and spec.family != family:
        if spec.family == "vae":
            raise ConfigError(
                f"loss.name: {cfg.model.name} is a VAE, trained on the ELBO; set loss.name=elbo "
                "(or start from --preset mnist-vae / cifar10-vae)."
            )
        vaes = ", ".join(name for name, s in MODELS.items() if s.family == "vae")
        raise ConfigError(
            f"loss.name: elbo trains a VAE, but {cfg.model.name} is a GAN; use model.name={vaes.split(',')[0]} "
            f"or auto (VAEs: {vaes}), or an adversarial loss."
        )
    if family == "gan":
        return
    defaults = Config()
    adversarial = {
        "reg.gp_weight": cfg.reg.gp_weight != 0,
        "reg.r1_gamma": cfg.reg.r1_gamma != 0,
        "reg.r2_gamma": cfg.reg.r2_gamma != 0,
        "reg.diffaugment": bool(cfg.reg.diffaugment),
        "reg.mode_seeking": cfg.reg.mode_seeking != 0,
        "reg.topk": cfg.reg.topk != 1.0,
        "model.spectral_norm": cfg.model.spectral_norm,
        "model.pack": cfg.model.pack != 1,
        "model.mbstd": cfg.model.mbstd,
        "train.n_critic": cfg.train.n_critic != defaults.train.n_critic,
    }
    bad = [key for key, is_set in adversarial.items() if is_set]
    if bad:
        raise ConfigError(
            f"{bad[0]}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} for the adversarial game and "
            "do not apply to a VAE (loss.name=elbo); drop them."
        )
    if not (cfg.loss.kl_weight > 0 and math.isfinite(cfg.loss.kl_weight)):
        raise ConfigError(f"loss.kl_weight: must be greater than zero, got {cfg.loss.kl_weight}.")


def planned_resolution(cfg: Config) -> int:
    """The side length the data is loaded at: the model's, else data.resolution, else native."""
    from ganforge.data import DATASETS, TRANSLATION_RESOLUTION
    from ganforge.models import MODELS

    if cfg.model.name in MODELS:
        return MODELS[cfg.model.name].resolution
    if cfg.data.resolution:
        return cfg.data.resolution
    if cfg.data.name in DATASETS:
        return DATASETS[cfg.data.name].resolution
    if cfg.data.name.startswith(("pairs:", "unpaired:")):
        return TRANSLATION_RESOLUTION  # 32: the translation models exist for 28 and 32 only
    return 28 if cfg.data.name == "auto" else 64  # auto is MNIST; folders default to 64x64


def resolve(
    cfg: Config, dataset_name: str, channels: int, n_images: int, points: bool = False,
    num_classes: Optional[int] = None, in_channels: Optional[int] = None,
) -> Config:  # fmt: skip
    """Fill in what depends on the loaded dataset; returns a new Config (the input is untouched).

    `points`: the data are vectors [N, channels] (2D toy data), not images. `in_channels`: a translation
    dataset's input (domain A) channels.
    """
    from ganforge.models import model_for_resolution

    resolution = 0 if points else planned_resolution(cfg)
    cfg = from_dict(cfg.to_dict())  # a deep copy
    cfg.data.name = dataset_name
    family = model_family(cfg)
    if cfg.model.name == "auto":
        cfg.model.name = model_for_resolution(resolution, family)
    if family in TRANSLATION_FAMILIES:  # the monitor's diversity and class checks sample G from latents
        cfg.monitor.every = None
        cfg.model.in_channels = in_channels
        if family == "cyclegan" and in_channels != channels:
            cfg.loss.identity_weight = 0.0  # G_ab(b) cannot be compared with b: say so in the config written
    # validate() already refused point data with an image model (and the reverse) and DiffAugment
    if cfg.train.reuse_fakes is None:
        cfg.train.reuse_fakes = cfg.train.n_critic == 1
    cfg.data.resolution = resolution or None
    cfg.data.channels = None if points else channels
    cfg.model.channels = channels
    if cfg.model.conditional:
        cfg.model.num_classes = num_classes
    if cfg.train.batch_size > n_images:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} is larger than the dataset "
            f"({n_images} images in '{dataset_name}'); use at most {n_images}."
        )
    if cfg.model.clusters > n_images:
        raise ConfigError(
            f"model.clusters: {cfg.model.clusters} clusters of {n_images} images in '{dataset_name}' leave some "
            f"empty; use at most {n_images} (10 is a good start: more clusters narrow the variety within each)."
        )
    if cfg.model.clusters:  # model.name=auto is known only now
        _refuse_unconditional_model(cfg.model.name, "model.clusters", "has no conditional variant to condition on "
                                    "clusters", resolution)  # fmt: skip
    if cfg.train.batch_size * cfg.train.n_critic > n_images:
        raise ConfigError(
            f"train.batch_size x train.n_critic = {cfg.train.batch_size * cfg.train.n_critic} real images per step, "
            f"more than the dataset holds ({n_images} in '{dataset_name}'); lower one of them."
        )
    return cfg
