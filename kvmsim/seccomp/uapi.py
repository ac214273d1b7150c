"""Numbers and layouts only: seccomp's user notification (include/uapi/linux/seccomp.h), the
classic BPF a filter is written in (include/uapi/linux/filter.h, bpf_common.h), and the x86_64
system calls and structures the supervisor reads and writes (arch/x86/entry/syscalls/
syscall_64.tbl, arch/x86/include/uapi/asm/stat.h, include/uapi/linux/stat.h, utsname.h)."""

from __future__ import annotations

import struct

# include/uapi/linux/audit.h: the architecture a system call was made in
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000  # x32's system calls: x86_64's arch with this bit set in nr

# include/uapi/linux/seccomp.h
SYS_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5  # Linux 5.19: once received, only a kill interrupts
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_ERRNO = 0x00050000  # | errno
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SETFD = 1
SECCOMP_ADDFD_FLAG_SEND = 2  # Linux 5.14: install the fd and answer with its number, atomically
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1  # Linux 6.6: wake the waiting task on the supervisor's CPU

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; };
SECCOMP_DATA = struct.Struct("=iIQ6Q")
# struct seccomp_notif { __u64 id; __u32 pid; __u32 flags; struct seccomp_data data; };
SECCOMP_NOTIF = struct.Struct("=QII" + "iIQ6Q")
# struct seccomp_notif_resp { __u64 id; __s64 val; __s32 error; __u32 flags; };
SECCOMP_NOTIF_RESP = struct.Struct("=QqiI")
# struct seccomp_notif_addfd { __u64 id; __u32 flags; __u32 srcfd; __u32 newfd; __u32 newfd_flags; };
SECCOMP_NOTIF_ADDFD = struct.Struct("=QIIII")

_IOC_WRITE, _IOC_READ = 1, 2
SECCOMP_IOC_MAGIC = ord("!")


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (SECCOMP_IOC_MAGIC << 8) | nr


SECCOMP_IOCTL_NOTIF_RECV = _ioc(_IOC_READ | _IOC_WRITE, 0, SECCOMP_NOTIF.size)
SECCOMP_IOCTL_NOTIF_SEND = _ioc(_IOC_READ | _IOC_WRITE, 1, SECCOMP_NOTIF_RESP.size)
SECCOMP_IOCTL_NOTIF_ID_VALID = _ioc(_IOC_WRITE, 2, 8)
SECCOMP_IOCTL_NOTIF_ADDFD = _ioc(_IOC_WRITE, 3, SECCOMP_NOTIF_ADDFD.size)
SECCOMP_IOCTL_NOTIF_SET_FLAGS = _ioc(_IOC_WRITE, 4, 8)

# include/uapi/linux/filter.h: struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; };
SOCK_FILTER = struct.Struct("=HBBI")
BPF_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
BPF_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K
BPF_MAXINSNS = 4096
SECCOMP_DATA_NR, SECCOMP_DATA_ARCH = 0, 4  # offsetof(struct seccomp_data, nr / arch)

# arch/x86/entry/syscalls/syscall_64.tbl: what the supervisor answers (or lets through)
NR = {
    "open": 2,
    "stat": 4,
    "fstat": 5,
    "lstat": 6,
    "ioctl": 16,
    "access": 21,
    "uname": 63,
    "readlink": 89,
    "openat": 257,
    "newfstatat": 262,
    "readlinkat": 267,
    "faccessat": 269,
    "statx": 332,
    "openat2": 437,
    "faccessat2": 439,
}
NAME_OF_NR = {nr: name for name, nr in NR.items()}

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EACCESS = 0x200
AT_EMPTY_PATH = 0x1000
PATH_MAX = 4096

# arch/x86/include/uapi/asm/stat.h: x86_64's struct stat (144 bytes)
#   st_dev, st_ino, st_nlink (unsigned long); st_mode, st_uid, st_gid (unsigned int), __pad0;
#   st_rdev; st_size, st_blksize, st_blocks (long); st_atime, _nsec, st_mtime, _nsec,
#   st_ctime, _nsec; __unused[3]
STAT = struct.Struct("=QQQIIIIQqqqQQQQQQ3q")
# include/uapi/linux/stat.h: struct statx (256 bytes); the timestamps are struct statx_timestamp
#   { __s64 tv_sec; __u32 tv_nsec; __s32 __reserved; }; after the device numbers, fields no
#   simulated file has (mount id, direct-I/O alignment, ...), zero here
STATX = struct.Struct("=IIQIIIHHQQQQ" + "qIi" * 4 + "IIII" + "112x")
STATX_BASIC_STATS = 0x07FF
# include/uapi/linux/utsname.h: struct new_utsname, six fields of 65 bytes
UTS_FIELD = 65
UTS_MACHINE_OFFSET = 4 * UTS_FIELD
# include/uapi/linux/openat2.h: struct open_how { __u64 flags; __u64 mode; __u64 resolve; };
OPEN_HOW = struct.Struct("=QQQ")

# include/uapi/linux/kvm.h's device: a misc character device, 10:232
KVM_MINOR = 232
MISC_MAJOR = 10
# include/uapi/linux/openat2.h: how an openat2(2) lookup may resolve
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20
VALID_RESOLVE_FLAGS = 0x3F
OPEN_HOW_SIZE_VER0 = 24
O_TMPFILE_BIT = 0o20000000  # include/uapi/asm-generic/fcntl.h: __O_TMPFILE (O_TMPFILE is it | O_DIRECTORY)
# io_uring: its SQEs open and ioctl without a system call the filter sees (io_uring_setup(2))
IO_URING_NRS = (425, 426, 427)  # io_uring_setup, io_uring_enter, io_uring_register
