"""Debian's QEMU for a POWER host, and the qemu-user that runs it here: ``kvmsim fetch-qemu``.
The ppc64el ``qemu-system-ppc`` with its library closure (what ``apt-get install
--no-install-recommends`` brings into an empty system, about 60 packages), its firmware
(``qemu-system-data``: ``slof.bin``, ``vof.bin``) and the amd64 ``qemu-user``, from sid, through
the lab's private apt (its signed lists, every .deb checked against them), unpacked into one
sysroot in the lab's cache with merged-/usr links, so that ``kvmsim run --sysroot`` can run
that QEMU unmodified against a simulated host."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import attrs

from .debian import Archive, Package

QEMU_SUITE = "sid"
# and strace for ppc64el, which kvmsim lab --qemu runs QEMU under inside the L1 (it needs only libc6)
QEMU_PACKAGES = ("qemu-system-ppc:ppc64el", "qemu-system-data", "qemu-user:amd64", "strace:ppc64el")
SYSROOT = "qemu-sysroot"  # below the lab's cache
MERGED_USR = (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin"), ("sbin", "usr/sbin"))


@attrs.frozen
class QemuSysroot:
    root: Path
    versions: dict[str, str]

    @property
    def qemu_system(self) -> Path:
        return self.root / "usr" / "bin" / "qemu-system-ppc64"

    @property
    def qemu_user(self) -> Path:
        return self.root / "usr" / "bin" / "qemu-ppc64le"

    @property
    def firmware(self) -> Path:
        return self.root / "usr" / "share" / "qemu"

    @property
    def version(self) -> str:
        return self.versions["qemu-system-ppc:ppc64el"]


def fetch_sysroot(archive: Archive) -> QemuSysroot:
    """Resolve, download (once), check and unpack; the merged-/usr links the loader needs.  One
    process at a time (a lock in the cache: pytest's workers each ask)."""
    with archive.dir() as root:
        fd = os.open("qemu-sysroot.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=root.fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _fetch(archive)
    finally:
        os.close(fd)


def _fetch(archive: Archive) -> QemuSysroot:
    archive.update()
    packages = _closure(archive)
    versions = archive.fetch(packages, tree=SYSROOT)
    with archive.dir(SYSROOT) as tree:
        for link, target in MERGED_USR:
            if tree.stat(link) is None:
                os.symlink(target, link, dir_fd=tree.fd)
    return QemuSysroot(archive.root / SYSROOT, versions)


def _closure(archive: Archive) -> list[Package]:
    """The packages to fetch, resolved once for each refresh of the lists (apt's resolution takes
    a while; the lists' stamp says when they changed)."""
    with archive.dir("apt/state") as state:
        stamp = state.stat("updated")
    key = f"{stamp.st_mtime_ns if stamp else 0} {' '.join(QEMU_PACKAGES)}"
    with archive.dir() as root:
        saved = (root.read("qemu-closure") or b"").decode().splitlines()
        if saved[:1] == [key]:
            return [Package(name, QEMU_SUITE) for name in saved[1:]]
        packages = archive.closure(list(QEMU_PACKAGES), QEMU_SUITE)
        root.write("qemu-closure", "\n".join([key, *(p.name for p in packages)]) + "\n")
    return packages
