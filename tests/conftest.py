"""Shared helpers: boot a simulated kernel, issue the compat-caps ioctl at a user address."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import attrs
import pytest
from kvmcompat import CompatError, query
from kvmcompat.cli import exit_code

from kvmsim import Host, Kernel, SimDevice
from kvmsim.kernel import profile
from kvmsim.uapi import REVISIONS

pytest_plugins = ["pytester"]

C_CLIENT = Path(__file__).resolve().parent.parent / "examples" / "c" / "kvm_compat_caps.c"
# a child program's helper: a call's value, or the name of its errno
ERRNO_OF = """
import errno
def e(f):
    try:
        return f()
    except OSError as exc:
        return errno.errorcode[exc.errno]
"""
needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler here")


def _no_seccomp() -> str | None:
    from kvmsim.seccomp.launch import unavailable

    return unavailable()


needs_seccomp = pytest.mark.skipif(_no_seccomp() is not None, reason=f"no seccomp path here: {_no_seccomp()}")


@pytest.fixture(scope="session")
def shim() -> Path:
    """The preload shim, built with this machine's C compiler."""
    from kvmsim.preload.library import build_shim

    return build_shim()


@pytest.fixture(scope="session")
def c_client() -> Path:
    """The C example client (examples/c), built with this machine's C compiler."""
    from kvmsim.intercept.build import compile_c

    return compile_c([C_CLIENT])


REVS = ("linux-7.3", "none", "v5", "v4")
MB = {"P9": 1 << 62, "P10": 1 << 61, "P11": 1 << 60}


def caps(*names: str) -> int:
    value = 0
    for n in names:
        value |= MB[n]
    return value


# The behaviour table: what each profile's kernel answers, per revision.  A row is
# (cap on /dev/kvm, cap on the VM fd, result) for linux-7.3, none, v5, v4; the result is a
# bitmap, the ioctl's errno name, "create:ERRNO" when KVM_CREATE_VM fails (then the VM
# fd's cap is None), or "open:ENOENT" when there is no /dev/kvm.  The request sent on a
# "none" kernel is linux-7.3's (a program built against today's headers).
Row = tuple[int | None, int | None, int | str]


def hv(result_73: int | str, result_v5: int | str | None = None, result_v4: int | str | None = None) -> dict[str, Row]:
    """kvm_hv loaded on pseries: cap 1 on both fds in every revision that has one."""
    v5 = result_73 if result_v5 is None else result_v5
    v4 = v5 if result_v4 is None else result_v4
    return {"linux-7.3": (1, 1, result_73), "none": (0, 0, "ENOTTY"), "v5": (1, 1, v5), "v4": (1, 1, v4)}


def refused(pseries: bool = True) -> dict[str, Row]:
    """kvm.ko loaded, its kvm_hv/kvm_pr refused: no VM; the drafts' capability says pseries."""
    draft = int(pseries)
    return {
        "linux-7.3": (0, None, "create:EINVAL"),
        "none": (0, None, "create:EINVAL"),
        "v5": (draft, None, "create:EINVAL"),
        "v4": (draft, None, "create:EINVAL"),
    }


def uniform(cap_draft: int, cap_73: int, result: str) -> dict[str, Row]:
    return {
        "linux-7.3": (cap_73, cap_73, result),
        "none": (0, 0, "ENOTTY"),
        "v5": (cap_draft, cap_draft, result),
        "v4": (cap_draft, cap_draft, result),
    }


