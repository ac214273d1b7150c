"""``kvmsim.pytest_plugin`` is ``kvmsim.plugin.fixture`` (the plugin's public name)."""

import sys

from .plugin import fixture
from .plugin.fixture import *  # noqa: F403 (for readers and type checkers of the old name)

sys.modules[__name__] = fixture
