"""Plain-Python reference implementations (oracles) shared by the tests and the benchmarks.

Each module is written from the published description of what it models (AIQ's BF machine
and agents, textbook estimators), with Python lists and floats; NumPy appears only where the
library's documented semantics call for float32 rounding.  None of them imports
``aligned_rl``: a test compares the library against them, so they must not share its code.

    from tests.reference.bf_machine import BFMachine
    from tests.reference.aiq_agents import RefQLambda
    from tests.reference.estimators import mean_ci95

Import them from the repository root (``pytest``, ``python -m bench.<name>``).
"""
