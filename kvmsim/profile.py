"""``kvmsim.profile`` is ``kvmsim.kernel.profile`` (the public name it has always had)."""

import sys

from .kernel import profile
from .kernel.profile import *  # noqa: F403 (for readers and type checkers of the old name)

sys.modules[__name__] = profile
