"""``kvmsim.uapi`` is ``kvmsim.kernel.uapi`` (the public name it has always had)."""

import sys

from .kernel import uapi
from .kernel.uapi import *  # noqa: F403 (for readers and type checkers of the old name)

sys.modules[__name__] = uapi
