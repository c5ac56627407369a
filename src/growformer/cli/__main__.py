"""``python -m growformer.cli``, as launchers such as ``torchrun -m`` run it."""

import sys

from growformer.cli import main

sys.exit(main())
