"""A stateful test of the fd lifecycle: open /dev/kvm, create VMs, close in any order.
The model is the kernel's: fds are the lowest free numbers, a VM fd outlives the /dev/kvm fd
it came from, and every call on a closed fd is EBADF."""

from __future__ import annotations

import errno

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvmsim import Kernel


class FdLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.k = Kernel.from_profile("powervm-p11", abi="v5")
        self.model: dict[int, str] = {}  # fd -> "dev" | "vm"
        self.closed: set[int] = set()

    def _lowest_free(self) -> int:
        fd = 3
        while fd in self.model:
            fd += 1
        return fd

    @rule()
    def open_dev(self) -> None:
        fd = self.k.open()
        assert fd == self._lowest_free()
        self.model[fd] = "dev"
        self.closed.discard(fd)

    @precondition(lambda self: "dev" in self.model.values())
    @rule(data=st.data())
    def create_vm(self, data: st.DataObject) -> None:
        dev = data.draw(st.sampled_from(sorted(fd for fd, kind in self.model.items() if kind == "dev")))
        expected = self._lowest_free()
        assert self.k.ioctl(dev, self.k.KVM_CREATE_VM, 0) == expected
        self.model[expected] = "vm"
        self.closed.discard(expected)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        fd = data.draw(st.sampled_from(sorted(self.model)))
        self.k.close(fd)
        del self.model[fd]
        self.closed.add(fd)

    @rule(data=st.data())
    def ioctl_anywhere(self, data: st.DataObject) -> None:
        fd = data.draw(st.sampled_from(sorted({*self.model, *self.closed, 99})))
        try:
            got: int | str = int(self.k.ioctl(fd, self.k.KVM_CHECK_EXTENSION, 250))
        except OSError as exc:
            got = errno.errorcode[exc.errno or 0]
        assert got == (1 if fd in self.model else "EBADF")

    @precondition(lambda self: bool(self.closed))
    @rule(data=st.data())
    def close_twice(self, data: st.DataObject) -> None:
        fd = data.draw(st.sampled_from(sorted(self.closed)))
        try:
            self.k.close(fd)
            raise AssertionError("closing a closed fd succeeded")
        except OSError as exc:
            assert exc.errno == errno.EBADF

    @invariant()
    def fd_table_is_the_model(self) -> None:
        kinds = {"/dev/kvm": "dev", "anon_inode:kvm-vm": "vm"}
        assert {fd: kinds[v] for fd, v in self.k.fds().items()} == self.model


TestFdLifecycle = FdLifecycle.TestCase
TestFdLifecycle.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
