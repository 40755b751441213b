"""Suite-wide settings: the IR invariant check runs between the compiler's passes."""

import os

os.environ.setdefault("DLFUSION_CHECK_PASSES", "1")