NO_DEVICE: dict[str, Row] = {r: (None, None, "open:ENOENT") for r in REVS}
BEHAVIOUR: dict[str, dict[str, Row]] = {
    "powervm-p10": hv(caps("P10")),
    "powervm-p11": hv(caps("P10", "P11")),
    "powervm-p11-compat-p10": hv(caps("P10")),
    "powervm-p11-be": hv(caps("P10", "P11")),
    "powervm-p10-hcall-hardware": hv(caps("P10"), result_v4="EPERM"),  # H_HARDWARE (-1) untranslated
    "powervm-hcall-unavailable": refused(),  # no nested v2, no v1 fall-back: kvm_hv ENODEV
    "qemu-papr-p10": hv(caps("P9", "P10")),
    "kvm-l1-p9": hv(caps("P9")),
    "kvm-l1-p9-be": hv(caps("P9")),
    "kvm-l1-p10": hv(caps("P9", "P10"), result_v4=caps("P10")),
    "kvm-l1-p11": hv(caps("P9", "P10", "P11"), result_v4=caps("P11")),
    "kvm-l1-p10-compat-p9": hv(caps("P9")),
    "kvm-l1-no-cpu-version": hv("EINVAL"),
    "kvm-l1-p8-compat": refused(),  # ISA 2.07: kvm_hv ENODEV
    "powernv-p10": uniform(0, 0, "EINVAL"),
    "pseries-kvm-pr": uniform(1, 0, "ENOTTY"),  # a PR VM: 7.3's capability wants HV
    "pseries-kvm-pr-radix": refused(),  # kvm_pr refuses radix: EIO
    "x86_64": uniform(0, 0, "ENOTTY"),
    # the lab's configurations (fixtures/recorded/qemu-*: what real Linux 7.3 answered)
    "qemu-nested-hv-p9": hv(caps("P9")),
    "qemu-nested-hv-p10": hv(caps("P9", "P10"), result_v4=caps("P10")),
    "qemu-nested-hv-p10-nested-0": hv(caps("P9", "P10"), result_v4=caps("P10")),  # nested=0: the same
    "qemu-nested-hv-p10-compat-p9": hv(caps("P9")),
    "qemu-nested-papr-p9": hv(caps("P9")),
    "qemu-nested-papr-p10": hv(caps("P9", "P10")),
    "qemu-nested-papr-p10-compat-p9": hv(caps("P9")),
    "qemu-no-nesting-p10": refused(),  # nested v2 and v1 both fail: kvm_hv ENODEV
    "qemu-no-nesting-p10-nested-0": refused(),
    "qemu-nested-hv-p10-hash": refused(),  # disable_radix: kvm_hv ENODEV
    "qemu-nested-hv-p11": hv(caps("P9", "P10", "P11"), result_v4=caps("P11")),
    "qemu-nested-hv-p11-compat-p10": hv(caps("P9", "P10"), result_v4=caps("P10")),
    "qemu-nested-papr-p11": hv(caps("P9", "P10", "P11")),
    "qemu-nested-papr-p11-compat-p10": hv(caps("P9", "P10")),
    "qemu-nested-hv-p9-hash": refused(),  # disable_radix: kvm_hv ENODEV
    "qemu-powernv9": uniform(0, 0, "EINVAL"),
    "qemu-powernv10": uniform(0, 0, "EINVAL"),
    # the lab's Linux 7.3 built here: 64K pages, kvm_pr
    "qemu-nested-hv-p10-64k": hv(caps("P9", "P10"), result_v4=caps("P10")),
    "qemu-pr-p10-hash-64k": uniform(1, 0, "ENOTTY"),  # a PR VM
    "qemu-pr-p10-64k": refused(),  # kvm_pr refuses radix: EIO
    "qemu-powernv9-hash-hv-pr-64k": uniform(0, 0, "EINVAL"),  # type 0 is HV: both modules, HV first
    "no-kvm": NO_DEVICE,
}


def modes_of(result: int) -> tuple[str, ...]:
    return tuple(name for name, mode in (("power9", "P9"), ("power10", "P10"), ("power11", "P11")) if result & MB[mode])


class Vm:
    """A booted kernel with /dev/kvm open and one VM created."""

    def __init__(self, host: str | Host, abi: str, *, vm_type: int = 0, ksize: int = 24) -> None:
        self.k = (
            Kernel(host, REVISIONS[abi], ksize=ksize)
            if isinstance(host, Host)
            else (Kernel.from_profile(host, abi=abi, ksize=ksize))
        )
        self.dev = self.k.open()
        self.vm = self.k.ioctl(self.dev, self.k.KVM_CREATE_VM, vm_type)
        self.layout = self.k.rev.layout
        self.bo = self.k.host.arch.byteorder

    def struct(self, size: int = 24, flags: int = 0, caps: int = 0) -> bytes:
        return self.layout.pack(self.bo, size=size, flags=flags, compat_capabilities=caps)

    @property
    def request(self) -> int:
        request = self.k.KVM_PPC_GET_COMPAT_CAPS
        assert request is not None
        return request

    def call(self, addr: int) -> int:
        return int(self.k.ioctl(self.vm, self.request, addr))

    def errno_of(self, addr: int) -> int:
        with pytest.raises(OSError) as exc:
            self.call(addr)
        return exc.value.errno  # type: ignore[return-value]

    def fields(self, addr: int) -> dict[str, int]:
        return dict(self.layout.unpack(self.bo, self.k.memory.read(addr, 24)))


@pytest.fixture(params=REVS)
def abi(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def evolved(name: str, **changes: object) -> Host:
    """A profile with some facts changed (attrs.evolve on the loaded host)."""
    return attrs.evolve(profile.load(name), **changes)


def errname(err: int) -> str:
    return errno.errorcode[err]


def client_answer(host: str, abi: str) -> tuple[int, dict[str, object]]:
    """What the in-process Python client says (exit code, answer), in the vocabulary the
    C example client prints: the kind and errno name of a failure, else the modes."""
    try:
        r = query(SimDevice(Kernel.from_profile(host, abi=abi)))
    except CompatError as exc:
        e = exc.to_json()
        return exit_code(exc), {"kind": e["kind"], "name": e.get("name")}
    return 0, {"abi": r.abi, "compat_capabilities": r.compat_capabilities, "modes": list(r.modes)}


def printed_answer(stdout: str) -> dict[str, object]:
    """A client's JSON line, reduced to what every client must agree on."""
    out = json.loads(stdout)
    if "error" in out:
        return {"kind": out["error"]["kind"], "name": out["error"]["name"]}
    assert out["recommended"] == (out["modes"][-1] if out["modes"] else None)
    return {k: out[k] for k in ("abi", "compat_capabilities", "modes")}
