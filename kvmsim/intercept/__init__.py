"""The core of interception both ways of catching a program's calls share (``seccomp/`` below
libc, ``preload/`` inside it; siblings that depend on this folder, never on each other).

``placeholder`` is the table of simulated files by placeholder identity, ``server`` serves a
kernel on a Unix socket (``wire`` is the frame format, ``channel`` the shared-memory channel)
and supervises what a way of catching calls hands it (its ``Supervision`` protocol), ``trace``
explains each call, ``attach`` connects to a running server, ``command`` is what a run of a
command needs whichever way it is caught (its directory, the host's files, its exit), and
``trust`` and ``build`` say where kvmsim may keep what it runs and writes, and build it."""
