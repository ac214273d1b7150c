"""arch/powerpc/kvm/book3s_rtas.c: the RTAS calls a VM hands to the kernel by token
(KVM_PPC_RTAS_DEFINE_TOKEN).  The kernel runs four of them itself, XICS's interrupt
controls (CONFIG_KVM_XICS: every powerpc build kvmsim models has it); a token names one
of them for this VM, token 0 forgets a name."""

from __future__ import annotations

import errno

import attrs

from ..uapi import RTAS_NAME_LEN
from .errors import KvmError

# rtas_handlers[]: what kvmppc_rtas_hcall() can run, by the name userspace defines it with
RTAS_HANDLERS = (b"ibm,set-xive", b"ibm,get-xive", b"ibm,int-off", b"ibm,int-on")


@attrs.frozen
class RtasTokenDefinition:
    handler: bytes
    token: int


def rtas_name_matches(s1: bytes, s2: bytes) -> bool:
    """strncmp(s1, s2, sizeof(args.name)) == 0: equal up to the first NUL of either."""
    return s1[:RTAS_NAME_LEN].split(b"\0", 1)[0] == s2[:RTAS_NAME_LEN].split(b"\0", 1)[0]


# kvm_vm_ioctl_rtas_define_token(): after copy_from_user, a token defines, 0 undefines
def kvm_vm_ioctl_rtas_define_token(tokens: list[RtasTokenDefinition], name: bytes, token: int) -> int:
    if token:
        rtas_token_define(tokens, name, token)
    else:
        rtas_token_undefine(tokens, name)
    return 0


def rtas_token_undefine(tokens: list[RtasTokenDefinition], name: bytes) -> None:
    """The first definition of the name goes; an undefined name is not an error."""
    for i, d in enumerate(tokens):
        if rtas_name_matches(d.handler, name):
            del tokens[i]
            return


def rtas_token_define(tokens: list[RtasTokenDefinition], name: bytes, token: int) -> None:
    """The token must be new (EEXIST, before the name is looked at), the name a handler's
    (ENOENT); one name may be defined under several tokens."""
    if any(d.token == token for d in tokens):
        raise KvmError(errno.EEXIST, f"KVM_PPC_RTAS_DEFINE_TOKEN: token {token:#x} is already defined")
    for handler in RTAS_HANDLERS:
        if rtas_name_matches(handler, name):
            tokens.append(RtasTokenDefinition(handler, token))
            return
    shown = name.split(b"\0", 1)[0][:40].decode("ascii", "backslashreplace")
    raise KvmError(errno.ENOENT, f"KVM_PPC_RTAS_DEFINE_TOKEN: the kernel runs no RTAS call {shown!r}")
