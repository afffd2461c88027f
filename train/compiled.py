"""Ahead-of-time compiled programs, one executable per static signature, compile time apart.

Training chunks and measurement chunks are compiled with ``jit(...).lower(...).compile()``
the first time a signature (static arguments, shapes and dtypes of the rest) is seen, and
that time is added to :attr:`CompiledCache.compile_seconds` rather than to the run's, so
throughput never counts compilation.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np


class CompiledCache:
    """``cache(*args)`` runs ``fn(*args)`` compiled ahead of time for ``args``' signature."""

    def __init__(self, fn: Callable, static_argnums: tuple[int, ...] = (), **jit_kwargs: Any):
        self.jitted = jax.jit(fn, static_argnums=static_argnums, **jit_kwargs)
        self.static_argnums = tuple(static_argnums)
        self.executables: dict[Any, Any] = {}
        self.compile_seconds = 0.0

    def executable(self, *args: Any) -> Callable:
        """The compiled program for ``args``' signature (compiled now if new); call it with the
        non-static arguments only."""
        static = tuple(args[i] for i in self.static_argnums)
        dynamic = [a for i, a in enumerate(args) if i not in self.static_argnums]
        leaves, treedef = jax.tree.flatten(dynamic)
        signature = (static, treedef, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves))
        if signature not in self.executables:
            start = time.perf_counter()
            self.executables[signature] = self.jitted.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self.executables[signature]

    def __call__(self, *args: Any) -> Any:
        dynamic = [a for i, a in enumerate(args) if i not in self.static_argnums]
        return self.executable(*args)(*dynamic)
