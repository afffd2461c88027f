"""aligned-rl: JAX-vectorised reinforcement learning for agents aligned to a constitution."""

from aligned_rl.constitution import Constitution, Judgement, judge, reference_policy
from aligned_rl.divergence import DIVERGENCES, alignment_reward, divergence

__version__ = "0.1.0"
__all__ = [
    "Constitution",
    "DIVERGENCES",
    "Judgement",
    "alignment_reward",
    "divergence",
    "judge",
    "reference_policy",
]
