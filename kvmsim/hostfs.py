"""``kvmsim.hostfs`` is ``kvmsim.kernel.hostfs`` (the public name it has always had)."""

import sys

from .kernel import hostfs
from .kernel.hostfs import *  # noqa: F403 (for readers and type checkers of the old name)

sys.modules[__name__] = hostfs
