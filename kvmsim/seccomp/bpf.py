"""The filter ``kvmsim run --intercept seccomp`` installs: classic BPF over struct seccomp_data.

    ld  [arch]                ; a system call of another ABI (i386's int 0x80, x32) could
    jne AUDIT_ARCH_X86_64, other  ; reach this machine's /dev/kvm unseen: ENOSYS
    ld  [nr]
    jge X32_SYSCALL_BIT, other
    jeq NR_a, notify          ; one test per system call the supervisor answers
    ...
    jeq io_uring_setup, other  ; io_uring's SQEs open and ioctl with no system call the
    ...                       ; filter sees: refused as a kernel without io_uring does
    ret ALLOW                 ; everything else never leaves the kernel
  notify: ret USER_NOTIF
  other:  ret ERRNO(ENOSYS)

BPF cannot read the path a call names, so every call that takes one reaches the supervisor,
which answers CONTINUE at once for a path that names no simulated file."""

from __future__ import annotations

import errno
from collections.abc import Iterable

from . import uapi


def insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return uapi.SOCK_FILTER.pack(code, jt, jf, k)


def notify_filter(numbers: Iterable[int], refused: Iterable[int] = ()) -> bytes:
    """The program: ``numbers`` go to the supervisor, ``refused`` are ENOSYS (as another
    ABI's), other x86_64 calls are allowed."""
    nrs = sorted(set(numbers))
    nos = sorted(set(refused) - set(nrs))
    # the program's layout: 4 head instructions, one jeq each, then ALLOW, NOTIFY, OTHER
    count = len(nrs) + len(nos)
    allow = 4 + count
    notify, other = allow + 1, allow + 2
    prog = [
        insn(uapi.BPF_LD_W_ABS, uapi.SECCOMP_DATA_ARCH),
        insn(uapi.BPF_JEQ_K, uapi.AUDIT_ARCH_X86_64, 0, other - 2),
        insn(uapi.BPF_LD_W_ABS, uapi.SECCOMP_DATA_NR),
        insn(uapi.BPF_JGE_K, uapi.X32_SYSCALL_BIT, other - 4, 0),
    ]
    for i, nr in enumerate(nrs):  # jumps are relative to the next instruction
        prog.append(insn(uapi.BPF_JEQ_K, nr, notify - (4 + i) - 1, 0))
    for i, nr in enumerate(nos, start=len(nrs)):
        prog.append(insn(uapi.BPF_JEQ_K, nr, other - (4 + i) - 1, 0))
    prog += [
        insn(uapi.BPF_RET_K, uapi.SECCOMP_RET_ALLOW),
        insn(uapi.BPF_RET_K, uapi.SECCOMP_RET_USER_NOTIF),
        insn(uapi.BPF_RET_K, uapi.SECCOMP_RET_ERRNO | errno.ENOSYS),
    ]
    if len(prog) > uapi.BPF_MAXINSNS or notify - 4 > 255:
        raise ValueError(f"a filter of {len(prog)} instructions")
    return b"".join(prog)


def run_filter(prog: bytes, nr: int, arch: int = uapi.AUDIT_ARCH_X86_64) -> int:
    """What ``prog`` returns for a call (an interpreter of the four instructions used: the
    tests read the filter as the kernel would)."""
    insns = [uapi.SOCK_FILTER.unpack_from(prog, i) for i in range(0, len(prog), uapi.SOCK_FILTER.size)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == uapi.BPF_LD_W_ABS:
            acc = {uapi.SECCOMP_DATA_ARCH: arch, uapi.SECCOMP_DATA_NR: nr}[k]
        elif code == uapi.BPF_JEQ_K:
            pc += jt if acc == k else jf
        elif code == uapi.BPF_JGE_K:
            pc += jt if acc >= k else jf
        elif code == uapi.BPF_RET_K:
            return int(k)
        else:
            raise ValueError(f"instruction {code:#x}")
