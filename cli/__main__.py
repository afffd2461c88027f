"""``python -m aligned_rl.cli``: the same as the ``aligned-rl`` command."""

import sys

from aligned_rl.cli import main

sys.exit(main())
