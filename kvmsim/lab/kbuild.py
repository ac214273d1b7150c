"""A ppc64le kernel built here, for what Debian's build lacks: Linux 7.3 from Debian's
``linux-source-7.3`` with 64K pages and both KVM modules (kvm_hv and kvm_pr), on a small
configuration (``allnoconfig`` plus :data:`FRAGMENT`: the pseries and powernv platforms, the
hvc consoles, an initramfs, xz-compressed modules) that builds in about four minutes on 2 cores.

The cross compiler, bison, flex and m4 come from the lab's private apt tree like everything
else; the build is cached in ``<lab cache>/kbuild/<digest>/`` by the hash of its inputs (the
source package's version, the fragment, the compiler) and rebuilt only when one changes."""

from __future__ import annotations

import hashlib
import lzma
import os
import subprocess
import tarfile
import time
from pathlib import Path

import attrs

from .debian import Archive, FetchError, Package

SOURCE = Package("linux-source-7.3", "experimental")
BUILD_TOOLS = [Package(name, "bookworm") for name in ("bison", "flex", "m4")]
CROSS = "powerpc64le-linux-gnu-"
CROSS_GCC = "usr/bin/powerpc64le-linux-gnu-gcc-12"
BUILD_TIMEOUT = 3600  # seconds: a cold build on 2 cores takes about a quarter of this

# Beyond allnoconfig: the platforms, 64K pages, both KVM modules, what the prober's /init
# needs (ELF, devtmpfs, proc, sys, an initramfs, xz modules), ALTIVEC/VSX: glibc uses VSX
# from POWER8 on, so without them every static program dies of SIGILL as init; and epoll for
# QEMU's main loop (kvmsim lab --qemu: without it glib says so on stderr), which no KVM answer
# depends on.
FRAGMENT = """\
CONFIG_PPC64=y
CONFIG_PPC_BOOK3S_64=y
CONFIG_CPU_LITTLE_ENDIAN=y
CONFIG_PPC_64K_PAGES=y
CONFIG_PPC_RADIX_MMU=y
CONFIG_PPC_RADIX_MMU_DEFAULT=y
CONFIG_PPC_DISABLE_WERROR=y
CONFIG_PPC_PSERIES=y
CONFIG_PPC_POWERNV=y
CONFIG_PPC_OF_BOOT_TRAMPOLINE=y
CONFIG_ALTIVEC=y
CONFIG_VSX=y
CONFIG_SMP=y
CONFIG_NR_CPUS=2048
CONFIG_PRINTK=y
CONFIG_TTY=y
CONFIG_HVC_CONSOLE=y
CONFIG_HVC_OPAL=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_DEVTMPFS=y
CONFIG_PROC_FS=y
CONFIG_SYSFS=y
CONFIG_BINFMT_ELF=y
CONFIG_MODULES=y
CONFIG_MODULE_UNLOAD=y
CONFIG_MODULE_DECOMPRESS=y
CONFIG_MODULE_COMPRESS=y
CONFIG_MODULE_COMPRESS_XZ=y
CONFIG_MODULE_SIG=n
CONFIG_VIRTUALIZATION=y
CONFIG_KVM_BOOK3S_64=m
CONFIG_KVM_BOOK3S_64_HV=m
CONFIG_KVM_BOOK3S_64_PR=m
CONFIG_KVM_XICS=y
CONFIG_FUTEX=y
CONFIG_EPOLL=y
CONFIG_MULTIUSER=y
CONFIG_EXPERT=y
"""
MODULES = ("kvm", "kvm-hv", "kvm-pr")  # installed (xz-compressed) under mods/lib/modules/RELEASE


@attrs.frozen
class Built:
    """A finished build: the kernel QEMU boots and the modules the prober loads."""

    vmlinux: Path
    modules: dict[str, Path]
    release: str
    seconds: float  # how long it took (0: from the cache)


def digest(source_version: str, tree: Path) -> str:
    gcc = (tree / CROSS_GCC).read_bytes() if (tree / CROSS_GCC).exists() else b""
    h = hashlib.sha256(f"{source_version}\n{FRAGMENT}".encode())
    h.update(hashlib.sha256(gcc).digest())
    return h.hexdigest()[:16]


