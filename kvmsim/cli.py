"""``kvmsim``: the simulated hosts, and the simulator for other processes.

  kvmsim hosts                         the profiles, one line each
  kvmsim show HOST                     a profile and what the simulated kernel derives from it
  kvmsim matrix                        every profile × revision: capability, result or errno, modes
  kvmsim serve --host HOST --socket P  serve one simulated kernel on a Unix socket
  kvmsim run --host HOST -- CMD ...    run CMD with /dev/kvm simulated (LD_PRELOAD shim)
  kvmsim record -o FILE.toml           record this machine (files and device) as a profile
  kvmsim verify FILE.toml              replay a recording on the simulator

Exit codes: 0 success, 2 bad usage or a bad profile; ``verify`` 1 when any probe disagrees;
``run`` returns CMD's exit code, or 125 when it could not start it (no C compiler, ...),
126 not executable, 127 not found."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from . import papr, probe, profile
from .cliargs import OneLineParser, add_revision_options, revisions
from .kvm_main import Kernel
from .profile import Host, ProfileError
from .uapi import DEFAULT_REVISION, REVISIONS, AbiRevision, mode_of_logical_pvr, modes_of_caps

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2
EXIT_CANNOT_RUN, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 125, 126, 127


class UsageError(Exception):
    """A bad command line that argparse cannot see."""


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


def matrix_json(names: list[str]) -> list[dict[str, object]]:
    """The matrix as data: per host, per revision, the capability and the ioctl's answer."""
    rows: list[dict[str, object]] = []
    for name in names:
        host = profile.load(name)
        row: dict[str, object] = {"host": name, "arch": host.arch.name, "summary": host.summary}
        for rev in REVISIONS.values():
            cap, result, _ = observe(host, rev)
            answer: dict[str, object] = {"cap": cap if isinstance(cap, int) else None}
            if isinstance(result, int):
                answer |= {"compat_capabilities": result, "modes": [m.name for m in modes_of_caps(result)]}
            else:
                answer["error"] = result.split()[0]  # the errno name
            row[rev.name] = answer
        rows.append(row)
    return rows


def cmd_matrix(args: argparse.Namespace) -> int:
    names = profile.names()
    if args.json:
        print(json.dumps(matrix_json(names)))
        return EXIT_OK
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


def _kernel(args: argparse.Namespace) -> Kernel:
    revs = revisions(args)
    return Kernel.from_profile(args.host, abi=revs[args.abi or DEFAULT_REVISION])


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    from .server import Server

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="kvmsim serve: %(message)s")
    kernel = _kernel(args)
    if os.path.exists(args.socket):
        raise UsageError(f"{args.socket}: already exists")
    server = Server(kernel, args.socket)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    print(f"kvmsim serve: {kernel.host.name} ({kernel.rev.name}) on {args.socket}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from .build import BuildError
    from .runner import RunError, run

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise UsageError("run: no command given (kvmsim run --host HOST -- CMD ...)")
    kernel = _kernel(args)
    try:
        return run(kernel, command, arch=args.arch)
    except RunError as exc:
        raise UsageError(str(exc)) from None
    except BuildError as exc:
        print(f"kvmsim: error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except FileNotFoundError:
        print(f"kvmsim: error: {command[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionError:
        print(f"kvmsim: error: {command[0]}: not executable", file=sys.stderr)
        return EXIT_NOT_EXECUTABLE


def cmd_record(args: argparse.Namespace) -> int:
    from . import record

    obs = record.observe(args.device)
    text, rev, checks = record.fit(obs, args.output)
    try:
        with open(args.output, "w") as f:
            f.write(text)
    except OSError as exc:
        raise UsageError(f"{args.output}: {exc.strerror}") from None
    bad = sum(not c.agrees for c in checks)
    verdict = "the fitted profile reproduces all of them" if not bad else f"{bad} disagree (see kvmsim verify)"
    where = f"{len(checks)} probes on {obs['machine']}, replayed on a {rev.name} kernel"
    print(f"kvmsim record: {args.output}: {where}: {verdict}")
    for note in obs["notes"]:
        print(f"  note: {note}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from . import record

    try:
        with open(args.file) as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror}") from None
    rev, checks = record.verify(text, args.file)
    width = max(len(c.name) for c in checks)
    print(f"{'PROBE':<{width}}  {'RECORDED':<22} {'SIMULATED (' + rev.name + ')':<22} VERDICT")
    for c in checks:
        print(f"{c.name:<{width}}  {c.recorded!s:<22} {c.simulated!s:<22} {'ok' if c.agrees else 'MISMATCH'}")
    bad = sum(not c.agrees for c in checks)
    print(f"{len(checks) - bad} agree, {bad} mismatch")
    return EXIT_OK if not bad else EXIT_MISMATCH


def _kernel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, metavar="HOST", help="a profile name or a .toml path")
    p.add_argument("--abi", choices=sorted(REVISIONS), help="the kernel's ABI revision (default v4)")
    add_revision_options(p)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="kvmsim", description="A simulated kernel side of KVM_PPC_GET_COMPAT_CAPS.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    sub.add_parser("hosts", help="list the host profiles").set_defaults(func=cmd_hosts)
    show = sub.add_parser("show", help="a profile and what the simulated kernel derives from it")
    show.add_argument("host", metavar="HOST", help="a profile name or a .toml path")
    show.set_defaults(func=cmd_show)
    matrix = sub.add_parser("matrix", help="every profile × revision")
    matrix.add_argument("--json", action="store_true", help="one JSON array, a row per host")
    matrix.set_defaults(func=cmd_matrix)
    serve = sub.add_parser("serve", help="serve one simulated kernel on a Unix socket")
    _kernel_options(serve)
    serve.add_argument("--socket", required=True, metavar="PATH", help="the socket to create (mode 0600)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    serve.set_defaults(func=cmd_serve)
    run = sub.add_parser("run", help="run a command against a simulated host (LD_PRELOAD shim)")
    _kernel_options(run)
    run.add_argument(
        "--arch", choices=["ppc64le", "ppc64"], help="run a POWER binary under qemu-user (default: from its ELF header)"
    )
    run.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    run.set_defaults(func=cmd_run)
    rec = sub.add_parser("record", help="record this machine as a host profile")
    rec.add_argument("--device", default="/dev/kvm", metavar="PATH", help="the KVM device (default /dev/kvm)")
    rec.add_argument("-o", "--output", required=True, metavar="FILE.toml", help="where to write the profile")
    rec.set_defaults(func=cmd_record)
    ver = sub.add_parser("verify", help="replay a recording on the simulator")
    ver.add_argument("file", metavar="FILE.toml")
    ver.set_defaults(func=cmd_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ProfileError, UsageError, ValueError) as exc:
        print(f"kvmsim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `kvmsim hosts | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
