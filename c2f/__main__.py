"""`python -m c2f …` (the `ray job submit` and `torchrun -m c2f pretrain` entry point)."""

import sys

from .cli import main

sys.exit(main())
