"""The objectives the training loop can run, and the inputs their steps draw.

An objective is what train.py's loop asks for one training iteration: it takes the run's live state
(nets, optimizers, precision, step) and returns that iteration's statistics. The loop owns everything
else (learning rates, EMA, health checks, logs, grids, checkpoints), the same for every objective.

    GANObjective   the adversarial game: n_critic D updates then one G update (seed section 3.2), or
                   both at once (train.update=simultaneous); losses, penalties, DiffAugment, top-k,
                   mode seeking as configured
    VAEObjective   the VAE baseline: the negative ELBO, encoder in D's place and decoder in G's
    TranslationObjective  pix2pix: G(x) -> y judged by a PatchGAN D(y, x), plus an L1 term to the target
    CycleGANObjective  CycleGAN: G_ab and G_ba judged by D_b and D_a on unpaired domains, plus cycle and
                   identity terms; each D sees a history pool of fakes

A new objective supplies the same few members: `feed`, `nets`, `norm_keys`,
`real_batches_per_step`, `images_per_step`, `step(run)`, `grid(G, device)`, `extra_state()` and
`load_state(saved)` (what extra_state put into a checkpoint, back into the objective).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol

import torch
import torch.nn as nn

from ganforge.data import to_float
from ganforge.distributed import Dist
from ganforge.draws import Draws
from ganforge.losses import LossPair
from ganforge.models import LatentCodes
from ganforge.steps import (
    HistoryPool,
    cycle_step,
    d_step,
    g_step,
    make_penalty,
    simultaneous_step,
    topk_keep,
    translation_g_step,
    vae_step,
)

if TYPE_CHECKING:
    from ganforge.train import Run


@dataclass
class StepOut:
    """What one training iteration reports: its statistics (averaged over the log window and logged,
    in this order) and, for the health monitor, D's last logits on the reals and the fakes."""

    stats: dict[str, torch.Tensor]
    real_logits: Optional[torch.Tensor] = None  # [N]
    fake_logits: Optional[torch.Tensor] = None  # [N]


class Objective(Protocol):
    feed: Feed  # its real batches (the loop reads batches_per_epoch for epochs and cadences)
    nets: tuple[str, str]  # what D's and G's places are called in messages: ("D", "G"), ("encoder", "decoder")
    norm_keys: tuple[str, str]  # the log's keys of their gradient norms
    real_batches_per_step: int  # real batches one step consumes (n_critic for the alternating GAN)
    images_per_step: int  # real images one step consumes, over all processes

    def step(self, run: Run) -> StepOut: ...

    def grid(self, G: nn.Module, device: torch.device) -> torch.Tensor: ...

    def extra_state(self) -> dict[str, Any]: ...

    def load_state(self, saved: dict[str, Any]) -> None: ...


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch: a function of (seed, epoch) only, so a resumed run sees the same."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


