"""Adversarial loss pairs as pure functions of D's raw logits (never sigmoid + BCELoss).

With D(x) = sigmoid(logit): -log D(x) = softplus(-logit) and -log(1 - D(x)) = softplus(logit),
which stay finite where sigmoid saturates. For wgan and hinge the "logit" is a critic score.
At the end, the VAE baseline's objective (the negative ELBO) in the same style.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class LossPair:
    d_loss: Callable[
        [torch.Tensor, torch.Tensor], torch.Tensor
    ]  # (real_logits, fake_logits) -> scalar
    g_loss: Callable[..., torch.Tensor]  # fake_logits -> scalar; (fake_logits, real_logits) when `paired`
    description: str
    probabilistic: bool = True  # sigmoid(logit) is a probability of "real" (False for critics)
    # dL_D/dlogit is never 0 for a fake, so G's gradient at D's input can be rescaled from D's own
    # (train.simultaneous_step's shared backward): not for hinge (0 beyond the margin) or LSGAN
    d_grad_nonzero: bool = False
    # G's loss compares each fake with a real one (relativistic pairing): the G step scores a real batch too
    paired: bool = False
    # D's decision boundary on its output (the monitor's D accuracy): 0 for logits and hinge scores, 0.5 for
    # LSGAN's targets 1/0; None where only differences mean something (a WGAN critic, relativistic pairs)
    boundary: Optional[float] = 0.0

    def g(self, fake_logits: torch.Tensor, real_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """G's loss; a paired loss also reads the real scores (the others ignore them)."""
        return self.g_loss(fake_logits, real_logits) if self.paired else self.g_loss(fake_logits)


LOSSES: dict[str, LossPair] = {}


def d_loss_bce(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D maximises log D(x) + log(1 - D(G(z))): the standard GAN discriminator loss."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss_non_saturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """G maximises log D(G(z)) (Goodfellow et al. 2014, sec. 3): strong gradients early on."""
    return F.softplus(-fake_logits).mean()


def g_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """G minimises log(1 - D(G(z))): the literal minimax game; its gradient vanishes when D wins."""
    return -F.softplus(fake_logits).mean()


def d_loss_wgan(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The critic maximises E[D(x)] - E[D(G(z))] (Arjovsky et al. 2017); needs a Lipschitz D (GP or SN)."""
    return fake_scores.mean() - real_scores.mean()


def g_loss_wgan(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()


def d_loss_hinge(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018): E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def d_loss_least_squares(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """LSGAN (Mao et al. 2017), targets 1 for real and 0 for fake; the 1/2 factors of the paper."""
    return 0.5 * ((real_logits - 1.0) ** 2).mean() + 0.5 * (fake_logits**2).mean()


def g_loss_least_squares(fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((fake_logits - 1.0) ** 2).mean()


def d_loss_relativistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic pairing (RpGAN; Jolicoeur-Martineau 2019): D maximises log sigmoid(D(x_i) - D(G(z_i))),
    real i and fake i of the batch paired. With R1 and R2 it is R3GAN's loss (Huang et al. 2024), whose
    landscape has no mode-dropping local minima (Sun et al. 2020): every fake is judged against a real."""
    return F.softplus(fake_logits - real_logits).mean()


def g_loss_relativistic(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """G maximises log sigmoid(D(G(z_i)) - D(x_i)): the same pairs, roles swapped."""
    return F.softplus(real_logits - fake_logits).mean()


LOSSES["non-saturating"] = LossPair(
    d_loss_bce, g_loss_non_saturating, "Goodfellow et al. 2014, -log D(G(z))", d_grad_nonzero=True
)
LOSSES["minimax"] = LossPair(
    d_loss_bce, g_loss_minimax, "Goodfellow et al. 2014, log(1 - D(G(z)))", d_grad_nonzero=True
)
LOSSES["wgan"] = LossPair(
    d_loss_wgan, g_loss_wgan, "Arjovsky et al. 2017 (use with gp_weight or SN)", False, True, boundary=None
)
LOSSES["hinge"] = LossPair(d_loss_hinge, g_loss_wgan, "Lim & Ye 2017; Miyato et al. 2018", False)
LOSSES["least-squares"] = LossPair(
    d_loss_least_squares, g_loss_least_squares, "Mao et al. 2017", False, boundary=0.5
)
LOSSES["relativistic"] = LossPair(
    d_loss_relativistic, g_loss_relativistic, "RpGAN, Jolicoeur-Martineau 2019; with R1 + R2: R3GAN, Huang et al. 2024",
    False, d_grad_nonzero=True, paired=True, boundary=None,
)


# ----------------------------------------------------------------------------------------------
# The VAE's objective (loss.name=elbo): negative ELBO = reconstruction NLL + KL(q(z|x) || N(0, I)).
# Both terms per image in nats, summed over pixels / latent dimensions: [N].

ELBO = "elbo"  # the loss name of VAE models; not an adversarial pair, so not in LOSSES


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) in closed form (Kingma & Welling 2014, app. B); [N] >= 0."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1)


def reconstruction_nll(pre: torch.Tensor, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """-log p(x | z) per image [N] from the decoder's pre-activation `a` (mean image tanh(a)).

    bernoulli: pixel intensities (x + 1) / 2 in [0, 1] as Bernoulli probabilities, logit 2a, since
    tanh(a) = 2 sigmoid(2a) - 1 (the usual MNIST choice of Kingma & Welling). gaussian: N(tanh(a),
    sigma^2 I) with one shared sigma set to its optimum, the batch's RMS error (the calibrated decoder
    of Rybkin et al. 2021, "sigma-VAE"): no hand-tuned weight between the two terms.
    """
    if likelihood == "bernoulli":
        target = (x + 1.0) * 0.5
        return F.binary_cross_entropy_with_logits(2.0 * pre, target, reduction="none").flatten(1).sum(1)
    if likelihood == "gaussian":
        sq = (x - torch.tanh(pre)).square().flatten(1)  # [N, D]
        log_sigma = 0.5 * sq.mean().detach().clamp_min(1e-6).log()  # optimal shared sigma
        return (0.5 * sq * torch.exp(-2.0 * log_sigma) + log_sigma + 0.5 * math.log(2 * math.pi)).sum(1)
    raise ValueError(f"unknown likelihood '{likelihood}'; use bernoulli or gaussian")
