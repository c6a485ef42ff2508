"""``python -m experiments.cli``: the ``temponas`` command without the console script."""

import sys

from experiments.cli import main

sys.exit(main())