def _tools_env(tree: Path, bin_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(bin_dir), str(tree / "usr/bin"), os.environ.get("PATH", "")]),
        "LD_LIBRARY_PATH": str(tree / "usr/lib/x86_64-linux-gnu"),
        "M4": str(tree / "usr/bin/m4"),
        "BISON_PKGDATADIR": str(tree / "usr/share/bison"),
    }


def build_kernel(archive: Archive, versions: dict[str, str]) -> Built:
    """The 64K-page kernel with kvm_hv and kvm_pr, from the cache or built now."""
    tree = archive.tree
    key = digest(versions[SOURCE.name], tree)
    with archive.dir("kbuild") as kb, kb.subdir(key) as d:
        root = Path(d.path)
        out = root / "out"
        done = root / "done"
        if done.exists():
            return _built(root, 0.0)
        start = time.monotonic()
        src = root / "src"
        if not (src / "Makefile").exists():
            _unpack(tree / f"usr/src/{SOURCE.name}.tar.xz", root)
        bin_dir = root / "bin"  # the cross gcc under the name the kernel's Makefile calls
        bin_dir.mkdir(exist_ok=True)
        link = bin_dir / f"{CROSS}gcc"
        if not link.is_symlink():
            link.symlink_to(tree / CROSS_GCC)
        (root / "lab.config").write_text(FRAGMENT)
        env = _tools_env(tree, bin_dir)
        make = ["make", "-s", "-C", str(src), "ARCH=powerpc", f"CROSS_COMPILE={CROSS}", f"O={out}"]
        steps = [
            [*make, f"KCONFIG_ALLCONFIG={root / 'lab.config'}", "allnoconfig"],
            [*make, f"-j{os.cpu_count() or 1}", "vmlinux", "modules"],
            [*make, f"INSTALL_MOD_PATH={root / 'mods'}", "DEPMOD=/bin/true", "modules_install"],
        ]
        for step in steps:
            try:
                r = subprocess.run(step, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                raise FetchError(f"building the 64K-page kernel timed out after {BUILD_TIMEOUT} s") from None
            if r.returncode != 0:
                first = next((ln for ln in r.stderr.splitlines() if "rror" in ln), r.stderr.strip()[-200:])
                raise FetchError(f"building the 64K-page kernel failed ({step[-1]}): {first}")
        _compress(root)
        built = _built(root, time.monotonic() - start)
        done.write_text(f"{built.seconds:.0f}\n")
        return built


def _compress(root: Path) -> None:
    """The KVM modules as modules_install compresses them with CONFIG_MODULE_COMPRESS_ALL
    (``xz --check=crc32 --lzma2=dict=1MiB``: what the kernel's in-kernel decompressor takes),
    which allnoconfig leaves off; the prober loads them with MODULE_INIT_COMPRESSED_FILE."""
    for ko in (root / "mods/lib/modules").glob("*/kernel/arch/powerpc/kvm/*.ko"):
        data = lzma.compress(
            ko.read_bytes(),
            format=lzma.FORMAT_XZ,
            check=lzma.CHECK_CRC32,
            filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}],
        )
        ko.with_name(ko.name + ".xz").write_bytes(data)


def _unpack(tarball: Path, root: Path) -> None:
    """The source tree into ``root/src`` (the tarball's top directory renamed)."""
    with tarfile.open(tarball) as tar:
        tar.extractall(root, filter="data")
    (root / SOURCE.name).rename(root / "src")


def _built(root: Path, seconds: float) -> Built:
    out = root / "out"
    release = (out / "include/config/kernel.release").read_text().strip()
    kvm = root / "mods/lib/modules" / release / "kernel/arch/powerpc/kvm"
    modules = {m: kvm / f"{m}.ko.xz" for m in MODULES}
    missing = [m for m, path in modules.items() if not path.exists()]
    if missing or not (out / "vmlinux").exists():
        raise FetchError(f"the 64K-page kernel build in {root} is missing {', '.join(missing) or 'vmlinux'}")
    return Built(out / "vmlinux", modules, release, seconds)
