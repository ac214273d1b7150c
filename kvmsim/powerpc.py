"""The powerpc arch layer (arch/powerpc/kvm/powerpc.c and book3s.c): module loading,
``kvm_vm_ioctl_check_extension``, ``kvm_arch_init_vm`` and ``kvm_arch_vm_ioctl``'s
``KVM_PPC_GET_COMPAT_CAPS`` case, one step function per ABI revision's handler."""

from __future__ import annotations

import errno
from collections.abc import Callable

import attrs

from .book3s_hv import PR_OPS, HvModule, KvmppcOps, kvmhv_on_pseries, kvmppc_book3s_init_hv
from .errors import KvmError
from .profile import Host
from .uapi import KVM_PPC_COMPAT_CAPS_SIZE_VER0, KVM_VM_PPC_HV, KVM_VM_PPC_PR, AbiRevision
from .usermem import Fault, UserAccess


@attrs.frozen
class Vm:
    """``struct kvm`` as far as this ioctl cares: the ops it was created with."""

    ops: KvmppcOps


class PowerpcKvm:
    """KVM on a powerpc kernel, with whichever of kvm_hv / kvm_pr loaded."""

    def __init__(self, host: Host, rev: AbiRevision, ksize: int, printk: Callable[[str], None]) -> None:
        self.host, self.rev, self.ksize = host, rev, ksize
        self.request = rev.request(host.arch)
        self.hv: HvModule | None = None
        if "kvm_hv" in host.modules:
            self.hv = kvmppc_book3s_init_hv(host, rev, printk)
        self.pr: KvmppcOps | None = PR_OPS if "kvm_pr" in host.modules else None

    @property
    def loaded_modules(self) -> list[str]:
        """The modules whose init succeeded, with ``kvm`` itself when any did."""
        loaded = [name for name, ops in (("kvm_hv", self.hv), ("kvm_pr", self.pr)) if ops is not None]
        return ["kvm", *loaded] if loaded else []

    @property
    def loaded(self) -> bool:
        """Any KVM module loaded, so /dev/kvm exists."""
        return bool(self.loaded_modules)

    # kvm_vm_ioctl_check_extension(): same answer with or without a VM, whatever its ops
    def check_extension(self, ext: int) -> int:
        if ext == self.rev.cap:
            return int(self.host.book3s_hv and kvmhv_on_pseries(self.host))
        return 0

    # kvm_arch_init_vm(): type 0 prefers HV, then PR
    def init_vm(self, type_: int) -> Vm:
        hv = self.hv.ops if self.hv is not None else None
        ops = {0: hv or self.pr, KVM_VM_PPC_HV: hv, KVM_VM_PPC_PR: self.pr}.get(type_)
        if ops is None:
            raise KvmError(errno.EINVAL, f"KVM_CREATE_VM type {type_}: no such VM type or its module is not loaded")
        return Vm(ops)

    def dev_ioctl(self, request: int, arg: int) -> int:
        raise KvmError(errno.EINVAL, f"unknown /dev/kvm ioctl {request:#x} (kvm_arch_dev_ioctl)")

    def vm_ioctl(self, vm: Vm, request: int, argp: int, mem: UserAccess) -> int:
        if request != self.request:
            raise KvmError(errno.ENOTTY, f"unknown VM ioctl {request:#x}")
        try:
            return _HANDLERS[self.rev.size_rule](self, vm, argp, mem)
        except Fault as fault:
            raise KvmError(errno.EFAULT, f"user memory: {fault}") from None

    # -- the revisions' handlers ------------------------------------------

    def _backend(self, vm: Vm) -> int:
        if vm.ops.get_compat_caps is None:
            raise KvmError(errno.ENOTTY, f"{vm.ops.name} VMs have no get_compat_caps op")
        return vm.ops.get_compat_caps()

    def _out(self, size: int, caps: int) -> bytes:
        bo = self.host.arch.byteorder
        body = self.rev.layout.pack(bo, flags=0, size=size, compat_capabilities=caps)
        return body.ljust(self.ksize, b"\0")

    def get_compat_caps_v4(self, vm: Vm, argp: int, mem: UserAccess) -> int:
        """v4: get_user(size) at its offset; size < sizeof(caps) → EINVAL; larger is fine."""
        layout, bo = self.rev.layout, self.host.arch.byteorder
        size = mem.get_user_u64(argp + layout.offset("size"), bo)
        if size < self.ksize:
            raise KvmError(errno.EINVAL, f"size {size} is smaller than the struct ({self.ksize})")
        caps = self._backend(vm)
        mem.copy_to_user(argp, self._out(self.ksize, caps))
        return 0

    def get_compat_caps_v5(self, vm: Vm, argp: int, mem: UserAccess) -> int:
        """v5: usize/ksize, E2BIG with ksize written back, copy_struct_from_user, flags."""
        layout, bo, ksize = self.rev.layout, self.host.arch.byteorder, self.ksize
        usize = mem.get_user_u64(argp + layout.offset("size"), bo)
        if usize < KVM_PPC_COMPAT_CAPS_SIZE_VER0:
            raise KvmError(errno.EINVAL, f"size {usize} is smaller than KVM_PPC_COMPAT_CAPS_SIZE_VER0 (24)")
        if usize > ksize:
            mem.put_user_u64(argp + layout.offset("size"), ksize, bo)
            raise KvmError(
                errno.E2BIG, f"size {usize} is larger than the kernel's struct; {ksize} written back to size"
            )
        # copy_struct_from_user(): usize <= ksize here, the rest is zero-filled
        kbuf = mem.copy_from_user(argp, usize).ljust(ksize, b"\0")
        flags = layout.unpack(bo, kbuf)["flags"]
        if self.rev.checks_flags and flags:
            raise KvmError(errno.EINVAL, f"flags {flags:#x} must be 0")
        caps = self._backend(vm)
        mem.copy_to_user(argp, self._out(usize, caps)[:usize])
        return 0


_HANDLERS: dict[str, Callable[[PowerpcKvm, Vm, int, UserAccess], int]] = {
    "accept-larger": PowerpcKvm.get_compat_caps_v4,
    "e2big": PowerpcKvm.get_compat_caps_v5,
}
