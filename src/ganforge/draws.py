"""Random draws for this process's share of a global batch.

With several processes every rank holds the run's generator in the same state. Drawing only
`len(shard)` numbers from it would give every rank the same numbers: a 2-rank global batch would get
N/2 distinct augmentations or interpolation weights. So each draw is made for the whole global batch
(`world` shares) and this rank keeps its own slice, as the latents are (objectives.Feed): N processes
then see exactly what one process with the global batch sees, and the generator advances alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Draws:
    gen: torch.Generator
    world: int = 1
    rank: int = 0

    def _mine(self, full: torch.Tensor, n: int) -> torch.Tensor:
        return full if self.world == 1 else full[self.rank * n : (self.rank + 1) * n]

    def rand(self, n: int, *shape: int) -> torch.Tensor:
        """U[0, 1) of shape [n, *shape] for this rank's n samples (on the CPU)."""
        return self._mine(torch.rand(n * self.world, *shape, generator=self.gen), n)

    def randint(self, low: int, high: int, n: int) -> torch.Tensor:
        """Integers in [low, high) for this rank's n samples (on the CPU)."""
        return self._mine(torch.randint(low, high, (n * self.world,), generator=self.gen), n)


def as_draws(source: torch.Generator | Draws) -> Draws:
    """A Draws from a Draws or a plain generator (one process)."""
    return source if isinstance(source, Draws) else Draws(source)
