"""The user side: what a program does before and after the syscall.

:mod:`.device` is the seam the client and ``kvmsim record`` talk through (a real
``/dev/kvm``, or :class:`.simulated.SimDevice`); :mod:`.pyioctl` is CPython's
``fcntl.ioctl`` contract over a simulated process; :mod:`.probe` the questions asked of a
device; :mod:`.simulated` the convenient facade over a booted simulated kernel."""
