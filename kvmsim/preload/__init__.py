"""The edge that reaches real programs: ``kvmsim serve``/``run``/``env``.

``server`` serves a kernel on a Unix socket (``wire`` is the frame format, ``channel`` the
shared-memory channel), ``shim/`` is the LD_PRELOAD library built by ``build``, ``runner``
runs a command against its own server, ``attach`` attaches to a running one, ``trace``
explains each call, and ``trust`` says where any of it may keep what it runs and writes."""
