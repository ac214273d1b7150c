"""``kvm-compat-caps``: which CPU compatibility modes may a nested guest use on this host?

Exit codes: 0 modes reported; 1 the kernel failed the call; 2 bad usage or a bad host
profile; 3 the host cannot answer (no KVM device, or a kernel without the capability)."""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence

from kvmsim._version import __version__
from kvmsim.uapi import (
    DEFAULT_REVISION,
    DEV_KVM,
    KVM_PPC_COMPAT_CAPS_SIZE_VER0,
    REVISIONS,
    InvalidInput,
    check_struct_size,
    negotiable,
)

from ._compat import CompatCaps, CompatError, Options, Unsupported, query
from ._device import Device, RealDevice
from ._devicetree import DeviceTree
from ._simulators import open_simulated
from .args import (
    EXIT_USAGE,
    OneLineParser,
    RawDescriptionFormatter,
    add_revision_options,
    directory_arg,
    revisions,
    u64_arg,
)

EXIT_OK = 0  # 2 is EXIT_USAGE (a bad option, number or profile)
EXIT_CODES = {"kernel": 1, "error": 1, "no-device": 3, "unsupported": 3}  # a CompatError's kind -> exit code


def exit_code(exc: CompatError) -> int:
    """The CLI's exit code for a failure of the library (the library's errors carry none)."""
    return EXIT_CODES.get(exc.kind, 1)


EPILOG = f"""\
revisions: linux-7.3 (what shipped, the default: cap 250, ioctl _IO(KVMIO, 0xb8)), none (a
kernel before 7.3: no capability, no ioctl), and the posted drafts v5 (cap 250, 0xe4) and v4
(cap 249, _IOR 0xe4).  The client negotiates as merged QEMU does: KVM_CHECK_EXTENSION on
/dev/kvm (--cap-fd vm asks the VM fd instead: a PR VM's answer may differ), cap 250 means
linux-7.3, else cap 249 means v4; v5 is spoken only when forced.  On E2BIG it retries once with
the size the kernel wrote back (at least 24); the recommended mode is 1 << ctz64(caps), and
qemu_host_compat_pvr QEMU's PVR for it (POWER9 0x004e1202, POWER10 0x00801200, POWER11
0x00821200), null where QEMU falls back to the raw host PVR.
--abi with --sim picks the simulated kernel's revision (default {DEFAULT_REVISION}); the client
still negotiates, except for v5, which it cannot tell from linux-7.3 by capability and so
speaks when asked.  With a real device --abi forces the client's protocol.  --cap/--ioctl-nr override the numbers of
every revision (e.g. --ioctl-nr 0xb8) on both sides; --header reads them, and the struct's
layout, from a kernel's <linux/kvm.h> (an _IOR definition means v4's rules; _IO with nr 0xe4
v5's; any other _IO, such as 7.3's _IO(KVMIO, 0xb8), linux-7.3's).  A forced --abi still checks
its own capability first, as QEMU does.  --fallback reads the partition's own
mode from /proc/device-tree/cpus/*/cpu-version when the kernel has no capability or answers
ENOTTY; the result then says "source": "device-tree".  Numbers must fit the C type they end up
in (--cap a C int, --ioctl-nr 8 bits, --struct-size a __u64); no more than 64 KiB (the largest
PAGE_SIZE a powerpc kernel reads) is allocated for the struct, whatever its size field says.
exit codes: 0 modes reported, 1 kernel error, 2 bad usage or profile, 3 host cannot answer"""


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="kvm-compat-caps",
        description="Query KVM_PPC_GET_COMPAT_CAPS on a real /dev/kvm or a simulated host.",
        epilog=EPILOG,
        formatter_class=RawDescriptionFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--device", metavar="PATH", help=f"a real KVM device (default {DEV_KVM})")
    where.add_argument("--sim", metavar="HOST", help="a simulated host: a profile name or a .toml path")
    p.add_argument("--abi", choices=list(REVISIONS), help="ABI revision (see below)")
    add_revision_options(p)
    p.add_argument(
        "--hosts-dir",
        type=directory_arg,
        action="append",
        default=[],
        metavar="DIR",
        help="with --sim: also look up host names in DIR (repeatable; before $KVMSIM_HOSTS and the built-in ones)",
    )
    p.add_argument(
        "--struct-size",
        type=u64_arg,
        default=KVM_PPC_COMPAT_CAPS_SIZE_VER0,
        metavar="BYTES",
        help="the client's struct size (its __u64 size field)",
    )
    p.add_argument("--fallback", action="store_true", help="fall back to the device tree, labelled so")
    p.add_argument(
        "--cap-fd",
        choices=["dev", "vm"],
        default="dev",
        help="where KVM_CHECK_EXTENSION is asked: dev (/dev/kvm, as QEMU does; the default) or vm (the VM fd)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _text(result: CompatCaps) -> str:
    lines = [
        f"device:              {result.device}",
        f"abi:                 {result.abi}",
        f"compat_capabilities: {result.compat_capabilities:#018x}",
        f"modes:               {' '.join(result.modes) or '(none)'}",
        f"recommended:         {result.recommended or '(none)'}"
        + (f"  (QEMU: max-cpu-compat={result.recommended})" if result.recommended else ""),
        f"qemu_host_compat_pvr: {pvr:#010x}"
        if (pvr := result.qemu_host_compat_pvr) is not None
        else "qemu_host_compat_pvr: (none: QEMU uses the raw host PVR)",
        f"source:              {result.source}",
    ]
    if result.unknown_bits:
        lines.insert(3, f"unknown bits:        {result.unknown_bits:#018x} (outside KVM_PPC_COMPAT_BITMASK, ignored)")
    return "\n".join(lines)


def _json(obj: object) -> str:
    import json  # only --json prints it

    return json.dumps(obj)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C at any point: the shell's 130, no traceback
        return 128 + 2


def _main(argv: Sequence[str] | None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.sim is not None and not args.sim.strip():
        p.error("--sim: an empty host name (give a profile name or a .toml path)")
    if args.hosts_dir and args.sim is None:
        p.error("--hosts-dir: only with --sim (a real device has no host profile)")
    try:
        check_struct_size(args.struct_size, "--struct-size")
        revs = revisions(args)
        device: Device
        tree = DeviceTree()
        if args.sim is not None:  # only now is a simulator looked up and loaded
            rev = revs[args.abi or DEFAULT_REVISION]
            device, tree = open_simulated(args.sim, rev, hosts_dirs=args.hosts_dir, device_tree=args.fallback)
            undetectable = args.abi is not None and rev not in negotiable(revs.values())
            opts_abi = args.abi if undetectable and rev.ioctl else None
        else:
            device, opts_abi = RealDevice(args.device or DEV_KVM), args.abi
        opts = Options(
            abi=opts_abi,
            struct_size=args.struct_size,
            fallback=args.fallback,
            device_tree=tree,
            revisions=revs,
            cap_fd=args.cap_fd,
        )
    except InvalidInput as exc:  # a bad profile (ProfileError), header or size; a bug is no usage error
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = query(device, opts)
    except CompatError as exc:
        if args.json:
            print(_json({"device": device.name, "error": exc.to_json()}))
        print(f"{p.prog}: {exc}", file=sys.stderr)
        if args.fallback and (isinstance(exc, Unsupported) or getattr(exc, "errno", None) == errno.ENOTTY):
            print(f"{p.prog}: --fallback: the device tree has no cpu-version to fall back on", file=sys.stderr)
        return exit_code(exc)
    print(_json(result.to_json()) if args.json else _text(result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
