"""``kvmsim.uapi``, the public name: every ABI fact in one place — the numbers and layouts
(:mod:`kvmsim.kernel.uapi`), the revisions as values (:mod:`kvmsim.kernel.revisions`), the
naming of requests (:mod:`kvmsim.kernel.requests`) and the reading of a kernel header
(:mod:`kvmsim.kernel.header`)."""

from .kernel.header import *  # noqa: F403
from .kernel.requests import *  # noqa: F403
from .kernel.revisions import *  # noqa: F403
from .kernel.uapi import *  # noqa: F403
