"""The lab's machines: each a QEMU command line, a kernel, and the host profile that says the
same machine to the simulator (``fixtures/hosts/qemu-<name>.toml``)."""

from __future__ import annotations

import attrs

from ..user.probe import QEMU_PAPR_L0
from .debian import Package


@attrs.frozen
class KernelPackage:
    """A Debian ppc64le kernel build: its packages, and where they put vmlinuz and modules."""

    version: str  # "7.3", "7.2"
    release: str  # uname -r and the modules directory
    suite: str
    revision: str  # the kvmsim revision it speaks

    @property
    def packages(self) -> list[Package]:
        return [
            Package(f"linux-binary-{self.release}:ppc64el", self.suite),
            Package(f"linux-modules-{self.release}:ppc64el", self.suite),
        ]

    @property
    def vmlinuz(self) -> str:
        return f"usr/lib/modules/{self.release}/vmlinuz"

    def module(self, name: str) -> str:
        return f"usr/lib/modules/{self.release}/kernel/arch/powerpc/kvm/{name}.ko.xz"


@attrs.frozen
class KernelBuild:
    """Linux built here from Debian's source (kvmsim.lab.kbuild): 64K pages, kvm_hv and kvm_pr."""

    version: str  # "7.3-64k"
    revision: str

    @property
    def packages(self) -> list[Package]:
        from .kbuild import BUILD_TOOLS, SOURCE

        return [SOURCE, *BUILD_TOOLS]


Kernel = KernelPackage | KernelBuild
KERNELS: dict[str, Kernel] = {
    k.version: k
    for k in (
        KernelPackage("7.3", "7.3-powerpc64le", "experimental", "linux-7.3"),  # has the feature
        KernelPackage("7.2", "7.2.13+deb14-powerpc64le", "sid", "none"),  # the last kernel without it
        KernelBuild("7.3-64k", "linux-7.3"),  # what Debian's build lacks: 64K pages and kvm_pr
    )
}


@attrs.frozen
class Config:
    """One boot: ``-M machine,opts -cpu cpu`` with ``append`` on the kernel command line."""

    name: str
    machine: str
    cpu: str
    opts: tuple[str, ...] = ()
    append: tuple[str, ...] = ()
    kernel: str = "7.3"
    modules: tuple[str, ...] = ("kvm", "kvm-hv")  # what the initramfs packs: the prober loads these

    @property
    def profile(self) -> str:
        return f"qemu-{self.name.removesuffix('-linux-7.2')}"

    @property
    def recording(self) -> str:
        """The file the lab writes: ``qemu-<config>-linux-<version>.toml`` (a kernel built
        here says so in the configuration's name: ``-64k``)."""
        return f"{self.profile}-linux-{self.kernel.removesuffix('-64k')}.toml"

    @property
    def pseries(self) -> bool:
        return self.machine == "pseries"

    def qemu_args(self) -> list[str]:
        machine = ",".join([self.machine, *(("x-vof=on",) if self.pseries else ()), *self.opts])
        return [
            "-M",
            machine,
            "-cpu",
            self.cpu,
            "-m",
            "2G",
            "-smp",
            "1",
            "-accel",
            "tcg",
            "-nographic",
            "-vga",
            "none",
            "-audio",
            "none",
            "-no-reboot",
        ]

    def cmdline(self) -> str:
        l0 = [QEMU_PAPR_L0] if "cap-nested-papr=on" in self.opts else []
        return " ".join(["console=hvc0", "loglevel=1", "quiet", *self.append, *l0])


