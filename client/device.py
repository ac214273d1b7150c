"""The device seam, as the client sees it: a real ``/dev/kvm`` (:class:`RealDevice`) or any
object of the same shape (:class:`kvmsim.user.simulated.SimDevice` for the simulator)."""

from kvmsim.user.device import Device, RealDevice, machine_arch

__all__ = ["Device", "RealDevice", "machine_arch"]
