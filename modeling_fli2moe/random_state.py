"""One way to turn a `random_state` argument into a random generator, for every seeded function of the package."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["RandomState", "check_random_state"]

RandomState = int | np.random.Generator | torch.Generator | None


def check_random_state(random_state: RandomState) -> np.random.Generator:
    """A numpy Generator from an int seed, a numpy Generator (used as is), a torch.Generator (one draw
    seeds a new numpy Generator) or None (fresh OS entropy). No global seeding anywhere."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=random_state))
        return np.random.default_rng(seed)
    if isinstance(random_state, (bool, np.bool_)):
        raise TypeError(f"random_state must be an int seed >= 0, a numpy Generator, a torch.Generator or None, "
                        f"got the bool {random_state!r}")
    if isinstance(random_state, (int, np.integer)) and random_state < 0:
        raise ValueError(f"random_state (the seed) must be an int >= 0 (or None for a fresh seed), got {random_state}")
    if random_state is None or isinstance(random_state, (int, np.integer)):
        return np.random.default_rng(random_state)
    raise TypeError(
        f"random_state must be an int, a numpy Generator, a torch.Generator or None, got {type(random_state).__name__}"
    )
