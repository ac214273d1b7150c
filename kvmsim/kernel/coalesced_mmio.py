"""virt/kvm/coalesced_mmio.c: KVM_REGISTER_COALESCED_MMIO and KVM_UNREGISTER_COALESCED_MMIO, a
build with CONFIG_KVM_MMIO's (on powerpc one with KVM-PR; the capability says which).

A zone is a device on the VM's MMIO bus (or, ``pio`` 1, its PIO bus): registering one checks
nothing of its range, only ``pio`` and the bus's room (NR_IOBUS_DEVS); unregistering drops every
zone of the same bus that the given range lies within, and answers 0 whatever it found.  No guest
runs, so nothing is ever written to the coalesced-MMIO ring."""

from __future__ import annotations

import errno

import attrs

from .errors import KvmError

NR_IOBUS_DEVS = 1000  # include/linux/kvm_host.h: the devices one bus takes (ioeventfds aside)
U64_MAX = (1 << 64) - 1


@attrs.frozen
class Zone:
    """``struct kvm_coalesced_mmio_zone``'s values: a u64 address, a u32 size, the bus."""

    addr: int
    size: int
    pio: int


def _check_pio(zone: Zone, what: str) -> None:
    if zone.pio not in (0, 1):
        raise KvmError(errno.EINVAL, f"{what}: pio {zone.pio} is neither 0 (MMIO) nor 1 (PIO)")


# kvm_vm_ioctl_register_coalesced_mmio(): pio, then kvm_io_bus_register_dev()'s room on its bus
def register(zones: list[Zone], zone: Zone) -> int:
    _check_pio(zone, "KVM_REGISTER_COALESCED_MMIO")
    if sum(1 for z in zones if z.pio == zone.pio) > NR_IOBUS_DEVS - 1:
        raise KvmError(errno.ENOSPC, f"KVM_REGISTER_COALESCED_MMIO: the bus has {NR_IOBUS_DEVS} devices")
    zones.append(zone)
    return 0


# kvm_vm_ioctl_unregister_coalesced_mmio(): pio, then every zone of its bus the range lies within
def unregister(zones: list[Zone], zone: Zone) -> int:
    _check_pio(zone, "KVM_UNREGISTER_COALESCED_MMIO")
    zones[:] = [z for z in zones if not (z.pio == zone.pio and in_range(z, zone.addr, zone.size))]
    return 0


# coalesced_mmio_in_range(): (addr, len) within the zone, len an int, sums in a gpa_t (u64)
def in_range(dev: Zone, addr: int, size: int) -> bool:
    length = size - (1 << 32) if size >> 31 else size
    if length < 0:
        return False
    end = addr + length
    if end > U64_MAX:  # addr + len < addr
        return False
    return addr >= dev.addr and end <= (dev.addr + dev.size) & U64_MAX
