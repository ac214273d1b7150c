"""What the stat family tells a program (the kernel's struct kstat), and its two x86_64
layouts: ``struct stat`` (``cp_new_stat``) and ``struct statx`` (``cp_statx``)."""

from __future__ import annotations

import os
import stat

import attrs

from . import uapi

U64 = (1 << 64) - 1


@attrs.frozen
class Kstat:
    mode: int
    ino: int = 0
    dev: int = 0
    rdev: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    size: int = 0
    blksize: int = 4096
    blocks: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0

    @classmethod
    def of(cls, st: os.stat_result) -> Kstat:
        """A real file's, as this machine's kernel gave it."""
        return cls(
            st.st_mode, st.st_ino, st.st_dev, st.st_rdev, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
            st.st_blksize, st.st_blocks, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
        )  # fmt: skip

    def pack_stat(self) -> bytes:
        """``cp_new_stat``: x86_64's struct stat declares its times unsigned long, and the
        kernel stores a time64_t in them: a time before 1970 is its two's complement."""
        a, m, c = ((s & U64, ns) for s, ns in (divmod(t, 10**9) for t in (self.atime_ns, self.mtime_ns, self.ctime_ns)))
        return uapi.STAT.pack(
            self.dev, self.ino, self.nlink, self.mode, self.uid, self.gid, 0, self.rdev,
            self.size, self.blksize, self.blocks, *a, *m, *c, 0, 0, 0,
        )  # fmt: skip

    def pack_statx(self) -> bytes:
        a, m, c = (divmod(t, 10**9) for t in (self.atime_ns, self.mtime_ns, self.ctime_ns))
        return uapi.STATX.pack(
            uapi.STATX_BASIC_STATS, self.blksize, 0, self.nlink, self.uid, self.gid, self.mode & 0xFFFF, 0,
            self.ino, self.size, self.blocks, 0,
            *a, 0, 0, 0, 0, *c, 0, *m, 0,  # atime, btime (not asked), ctime, mtime
            os.major(self.rdev), os.minor(self.rdev), os.major(self.dev), os.minor(self.dev),
        )  # fmt: skip


def dev_kvm() -> Kstat:
    """The simulated /dev/kvm: a character device 10:232, mode 0660, root's (the shim's
    ``dev_kvm_stat``)."""
    return Kstat(stat.S_IFCHR | 0o660, rdev=os.makedev(uapi.MISC_MAJOR, uapi.KVM_MINOR))


def is_dev_kvm(st: os.stat_result) -> bool:
    """Is this real file a KVM device (10:232), whatever its name?"""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(uapi.MISC_MAJOR, uapi.KVM_MINOR)
