"""``kvmsim``: look at the simulated hosts.

  kvmsim hosts            the profiles, one line each
  kvmsim show HOST        a profile and what the simulated kernel derives from it
  kvmsim matrix           every profile × revision: capability, result or errno, modes

Exit codes: 0 success, 2 bad usage or a bad profile."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import papr, probe, profile
from .kvm_main import Kernel
from .profile import Host, ProfileError
from .uapi import REVISIONS, AbiRevision, mode_of_logical_pvr, modes_of_caps

EXIT_OK, EXIT_USAGE = 0, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def describe(answer: probe.Answer) -> str:
    """A compat-caps answer for people: the bitmap and its modes, or the errno."""
    if isinstance(answer, str):
        return answer
    names = " ".join(m.name for m in modes_of_caps(answer)) or "(none)"
    return f"{answer:#018x} {names}"


def observe(host: Host, rev: AbiRevision) -> tuple[probe.Answer, probe.Answer, Kernel]:
    """(the capability on /dev/kvm, the ioctl's answer) of a freshly booted kernel."""
    kernel = Kernel(host, rev)
    probes = [next(probe.cap_probes([rev])), next(probe.compat_caps_probes(rev))]
    answers = probe.run(kernel, probes)
    if answers["open"] != "fd":
        return "-", f"{answers['open']} (no /dev/kvm)", kernel
    cap = answers.get(probes[0].name, "-")
    result = answers.get(probes[1].name) or f"{answers.get('create vm')} (KVM_CREATE_VM)"
    return cap, result, kernel


def cmd_hosts(args: argparse.Namespace) -> int:
    names = profile.names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {profile.load(name).summary}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    host = profile.load(args.host)
    hv, cpu = host.hypervisor, host.cpu
    print(f"{host.name}: {host.summary}")
    print(f"  file:        {host.path}")
    print(f"  arch:        {host.arch.name} ({host.arch.byteorder}-endian, {host.arch.ioc.name} ioctl encoding)")
    under = f" under {hv.kind} (nested API v{hv.nested_api})" if hv.nested_api else ""
    print(f"  platform:    {host.platform}{under}")
    if cpu.pvr is not None:
        gen = cpu.generation.name if cpu.generation else "?"
        print(f"  cpu:         PVR {cpu.pvr:#010x} ({gen}), mode {cpu.mode.name if cpu.mode else 'raw'}")
    else:
        print(f"  cpu:         {cpu.model}")
    print(f"  modules:     {' '.join(host.modules) or '(none)'}")
    if hv.nested_api == 2:
        offers = " ".join(m.name for m in hv.offers) or "(none)"
        print(f"  L0 offers:   {offers} (H_GUEST_GET_CAPABILITIES; other bits {hv.other_capability_bits:#x})")
        init, runtime = papr.H_NAMES[hv.hcall_at_init], papr.H_NAMES[hv.hcall_at_runtime]
        print(f"  hcall:       {init} at kvm_hv init, {runtime} at run time")
    for node in host.cpu_nodes:
        if node.cpu_version is None:
            print(f"  /cpus/{node.name}: no cpu-version")
        else:
            mode = mode_of_logical_pvr(node.cpu_version)
            print(f"  /cpus/{node.name}: cpu-version {node.cpu_version:#010x} ({mode.name if mode else 'unknown'})")
    for rev in REVISIONS.values():
        cap, result, kernel = observe(host, rev)
        request = rev.request(host.arch)
        print(f"  {rev.name} kernel:   cap {rev.cap} = {cap}; ioctl {request:#010x} -> {describe(result)}")
        for line in kernel.dmesg:
            print(f"    dmesg: {line}")
    return EXIT_OK


def cmd_matrix(args: argparse.Namespace) -> int:
    names = profile.names()
    width = max(map(len, names))
    head = f"{'HOST':<{width}}  {'ARCH':<7}"
    for rev in REVISIONS.values():
        head += f"  {rev.name.upper() + ' CAP':<6} {rev.name.upper() + ' RESULT':<40}"
    print(head.rstrip())
    for name in names:
        host = profile.load(name)
        row = f"{name:<{width}}  {host.arch.name:<7}"
        for rev in REVISIONS.values():
            cap, result, _ = observe(host, rev)
            row += f"  {cap!s:<6} {describe(result):<40}"
        print(row.rstrip())
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kvmsim", description="A simulated kernel side of KVM_PPC_GET_COMPAT_CAPS.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    sub.add_parser("hosts", help="list the host profiles").set_defaults(func=cmd_hosts)
    show = sub.add_parser("show", help="a profile and what the simulated kernel derives from it")
    show.add_argument("host", metavar="HOST", help="a profile name or a .toml path")
    show.set_defaults(func=cmd_show)
    sub.add_parser("matrix", help="every profile × revision").set_defaults(func=cmd_matrix)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ProfileError as exc:
        print(f"kvmsim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `kvmsim hosts | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
