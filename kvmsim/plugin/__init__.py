"""The edge into a Python test suite: the pytest plugin.  Public face: the ``kvm_host`` fixture
and :func:`simulated_host` (its work as a context manager), what they yield (:class:`KvmHost`)
and take (:class:`KvmHostParam`), and the warnings and failures they give.  The ``pytest11``
entry point names ``kvmsim.plugin.fixture``; the fake ``fcntl`` it binds to pyfakefs is
``fakefcntl``.  Needs pytest (and, to use a host, pyfakefs): ``pip install 'kvmsim[pytest]'``."""

from .fixture import (
    HostFileShadowed,
    KvmFdLeaked,
    KvmHost,
    KvmHostMarkerIgnored,
    KvmHostParam,
    KvmHostUnreached,
    PyfakefsMissing,
    kvm_host,
    kvm_host_param,
    real_kvm_unusable,
    simulated_host,
)

__all__ = [
    "HostFileShadowed",
    "KvmFdLeaked",
    "KvmHost",
    "KvmHostMarkerIgnored",
    "KvmHostParam",
    "KvmHostUnreached",
    "PyfakefsMissing",
    "kvm_host",
    "kvm_host_param",
    "real_kvm_unusable",
    "simulated_host",
]
