"""``python -m aligned_rl.train ...`` is ``aligned-rl train ...``."""

import sys

from aligned_rl.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
