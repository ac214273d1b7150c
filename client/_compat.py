"""The userspace side of ``KVM_PPC_GET_COMPAT_CAPS``, written once for any :class:`Device`:
open, check the API version, create a VM, negotiate the revision (the capability on /dev/kvm,
as QEMU asks it, or on the VM fd), issue the
ioctl (retry once on E2BIG with the size the kernel wrote back), decode and recommend as
QEMU does (target/ppc/kvm.c, ``kvmppc_get_compat_caps`` and ``kvm_ppc_host_compat_pvr``)."""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Literal

import attrs

from kvmsim.uapi import (
    KVM_API_VERSION,
    KVM_PPC_COMPAT_BITMASK,
    KVM_PPC_COMPAT_CAPS_SIZE_VER0,
    MAX_PAGE_SIZE,
    REVISIONS,
    AbiRevision,
    check_struct_size,
    errname,
    mode_of_logical_pvr,
    modes_of_caps,
    negotiable,
)

from ._device import Device, UnknownArch
from ._devicetree import DeviceTree

Source = Literal["ioctl", "device-tree"]
CapFd = Literal["dev", "vm"]  # /dev/kvm (QEMU's), or the VM fd (that VM type's own answer)


@attrs.frozen
class CompatCaps:
    """What the host allows its nested guests."""

    modes: tuple[str, ...]  # oldest first
    compat_capabilities: int  # as the kernel wrote it, unknown bits included
    abi: str  # the revision spoken ("linux-7.3", "v4", "v5"), or "none" for the device-tree fallback
    source: Source
    device: str

    @property
    def unknown_bits(self) -> int:
        """Bits outside KVM_PPC_COMPAT_BITMASK: QEMU masks them off; reported, never fatal."""
        return self.compat_capabilities & ~KVM_PPC_COMPAT_BITMASK

    @property
    def recommended(self) -> str | None:
        """The nested guest's CPU mode, as ``kvm_ppc_host_compat_pvr()`` picks it: the mode of
        ``1ULL << ctz64(caps)`` of the masked bitmap (MSB-0 bits: the newest mode is the lowest
        set bit); None for no bit."""
        caps = self.compat_capabilities & KVM_PPC_COMPAT_BITMASK
        if self.source == "device-tree" or not caps:
            return self.modes[-1] if self.modes else None
        lowest = caps & -caps  # 1ULL << ctz64(caps)
        return next(m.name for m in modes_of_caps(lowest))

    @property
    def qemu_host_compat_pvr(self) -> int | None:
        """The PVR QEMU gives the nested guest for that mode (``kvm_ppc_host_compat_pvr``);
        None where QEMU falls back to the raw host PVR."""
        return QEMU_COMPAT_PVR.get(self.recommended) if self.recommended else None

    def to_json(self) -> dict[str, object]:
        return {
            "device": self.device,
            "abi": self.abi,
            "modes": list(self.modes),
            "compat_capabilities": self.compat_capabilities,
            "unknown_bits": self.unknown_bits,
            "recommended": self.recommended,
            "qemu_host_compat_pvr": self.qemu_host_compat_pvr,
            "source": self.source,
        }


# The PVR merged QEMU's kvm_ppc_host_compat_pvr() gives each mode (target/ppc/cpu-models.h):
# POWER9 DD2.2, POWER10 DD2.0, POWER11 DD2.0
QEMU_COMPAT_PVR: Mapping[str, int] = {"power9": 0x004E1202, "power10": 0x00801200, "power11": 0x00821200}
RAW_PVR_NOTE = "QEMU then uses the raw host PVR for the nested guest"


# -- typed failures ------------------------------------------------------------


class CompatError(Exception):
    """The client's own error root: every failure it reports (the simulator's errors are not
    its; a CLI maps each kind to its exit code: kvmcompat.cli.EXIT_CODES)."""

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "errno": None, "name": None, "reason": str(self)}

    @property
    def kind(self) -> str:
        return "error"


class NoDevice(CompatError):
    """No KVM device to talk to (no /dev/kvm, no permission)."""

    def __init__(self, device: str, exc: OSError) -> None:
        super().__init__(f"{device}: {exc.strerror or exc}")
        self.errno = exc.errno

    @property
    def kind(self) -> str:
        return "no-device"

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "errno": self.errno, "name": _errname(self.errno)}


class NotKvm(NoDevice):
    """The device opened, but it is not KVM (its KVM_GET_API_VERSION fails)."""

    def __init__(self, device: str, exc: KernelError) -> None:
        CompatError.__init__(self, f"{device}: not a KVM device (KVM_GET_API_VERSION: {exc.name})")
        self.errno = exc.errno