@dataclass
class Feed:
    """The inputs of a run's steps: its real batches in their fixed order, and latents and labels drawn
    from the run's saved generator `noise`. Every draw is made for the global batch and this process
    takes its shard (Dist.shard), so that N processes see what one process with the global batch sees."""

    images: torch.Tensor  # uint8 [N, C, H, W] on the device (float [N, 2] for points)
    labels: torch.Tensor  # [N] the classes (or model.clusters' pseudo-classes) D and the reals carry
    batch: int  # the global batch
    seed: int
    z_dim: int
    nc: int  # classes of D and the real batches (0: none)
    noise: torch.Generator
    dist: Dist
    device: torch.device
    memory_format: torch.memory_format
    G: nn.Module  # the plain G: its cluster_of and same_code
    clusters: bool = False  # model.clusters: G picks its class from z
    # a translation dataset's domain A: uint8 [M, C_in, H, W]; paired: the input of each image (M = N)
    inputs: Optional[torch.Tensor] = None
    # each image set's current epoch order, (epoch, order), by the seed it is drawn with
    _orders: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.images) // self.batch  # the incomplete last batch of an epoch is dropped

    def _indices(self, b: int, n: Optional[int] = None, seed: Optional[int] = None) -> torch.Tensor:
        """The b-th batch of the run, this rank's share, of the `n` images (default: `images`) drawn in
        the epoch orders of `seed` (default: the run's)."""
        n, seed = (len(self.images) if n is None else n), (self.seed if seed is None else seed)
        epoch, i = divmod(b, n // self.batch)  # the incomplete last batch of an epoch is dropped
        if self._orders.get(seed, (-1,))[0] != epoch:
            self._orders[seed] = (epoch, epoch_order(seed, epoch, n).to(self.device))
        return self.dist.shard(self._orders[seed][1][i * self.batch : (i + 1) * self.batch])

    def _float(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float(images)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x  # as the models' below fp32

    def real_batch(self, b: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The b-th real batch of the run, this rank's share (and its labels, where D takes them)."""
        idx = self._indices(b)
        return self._float(self.images[idx]), (self.labels[idx] if self.nc else None)

    def pair_batch(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A paired dataset's b-th batch, this rank's share: (inputs, their target images), in [-1, 1]."""
        idx = self._indices(b)
        return self._float(self.inputs[idx]), self._float(self.images[idx])

    def domain_batches(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """An unpaired dataset's b-th batch, this rank's share: (domain A images, domain B images) in
        [-1, 1], each from its own order (A's epochs are its own length; the run's epoch is B's)."""
        idx_a = self._indices(b, len(self.inputs), self.seed + 7)
        return self._float(self.inputs[idx_a]), self._float(self.images[self._indices(b)])

    def draw_z(self) -> torch.Tensor:
        """This rank's latents [batch / processes, z_dim]."""
        return self.dist.shard(torch.randn(self.batch, self.z_dim, generator=self.noise)).to(self.device)

    def draw_c(self, z: torch.Tensor) -> Optional[torch.Tensor]:
        """This rank's class labels for the fakes of latents z: drawn uniformly for a conditional model,
        the cluster G picks for z with model.clusters; None for an unconditional one."""
        if self.clusters:
            return self.G.cluster_of(z)
        if not self.nc:
            return None
        return self.dist.shard(torch.randint(self.nc, (self.batch,), generator=self.noise)).to(self.device)

    def pair_of(self, z: torch.Tensor) -> torch.Tensor:
        """Mode seeking's second latents: fresh noise with z's latent code (the class is shared by passing
        the same labels)."""
        fresh = self.draw_z()
        return self.G.same_code(z, fresh) if isinstance(self.G, LatentCodes) else fresh


class LatentGrid:
    """The fixed latents (and labels: column k shows class k) of a run's sample grids."""

    def __init__(self, n: int, z_dim: int, seed: int, nc: int):
        self.z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed + 2))
        self.c = torch.arange(n) % nc if nc else None

    def grid(self, G: nn.Module, device: torch.device) -> torch.Tensor:
        """G's images of the fixed latents, [n, C, H, W] float on the CPU (G in eval mode meanwhile)."""
        G.eval()
        with torch.no_grad():
            fake = G(self.z.to(device), None if self.c is None else self.c.to(device))
        return fake.float().cpu()


def d_means(loss: LossPair, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """D's mean output on the reals and the fakes, for the log: a probability for probabilistic losses
    (d_real, d_fake), the raw score for critics (d_real_score, d_fake_score)."""
    if loss.probabilistic:
        return {"d_real": torch.sigmoid(real_logits).mean(), "d_fake": torch.sigmoid(fake_logits).mean()}
    return {"d_real_score": real_logits.float().mean(), "d_fake_score": fake_logits.float().mean()}


@dataclass
class Regularizers:
    """The D penalties and G-side terms of reg.* (the numbers only; see config.RegConfig)."""

    gp_weight: float = 0.0
    r1_gamma: float = 0.0
    r2_gamma: float = 0.0
    r1_interval: int = 16
    mode_seeking: float = 0.0
    topk: float = 1.0
    topk_gamma: float = 0.99


class GANObjective:
    """The adversarial game: alternating (n_critic D updates on fresh real batches, then one G update
    against the updated D) or simultaneous (one forward of both serves both updates)."""

    nets = ("D", "G")
    norm_keys = ("d_grad_norm", "g_grad_norm")

    def __init__(self, feed: Feed, loss: LossPair, reg: Regularizers, grid: LatentGrid,
                 augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, n_critic: int = 1,
                 reuse_fakes: bool = True, simultaneous: bool = False, pack: int = 1,
                 clusters: int = 0, cluster_labels: Optional[torch.Tensor] = None):  # fmt: skip
        self.feed, self.loss, self.reg, self.augment, self.grid = feed, loss, reg, augment, grid.grid
        self.n_critic, self.reuse_fakes, self.simultaneous, self.pack = n_critic, reuse_fakes, simultaneous, pack
        self.clusters, self.cluster_labels = clusters, cluster_labels
        self.draws = Draws(feed.noise, feed.dist.world, feed.dist.rank)  # GP's: for the global batch
        self.real_batches_per_step = n_critic
        self.images_per_step = feed.batch * n_critic

    def penalty(self, D: nn.Module, d_iter: int) -> Optional[Callable[..., torch.Tensor]]:
        r = self.reg
        return make_penalty(D, d_iter, self.draws, r.gp_weight, r.r1_gamma, r.r2_gamma, r.r1_interval,
                            self.augment, self.pack)  # fmt: skip

    def step(self, run: Run) -> StepOut:
        if self.simultaneous:
            return self._simultaneous(run)
        feed, G, D, precision = self.feed, run.G_run, run.D_run, run.precision
        fakes = None  # the last D update's fakes, with G's graph, when the G step reuses them
        for k in range(self.n_critic):  # D phase
            b = run.step * self.n_critic + k  # global index of this real batch (and of this D update)
            real_img, c_real = feed.real_batch(b)
            z_d = feed.draw_z()
            c_fake = feed.draw_c(z_d)
            if self.reuse_fakes and k == self.n_critic - 1:
                with precision.autocast():
                    fakes = G(z_d, c_fake)
            d_loss, real_logits, fake_logits = d_step(
                G, D, run.opt_D, self.loss, real_img, z_d, self.penalty(run.D, b), self.augment, c_real, c_fake,
                precision, fake_img=fakes)  # fmt: skip
        # G phase: one G forward per step when the fakes are reused (pytorch/examples' DCGAN does the same)
        if fakes is not None:
            z_g, c_g = z_d, c_fake
        else:
            z_g = feed.draw_z()
            c_g = feed.draw_c(z_g)
        keep = topk_keep(len(z_g) // self.pack, run.nimg / len(feed.images), self.reg.topk, self.reg.topk_gamma)
        g_loss = g_step(G, D, run.opt_G, self.loss, z_g, self.augment, c_g, precision, fake_img=fakes,
                        mode_seeking=self.reg.mode_seeking,
                        z_pair=feed.pair_of(z_g) if self.reg.mode_seeking else None, keep=keep,
                        real_img=real_img, c_real=c_real)  # fmt: skip
        del fakes
        return self._out(d_loss, g_loss, real_logits, fake_logits)

    def _simultaneous(self, run: Run) -> StepOut:
        real_img, c_real = self.feed.real_batch(run.step)
        z = self.feed.draw_z()
        c_fake = self.feed.draw_c(z)
        d_loss, g_loss, real_logits, fake_logits = simultaneous_step(
            run.G_run, run.D_run, run.opt_G, run.opt_D, self.loss, real_img, z, self.penalty(run.D, run.step),
            self.augment, c_real, c_fake, run.precision)  # fmt: skip
        return self._out(d_loss, g_loss, real_logits, fake_logits)

    def _out(self, d_loss: torch.Tensor, g_loss: torch.Tensor, real_logits: torch.Tensor,
             fake_logits: torch.Tensor) -> StepOut:  # fmt: skip
        stats = {"d_loss": d_loss, "g_loss": g_loss, **d_means(self.loss, real_logits, fake_logits)}
        return StepOut(stats, real_logits, fake_logits)

    def extra_state(self) -> dict[str, Any]:
        if self.cluster_labels is None:
            return {}
        # model.clusters: each image's cluster, so that a resume conditions on the very same ones
        return {"cluster_labels": self.cluster_labels.to(torch.int16 if self.clusters < 2**15 else torch.int32)}

    def load_state(self, saved: dict[str, Any]) -> None:
        pass  # the cluster labels are read before the objective is built (train.cluster_labels_of)


class VAEObjective:
    """The VAE baseline (Kingma & Welling 2014): the encoder takes D's place and the decoder G's; one
    update of both per step on the negative ELBO."""

    nets = ("encoder", "decoder")
    norm_keys = ("enc_grad_norm", "dec_grad_norm")
    real_batches_per_step = 1

    def __init__(self, feed: Feed, grid: LatentGrid, likelihood: str, kl_weight: float = 1.0):
        self.feed, self.likelihood, self.kl_weight, self.grid = feed, likelihood, kl_weight, grid.grid
        self.images_per_step = feed.batch

    def step(self, run: Run) -> StepOut:
        real_img, c_real = self.feed.real_batch(run.step)
        eps = self.feed.draw_z()  # the reparameterisation noise
        stats = vae_step(run.G_run, run.D_run, run.opt_G, run.opt_D, real_img, eps, self.likelihood,
                         self.kl_weight, c_real, run.precision)  # fmt: skip
        return StepOut(stats)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_state(self, saved: dict[str, Any]) -> None:
        pass


class PairGrid:
    """The fixed pairs of a translation run's sample grids: k inputs (the test split's first) over
    three rows, input | output | target."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        self.inputs, self.targets = to_float(inputs), to_float(targets)  # [k, C_in, H, W], [k, C, H, W]
        self.nrow = len(inputs)

    def grid(self, G: nn.Module, device: torch.device) -> torch.Tensor:
        """[3k, C, H, W] float on the CPU: the rows of `ganforge sample`'s grid (sample.pair_rows)."""
        from ganforge.sample import pair_rows

        G.eval()
        with torch.no_grad():
            out = G(self.inputs.to(device)).float().cpu()
        return pair_rows(self.inputs, out, self.targets)


class TranslationObjective:
    """pix2pix (Isola et al. 2017): G translates an input image x into y; D, a PatchGAN conditioned on
    x, judges (y, x) pairs patch by patch; G's loss adds l1_weight x |G(x) - y| to the adversarial one.
    One D update on the pair batch, then one G update on the same fakes. adv_weight=0: the L1-only
    regression of the paper's ablation (D is not trained)."""

    nets = ("D", "G")
    norm_keys = ("d_grad_norm", "g_grad_norm")
    real_batches_per_step = 1

    def __init__(self, feed: Feed, loss: LossPair, grid: PairGrid, l1_weight: float, adv_weight: float,
                 reg: Regularizers):  # fmt: skip
        self.feed, self.loss, self.grid, self.l1_weight, self.adv_weight = feed, loss, grid.grid, l1_weight, adv_weight
        self.reg = reg
        self.draws = Draws(feed.noise, feed.dist.world, feed.dist.rank)
        self.images_per_step = feed.batch

    def step(self, run: Run) -> StepOut:
        x, y = self.feed.pair_batch(run.step)
        with run.precision.autocast():
            fake = run.G_run(x)  # with G's graph: the D phase reads it detached, the G phase reuses it
        real_logits = fake_logits = None
        stats: dict[str, torch.Tensor] = {}
        if self.adv_weight > 0:  # D phase: D(y, x) against D(G(x), x)
            r = self.reg
            penalty = make_penalty(run.D, run.step, self.draws, r.gp_weight, r.r1_gamma, r.r2_gamma, r.r1_interval)
            d_loss, real_logits, fake_logits = d_step(run.G_run, run.D_run, run.opt_D, self.loss, y, None, penalty,
                                                      None, x, x, run.precision, fake_img=fake)  # fmt: skip
            stats["d_loss"] = d_loss
        # G phase
        g_adv, l1 = translation_g_step(run.D_run, run.opt_G, self.loss, x, y, fake, self.l1_weight,
                                       self.adv_weight, run.precision)  # fmt: skip
        stats.update({"g_loss": g_adv, "l1": l1})
        if real_logits is not None:
            stats.update(d_means(self.loss, real_logits, fake_logits))
        return StepOut(stats)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_state(self, saved: dict[str, Any]) -> None:
        pass


class CycleGrid:
    """The fixed images of a CycleGAN run's sample grids: k test images of each domain, shown as
    a | G_ab(a) | G_ba(G_ab(a)) rows, then b | G_ba(b) | G_ab(G_ba(b)) rows."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        self.a, self.b = to_float(a), to_float(b)  # [k, C_a, H, W], [k, C_b, H, W]
        self.nrow = len(a)

    def grid(self, G: nn.Module, device: torch.device) -> torch.Tensor:
        from ganforge.sample import pair_rows

        G.eval()
        with torch.no_grad():
            a, b = self.a.to(device), self.b.to(device)
            fake_b, fake_a = G.G_ab(a), G.G_ba(b)
            rec_a, rec_b = G.G_ba(fake_b), G.G_ab(fake_a)
        cpu = lambda t: t.float().cpu()  # noqa: E731
        return torch.cat([pair_rows(self.a, cpu(fake_b), cpu(rec_a)), pair_rows(self.b, cpu(fake_a), cpu(rec_b))])


class CycleGANObjective:
    """CycleGAN (Zhu et al. 2017) on unpaired domains A and B: G = CycleG (G_ab, G_ba), D = CycleD (D_a,
    D_b); one update of both generators, then one of both discriminators on history-pooled fakes
    (steps.cycle_step). The pools are part of the checkpoint, so a resume is exact."""

    nets = ("D", "G")
    norm_keys = ("d_grad_norm", "g_grad_norm")
    real_batches_per_step = 1

    def __init__(self, feed: Feed, loss: LossPair, grid: CycleGrid, adv_weight: float, cycle_weight: float,
                 identity_weight: float, pool_size: int):  # fmt: skip
        self.feed, self.loss, self.grid = feed, loss, grid.grid
        self.adv_weight, self.cycle_weight, self.identity_weight = adv_weight, cycle_weight, identity_weight
        self.pools = (HistoryPool(pool_size), HistoryPool(pool_size))  # of fake A images (D_a's), fake B (D_b's)
        self.draws = Draws(feed.noise, feed.dist.world, feed.dist.rank)
        self.images_per_step = feed.batch

    def step(self, run: Run) -> StepOut:
        real_a, real_b = self.feed.domain_batches(run.step)
        stats, real_logits, fake_logits = cycle_step(
            run.G_run, run.D_run, run.opt_G, run.opt_D, self.loss, real_a, real_b, self.pools, self.draws,
            self.adv_weight, self.cycle_weight, self.identity_weight, run.precision)  # fmt: skip
        stats.update(d_means(self.loss, real_logits, fake_logits))  # D_b's, on the target domain
        return StepOut(stats)

    def extra_state(self) -> dict[str, Any]:
        pools = {}
        for name, pool in zip(("pool_a", "pool_b"), self.pools):
            if pool.images is not None:
                pools[name] = pool.state().cpu()
        return pools

    def load_state(self, saved: dict[str, Any]) -> None:
        for name, pool in zip(("pool_a", "pool_b"), self.pools):
            pool.load(saved.get(name), self.feed.device)
