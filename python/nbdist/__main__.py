"""``python -m nbdist run ...``: the same as the ``nbdist`` command."""

import sys

from .cli import main

sys.exit(main())