class Unsupported(CompatError):
    """This kernel cannot answer: no capability (a kernel before 7.3), or an old API."""

    @property
    def kind(self) -> str:
        return "unsupported"


# What an errno usually means for this ioctl, when the kernel cannot say why.
MEANINGS: Mapping[int, str] = {
    errno.EFAULT: "the kernel could not read or write struct kvm_ppc_compat_caps",
    errno.EINVAL: "size too small, flags not 0, a bare-metal PowerNV host, or no usable cpu-version (nested v1)",
    errno.ENOTTY: "the VM has no get_compat_caps op (KVM-PR), or this kernel lacks the ioctl",
    errno.E2BIG: "the struct is larger than the kernel's (or than PAGE_SIZE), even after the retry",
    errno.EPERM: "on v4 kernels: H_HARDWARE (-1) from H_GUEST_GET_CAPABILITIES, returned untranslated",
    errno.ENOENT: "on v4 kernels: H_FUNCTION (-2) from H_GUEST_GET_CAPABILITIES, returned untranslated",
    errno.EINTR: "on v4 kernels: H_PARAMETER (-4) from H_GUEST_GET_CAPABILITIES, returned untranslated",
}


class KernelError(CompatError):
    """The kernel failed the call with an errno, or answered something impossible."""

    def __init__(self, what: str, err: int | None, reason: str) -> None:
        name = _errname(err) if err is not None else "bad answer"
        super().__init__(f"{what}: {name}: {reason}")
        self.what, self.errno, self.reason = what, err, reason

    @property
    def kind(self) -> str:
        return "kernel"

    @property
    def name(self) -> str | None:
        return _errname(self.errno) if self.errno is not None else None

    @classmethod
    def from_oserror(cls, what: str, exc: OSError) -> KernelError:
        err = exc.errno or 0
        reason = getattr(exc, "reason", None) or MEANINGS.get(err, exc.strerror or "")
        return cls(what, err, reason)

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "errno": self.errno, "name": self.name, "reason": self.reason, "call": self.what}


def _errname(err: int | None) -> str | None:
    return None if err is None else errname(err)


# -- the query -------------------------------------------------------------------------


@attrs.frozen
class Options:
    abi: str | None = None  # force a revision; None negotiates
    struct_size: int = KVM_PPC_COMPAT_CAPS_SIZE_VER0  # the client's own struct size
    fallback: bool = False  # read the device tree when the kernel cannot answer
    device_tree: DeviceTree = attrs.field(factory=DeviceTree)  # /proc/device-tree unless given
    revisions: Mapping[str, AbiRevision] = attrs.field(factory=lambda: dict(REVISIONS))
    cap_fd: CapFd = "dev"  # where KVM_CHECK_EXTENSION is asked: QEMU's kvm_check_extension() asks /dev/kvm