NESTED_HV, NESTED_PAPR = ("cap-nested-hv=on",), ("cap-nested-papr=on",)
CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("nested-hv-p9", "pseries", "power9", NESTED_HV),
        Config("nested-hv-p10", "pseries", "power10", NESTED_HV),
        Config("nested-hv-p10-compat-p9", "pseries", "power10", (*NESTED_HV, "max-cpu-compat=power9")),
        Config("nested-papr-p9", "pseries", "power9", NESTED_PAPR),
        Config("nested-papr-p10", "pseries", "power10", NESTED_PAPR),
        Config("nested-papr-p10-compat-p9", "pseries", "power10", (*NESTED_PAPR, "max-cpu-compat=power9")),
        Config("no-nesting-p10", "pseries", "power10"),
        Config("nested-hv-p10-hash", "pseries", "power10", NESTED_HV, ("disable_radix",)),
        Config("powernv9", "powernv9", "power9"),
        Config("powernv10", "powernv10", "power10"),
        Config("nested-hv-p10-linux-7.2", "pseries", "power10", NESTED_HV, kernel="7.2"),
        Config("nested-papr-p10-linux-7.2", "pseries", "power10", NESTED_PAPR, kernel="7.2"),
        Config("nested-hv-p11", "pseries", "power11", NESTED_HV),
        Config("nested-hv-p11-compat-p10", "pseries", "power11", (*NESTED_HV, "max-cpu-compat=power10")),
        Config("nested-papr-p11", "pseries", "power11", NESTED_PAPR),
        Config("nested-papr-p11-compat-p10", "pseries", "power11", (*NESTED_PAPR, "max-cpu-compat=power10")),
        Config("nested-hv-p9-hash", "pseries", "power9", NESTED_HV, ("disable_radix",)),
        # kvm_hv's module parameter nested=0 (the prober passes it as modprobe would, from the
        # kernel command line): under a nesting L0, and under one that offers no nesting at all
        Config("nested-hv-p10-nested-0", "pseries", "power10", NESTED_HV, ("kvm_hv.nested=0",)),
        Config("no-nesting-p10-nested-0", "pseries", "power10", (), ("kvm_hv.nested=0",)),
        # Linux 7.3 built here with 64K pages and kvm_pr (kvmsim.lab.kbuild): the PAGE_SIZE guard
        # at 64K, a hash partition's PR VM, kvm_pr refusing radix, and HV and PR on one host
        Config("nested-hv-p10-64k", "pseries", "power10", NESTED_HV, kernel="7.3-64k"),
        Config("pr-p10-hash-64k", "pseries", "power10", (), ("disable_radix",), "7.3-64k", ("kvm", "kvm-pr")),
        Config("pr-p10-64k", "pseries", "power10", (), (), "7.3-64k", ("kvm", "kvm-pr")),
        Config(
            "powernv9-hash-hv-pr-64k",
            "powernv9",
            "power9",
            (),
            ("disable_radix",),
            "7.3-64k",
            ("kvm", "kvm-hv", "kvm-pr"),
        ),
    )
}

# QEMU with cap-nested-hv and cap-nested-papr (extracted, never installed), and what it needs
QEMU = [Package("qemu-system-ppc", "bookworm-backports"), Package("qemu-system-data", "bookworm-backports")]
QEMU_LIBS = [
    Package(name, "bookworm")
    for name in (
        "libcapstone4",
        "libpmem1",
        "libfdt1",
        "librdmacm1",
        "libibverbs1",
        "libslirp0",
        "libvdeplug2",
        "libfuse3-3",
        "libaio1",
        "liburing2",
        "libndctl6",
        "libdaxctl1",
        "libnl-3-200",
        "libnl-route-3-200",
    )
]
# a ppc64le cross compiler for the static prober (HEADERS: the uapi it is built against)
TOOLCHAIN = [
    *(
        Package(name, "bookworm")
        for name in (
            "gcc-12-powerpc64le-linux-gnu",
            "cpp-12-powerpc64le-linux-gnu",
            "binutils-powerpc64le-linux-gnu",
            "libgcc-12-dev-ppc64el-cross",
            "libc6-dev-ppc64el-cross",
            "libc6-ppc64el-cross",
            "libgcc-s1-ppc64el-cross",
        )
    ),
    Package("linux-libc-dev-ppc64el-cross", "experimental"),
]
HEADERS = [Package("linux-libc-dev", "experimental")]  # Linux 7.3's <linux/kvm.h>
