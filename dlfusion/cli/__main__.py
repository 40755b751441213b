"""``python -m dlfusion.cli``: the ``dlfusion`` command."""

import sys

from . import main

sys.exit(main())