class Session:
    """One open /dev/kvm and one VM on a device; closes both on exit."""

    def __init__(self, device: Device) -> None:
        self.device = device
        try:
            self.arch = device.arch
        except UnknownArch as exc:  # a KVM of an arch kvmsim has no encoding for
            raise Unsupported(f"{device.name}: {exc}") from None
        self.dev = -1
        self.vm = -1

    def __enter__(self) -> Session:
        try:
            self.dev = self.device.open()
        except OSError as exc:
            raise NoDevice(self.device.name, exc) from None
        try:
            try:
                version = self.call("KVM_GET_API_VERSION", self.dev, self.arch.kvm_get_api_version())
            except KernelError as exc:
                raise NotKvm(self.device.name, exc) from None
            if version != KVM_API_VERSION:
                raise Unsupported(f"{self.device.name}: KVM API version {version}, expected {KVM_API_VERSION}")
            self.vm = self.call("KVM_CREATE_VM", self.dev, self.arch.kvm_create_vm(), 0)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in (self.vm, self.dev):
            if fd >= 0:
                self.device.close(fd)
        self.vm = self.dev = -1

    def call(self, what: str, fd: int, request: int, arg: int = 0) -> int:
        try:
            return int(self.device.ioctl(fd, request, arg))
        except OSError as exc:
            raise KernelError.from_oserror(what, exc) from None

    def check_extension(self, cap: int, on: CapFd = "dev") -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm (QEMU's ``kvm_check_extension(kvm_state, ...)``)
        or on the VM fd (the answer for that VM's type: a PR VM's may differ)."""
        return self.call(
            "KVM_CHECK_EXTENSION", self.dev if on == "dev" else self.vm, self.arch.kvm_check_extension(), cap
        )

    def negotiate(self, opts: Options) -> AbiRevision:
        """The forced revision, else the newest whose capability the kernel answers (on
        /dev/kvm, as QEMU asks, or on the VM fd): 250 → linux-7.3, else 249 → v4 (the v5
        draft only when forced)."""
        where = "/dev/kvm" if opts.cap_fd == "dev" else "the VM fd"
        if opts.abi is not None:  # forced: its own capability is still asked first, as QEMU does
            rev = opts.revisions[opts.abi]
            if rev.ioctl is None or rev.cap is None:
                raise Unsupported(f"{self.device.name}: --abi none: a kernel without the ioctl; {RAW_PVR_NOTE}")
            if self.check_extension(rev.cap, opts.cap_fd) <= 0:
                raise Unsupported(
                    f"{self.device.name}: --abi {rev.name}: the kernel has no capability {rev.cap} "
                    f"on {where}; {RAW_PVR_NOTE}"
                )
            return rev
        candidates = negotiable(opts.revisions.values())
        for rev in candidates:
            if rev.cap is not None and self.check_extension(rev.cap, opts.cap_fd) > 0:
                return rev
        caps = ", ".join(f"{r.cap} ({r.name})" for r in candidates)
        raise Unsupported(
            f"{self.device.name}: the kernel has no KVM_CAP_PPC_COMPAT_CAPS (checked {caps} on {where}); {RAW_PVR_NOTE}"
        )

    def get_compat_caps(self, rev: AbiRevision, struct_size: int) -> int:
        """Issue the ioctl; on E2BIG retry once with the size the kernel wrote back, when
        that size is at least KVM_PPC_COMPAT_CAPS_SIZE_VER0 (QEMU's rule)."""
        request = rev.request(self.arch)
        if request is None:
            raise Unsupported(f"{self.device.name}: {rev.name} has no ioctl; {RAW_PVR_NOTE}")
        size = struct_size
        for attempt in range(2):
            # the size field says `size`; no kernel reads more than its PAGE_SIZE (at most
            # 64 KiB on powerpc), so nothing past that is allocated
            buf = bytearray(rev.layout.pack(self.arch.byteorder, size=size).ljust(min(size, MAX_PAGE_SIZE), b"\0"))
            try:
                self.device.ioctl(self.vm, request, buf)
            except OSError as exc:
                if exc.errno == errno.E2BIG and attempt == 0:
                    written = rev.layout.unpack(self.arch.byteorder, bytes(buf[:24]))["size"]
                    if KVM_PPC_COMPAT_CAPS_SIZE_VER0 <= written <= struct_size:
                        size = written
                        continue
                raise KernelError.from_oserror("KVM_PPC_GET_COMPAT_CAPS", exc) from None
            return rev.layout.unpack(self.arch.byteorder, bytes(buf[:24]))["compat_capabilities"]
        raise KernelError("KVM_PPC_GET_COMPAT_CAPS", errno.E2BIG, MEANINGS[errno.E2BIG])


def decode(caps: int) -> tuple[str, ...]:
    """The modes of a bitmap, oldest first (MSB-0 bits); bits outside the mask are ignored,
    as QEMU masks them (:attr:`CompatCaps.unknown_bits` reports them)."""
    return tuple(m.name for m in modes_of_caps(caps & KVM_PPC_COMPAT_BITMASK))


def from_device_tree(device: Device, tree: DeviceTree) -> CompatCaps | None:
    """The partition's own mode from the first ``cpu-version``: the fallback, labelled so."""
    first = next(iter(tree.cpu_versions()), None)
    mode = mode_of_logical_pvr(first[1]) if first is not None else None
    if mode is None:
        return None
    return CompatCaps((mode.name,), mode.cap_bit, "none", "device-tree", device.name)


def query(device: Device, opts: Options | None = None) -> CompatCaps:
    """Ask ``device`` which compat modes its nested guests may use."""
    opts = opts or Options()
    check_struct_size(opts.struct_size, "struct size")
    try:
        with Session(device) as session:
            rev = session.negotiate(opts)
            caps = session.get_compat_caps(rev, opts.struct_size)
            return CompatCaps(decode(caps), caps, rev.name, "ioctl", device.name)
    except (Unsupported, KernelError) as exc:
        cannot_answer = isinstance(exc, Unsupported) or exc.errno == errno.ENOTTY
        fallback = from_device_tree(device, opts.device_tree) if opts.fallback and cannot_answer else None
        if fallback is None:
            raise
        return fallback
