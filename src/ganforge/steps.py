"""The step maths of the objectives: one D update, one G update, the simultaneous update of both
(the Keras DCGAN tutorial's), the VAE's update, the regularizers due at a D update, and top-k's k.

Pure functions of explicit tensors and modules: no config, no files, no prints. The training loop
(train.py) and the objectives (objectives.py) decide what to call when; the benchmarks call these
same functions, so they time the step that training runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Optional

import torch
import torch.nn as nn

from ganforge.draws import Draws, as_draws
from ganforge.losses import LossPair, gaussian_kl, reconstruction_nll
from ganforge.models import per_sample
from ganforge.precision import FP32, Precision
from ganforge.regularizers import gradient_penalty, mode_seeking_loss, r1_penalty

Penalty = Callable[..., torch.Tensor]  # (real_img, fake_img, c_real, c_fake) -> the penalty, fp32 scalar


def topk_keep(batch: int, epoch: float, floor: float, gamma: float) -> Optional[int]:
    """Top-k training's k for a G batch of `batch` fakes after `epoch` (fractional) epochs: batch *
    max(floor, gamma ** epoch), at least 1; None when nothing is dropped (reg.topk = 1)."""
    if floor >= 1.0:
        return None
    return max(1, math.ceil(batch * max(floor, gamma**epoch)))


def make_penalty(
    D: nn.Module,
    d_iter: int,
    noise: torch.Generator | Draws,
    gp_weight: float = 0.0,
    r1_gamma: float = 0.0,
    r2_gamma: float = 0.0,
    r1_interval: int = 1,
    augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    pack: int = 1,
) -> Optional[Penalty]:
    """The regularizers due at D update `d_iter` (0-based), as one function of (real_img, fake_img,
    c_real, c_fake); None when none is due. GP at every update; R1 (and R2, its twin on the fakes) lazily,
    every `r1_interval` updates, weighted up by the interval (StyleGAN2). GP's interpolation weights
    are drawn from `noise`, the run's saved latent generator (a Draws over it with several processes),
    so that a resume is exact.

    The images are the un-augmented ones: with DiffAugment (`augment`) every penalty is the gradient
    with respect to the image in data space, through the augmentation D sees (a fresh draw of it), as
    stylegan2-ada-pytorch and DiffAugment's code take R1, so that gamma values carry over. With PacGAN
    (`pack` > 1) the penalties are per pack, the sample a packed D scores. A conditional D's GP
    interpolates the images and judges them with the real labels."""
    use_gp = gp_weight > 0
    lazy = d_iter % r1_interval == 0
    use_r1, use_r2 = r1_gamma > 0 and lazy, r2_gamma > 0 and lazy
    if not (use_gp or use_r1 or use_r2):
        return None

    def total(real_img: torch.Tensor, fake_img: torch.Tensor, c: Optional[torch.Tensor],
              c_fake: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
        seen = augment if augment is not None else (lambda x: x)  # what D sees of an image
        D_c = lambda x: D(seen(x), c)  # noqa: E731  (conditional D judges with the real labels)
        out = torch.zeros((), device=real_img.device)
        if use_gp:
            out = out + gp_weight * gradient_penalty(D_c, real_img, fake_img, noise, pack).mean()
        if use_r1:
            out = out + 0.5 * r1_gamma * r1_interval * r1_penalty(D_c, real_img, pack).mean()
        if use_r2:  # the same penalty on the fakes (R2), with their own labels
            D_f = lambda x: D(seen(x), c_fake)  # noqa: E731
            out = out + 0.5 * r2_gamma * r1_interval * r1_penalty(D_f, fake_img, pack).mean()
        return out

    return total


@contextlib.contextmanager
def frozen(D: nn.Module) -> Iterator[None]:
    """D's parameters frozen for a G update (no gradient is computed for them), and unfrozen again even
    when the step fails (a compiled step's failure is redone: see train)."""
    D.requires_grad_(False)
    try:
        yield
    finally:
        D.requires_grad_(True)


def grad_norm(module: nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()


def d_step(
    G: nn.Module,
    D: nn.Module,
    opt_D: torch.optim.Optimizer,
    loss: LossPair,
    real_img: torch.Tensor,
    z: torch.Tensor,
    penalty: Optional[Penalty] = None,
    augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    c_real: Optional[torch.Tensor] = None,
    c_fake: Optional[torch.Tensor] = None,
    precision: Precision = FP32,
    fake_img: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One D update; `penalty(real_img, fake_img, c_real, c_fake)` adds a regularizer (given the images
    before augmentation: it augments them itself). c_real/c_fake: class labels for conditional models. `fake_img`: G(z, c_fake) made by the caller (to reuse in the G
    step), else made here without a graph. Returns (d_loss, real_logits, fake_logits), detached;
    d_loss excludes the penalty."""
    if fake_img is None:
        with torch.no_grad(), precision.autocast():
            fake_img = G(z, c_fake)  # no graph: G is not updated in this phase
    fake_img = fake_img.detach().float()  # [N, C, H, W]
    real_in, fake_in = (augment(real_img), augment(fake_img)) if augment is not None else (real_img, fake_img)
    with precision.autocast():  # DiffAugment: D only ever sees augmented images
        real_logits = D(real_in, c_real).float()  # [N]; losses in fp32
        fake_logits = D(fake_in, c_fake).float()  # [N]
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
    with frozen(D):
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
    return g_loss.detach()


def translation_g_step(
    D: nn.Module,
    opt_G: torch.optim.Optimizer,
    loss: LossPair,
    x: torch.Tensor,
    y: torch.Tensor,
    fake: torch.Tensor,
    l1_weight: float,
    adv_weight: float = 1.0,
    precision: Precision = FP32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """pix2pix's G update: adv_weight x G's adversarial loss on D(G(x), x) (every patch's logit counts
    as a sample) + l1_weight x mean |G(x) - y|. `fake`: G(x) with its graph. D's parameters are frozen
    meanwhile. adv_weight=0 skips D: the L1-only regression. Returns (adversarial loss, L1 term), detached
    (the adversarial loss is 0 without D)."""
    with frozen(D):
        l1 = (fake.float() - y.float()).abs().mean()
        if adv_weight > 0:
            with precision.autocast():
                fake_logits = D(fake, x).float()  # [N, h, w]
            g_adv = loss.g(fake_logits.flatten())
        else:
            g_adv = torch.zeros((), device=fake.device)
        total = adv_weight * g_adv + l1_weight * l1
        opt_G.zero_grad(set_to_none=True)
        precision.step(total, opt_G)
    return g_adv.detach(), l1.detach()


class HistoryPool:
    """CycleGAN's image buffer (Shrivastava et al. 2017; Zhu et al. 2017 sec. 4): D is updated on fakes
    drawn from a history of generated images, not only the latest G's. Until `size` images are stored
    each new fake is stored and passed on; then each is, with probability 1/2, passed on as it is, or
    swapped for a stored one picked uniformly (the new fake takes its place), as the paper's code does.
    The draws come from the caller's generator, two per image whether used or not, so the draw count
    never depends on the pool's state (a resume, and every process, stay in step)."""

    def __init__(self, size: int):
        self.size = size
        self.images: Optional[torch.Tensor] = None  # [k <= size, C, H, W], the stored fakes

    def query(self, fakes: torch.Tensor, noise: torch.Generator | Draws) -> torch.Tensor:
        """D's batch for these fakes [N, C, H, W] (detached; same shape)."""
        fakes = fakes.detach()
        if self.size == 0:
            return fakes
        n = len(fakes)
        coin, pick = as_draws(noise).rand(n), as_draws(noise).rand(n)  # [N] each, on the CPU
        pick = (pick * self.size).long().clamp(max=self.size - 1)
        out = fakes.clone()
        for i in range(n):
            stored = 0 if self.images is None else len(self.images)
            if stored < self.size:
                self.images = fakes[i : i + 1].clone() if self.images is None else torch.cat([self.images, fakes[i : i + 1]])
            elif coin[i] > 0.5:
                j = int(pick[i])
                out[i] = self.images[j]
                self.images[j] = fakes[i]
        return out

    def state(self) -> Optional[torch.Tensor]:
        return None if self.images is None else self.images.clone()

    def load(self, images: Optional[torch.Tensor], device: torch.device) -> None:
        self.images = None if images is None or len(images) == 0 else images.to(device)


def cycle_step(
    G: nn.Module,
    D: nn.Module,
    opt_G: torch.optim.Optimizer,
    opt_D: torch.optim.Optimizer,
    loss: LossPair,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    pools: tuple[HistoryPool, HistoryPool],
    noise: torch.Generator | Draws,
    adv_weight: float = 1.0,
    cycle_weight: float = 10.0,
    identity_weight: float = 0.5,
    precision: Precision = FP32,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One CycleGAN update (Zhu et al. 2017), in the order of the paper's code: first both generators
    (G = CycleG: G_ab, G_ba) with both discriminators (D = CycleD: D_a, D_b) frozen, on

        adv_weight x [loss.g(D_b(G_ab(a))) + loss.g(D_a(G_ba(b)))]
        + cycle_weight x [|G_ba(G_ab(a)) - a| + |G_ab(G_ba(b)) - b|]
        + identity_weight x cycle_weight x [|G_ab(b) - b| + |G_ba(a) - a|]   (when identity_weight > 0)

    then both discriminators on loss.d_loss(D_b(b), D_b(fake b from pool)) + the same for D_a (each
    patch logit counts as a sample). Returns the batch's losses and D_b's logits on the reals and the
    fakes it was shown (flattened over patches), detached."""
    with frozen(D):
        with precision.autocast():
            fake_b, fake_a = G.G_ab(real_a), G.G_ba(real_b)  # [N, C_b, H, W], [N, C_a, H, W]
            rec_a, rec_b = G.G_ba(fake_b), G.G_ab(fake_a)
            g_b = loss.g(D.D_b(fake_b).float().flatten())
            g_a = loss.g(D.D_a(fake_a).float().flatten())
            idt = None
            if identity_weight > 0:
                idt = (G.G_ab(real_b).float() - real_b).abs().mean() + (G.G_ba(real_a).float() - real_a).abs().mean()
        cycle = (rec_a.float() - real_a).abs().mean() + (rec_b.float() - real_b).abs().mean()
        total = adv_weight * (g_a + g_b) + cycle_weight * cycle
        if idt is not None:
            total = total + identity_weight * cycle_weight * idt
        opt_G.zero_grad(set_to_none=True)
        precision.step(total, opt_G)
    shown_b = pools[1].query(fake_b.float(), noise)  # D_b sees domain B's fakes, D_a domain A's
    shown_a = pools[0].query(fake_a.float(), noise)
    with precision.autocast():
        real_logits_b, fake_logits_b = D.D_b(real_b).float().flatten(), D.D_b(shown_b).float().flatten()
        real_logits_a, fake_logits_a = D.D_a(real_a).float().flatten(), D.D_a(shown_a).float().flatten()
    d_b, d_a = loss.d_loss(real_logits_b, fake_logits_b), loss.d_loss(real_logits_a, fake_logits_a)
    opt_D.zero_grad(set_to_none=True)
    precision.step(d_a + d_b, opt_D)
    stats = {"d_loss": (d_a + d_b).detach(), "g_loss": (g_a + g_b).detach(), "cycle": cycle.detach(),
             "d_a": d_a.detach(), "d_b": d_b.detach()}  # fmt: skip
    if idt is not None:
        stats["identity"] = idt.detach()
    return stats, real_logits_b.detach(), fake_logits_b.detach()


def simultaneous_step(
    G: nn.Module,
    D: nn.Module,
    opt_G: torch.optim.Optimizer,
    opt_D: torch.optim.Optimizer,
    loss: LossPair,
    real_img: torch.Tensor,
    z: torch.Tensor,
    penalty: Optional[Penalty] = None,
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
    total_d = d_loss if penalty is None else d_loss + penalty(real_img, fake_img.detach().float(), c_real, c_fake)
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
    precision.sync_grads(opt_D, opt_G)
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
