"""``kvmsim``: the simulated hosts, and the simulator for other processes.

  kvmsim hosts                         the profiles, one line each
  kvmsim show HOST                     a profile and what the simulated kernel derives from it
  kvmsim matrix                        every profile × revision: capability, result or errno, modes
  kvmsim serve --host HOST --socket P  serve one simulated kernel on a Unix socket
  kvmsim run --host HOST -- CMD ...    run CMD against the simulated host (seccomp, or the LD_PRELOAD shim)
  kvmsim env --socket P                the shell lines that attach programs to `serve` at P
  kvmsim run --server P -- CMD ...     run CMD attached to `serve` at P
  kvmsim record -o FILE.toml           record this machine (files and device) as a profile
  kvmsim verify FILE.toml              replay a recording on the simulator
  kvmsim lab [--config NAME ...]       boot real ppc64le kernels under QEMU, record, verify

Exit codes: 0 success, 2 bad usage or a bad profile; ``verify`` and ``lab`` 1 when any probe
disagrees (or a boot failed); ``lab`` 3 when its packages cannot be fetched;
``run`` returns CMD's exit code, or 125 when it could not start it (no C compiler, a server
that cannot be used, ...), 126 not executable, 127 not found; ``env`` 3 when the server cannot
be used (not there, not this user's, not kvmsim)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import attrs
from kvmcompat.args import EXIT_USAGE, OneLineParser, add_revision_options, revisions

from .._version import __version__
from ..intercept import trust
from ..kernel import papr, profile
from ..kernel.errors import InvalidInput, KvmsimError
from ..kernel.profile import Host
from ..uapi import (
    DEFAULT_REVISION,
    LINUX_7_3,
    REVISIONS,
    AbiRevision,
    Arch,
    errname,
    mode_of_logical_pvr,
    modes_of_caps,
)
from .args import add_hosts_option, fuzz_arg, jobs_arg, seed_arg, use_hosts_dirs

if TYPE_CHECKING:
    from ..intercept.trace import Tracer
    from ..lab.debian import Archive
    from ..user.simulated import Kernel

T = TypeVar("T")

EXIT_OK, EXIT_MISMATCH, EXIT_UNAVAILABLE = 0, 1, 3
EXIT_CANNOT_RUN, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 125, 126, 127


class UsageError(KvmsimError, InvalidInput):
    """A bad command line that argparse cannot see."""


def describe(answer: int | str) -> str:
    """A compat-caps answer for people: the bitmap and its modes, or the errno."""
    if isinstance(answer, str):
        return answer
    names = " ".join(m.name for m in modes_of_caps(answer)) or "(none)"
    return f"{answer:#018x} {names}"


@attrs.frozen
class Observation:
    """What one freshly booted kernel answers a client: the capability on /dev/kvm and the
    ioctl's result (a bitmap or an errno name), or why it got no further."""

    kernel: Kernel
    request: int  # what was sent: the revision's request, or the shipped one on a kernel without it
    cap: int | None  # None: no /dev/kvm
    result: int | str  # the bitmap, or an errno name
    stage: str  # "ioctl", "KVM_CREATE_VM" or "open" (where the answer came from)

    def to_json(self) -> dict[str, object]:
        if isinstance(self.result, int):
            modes = [m.name for m in modes_of_caps(self.result)]
            return {"cap": self.cap, "compat_capabilities": self.result, "modes": modes}
        return {"cap": self.cap, "error": self.result, "stage": self.stage}

    def text(self) -> str:
        if self.stage == "ioctl":
            return describe(self.result)
        return f"{self.result} ({'no /dev/kvm' if self.stage == 'open' else self.stage})"


def simulate(host: Host, rev: AbiRevision) -> Observation:
    """Boot ``rev`` on ``host`` and ask what a client asks (the shipped numbers on a
    kernel without the feature: what a program built against today's headers sends)."""
    from ..user import probe  # show and matrix ask; run and serve never do
    from ..user.simulated import Kernel, SimDevice

    kernel = Kernel(host, rev)
    asked = rev if rev.ioctl is not None else LINUX_7_3
    assert asked.cap is not None
    cap_probe = next(probe.cap_probes([asked.cap]))
    ioctl_probe = next(probe.compat_caps_probes(asked))
    answers = probe.run(SimDevice(kernel), [cap_probe, ioctl_probe])
    request = _request_of(asked, host)
    opened, created = answers["open"], answers.get("create vm")
    if opened.error is not None:
        return Observation(kernel, request, None, opened.error, "open")
    cap = answers[cap_probe.name].value
    assert cap is not None and created is not None
    if created.error is not None:
        return Observation(kernel, request, cap, created.error, "KVM_CREATE_VM")
    result = answers[ioctl_probe.name]
    if result.error is not None:
        return Observation(kernel, request, cap, result.error, "ioctl")
    caps = result.field(asked.layout, host.arch.byteorder, "compat_capabilities")
    return Observation(kernel, request, cap, caps or 0, "ioctl")  # nothing written: caps were 0


def _request_of(rev: AbiRevision, host: Host) -> int:
    request = rev.request(host.arch)
    assert request is not None
    return request


def cmd_hosts(args: argparse.Namespace) -> int:
    names = profile.names()
    if not names:
        where = ", ".join(str(d) for d in profile.search_path())
        print(f"kvmsim: no host profiles found (searched {where})", file=sys.stderr)
        return EXIT_UNAVAILABLE
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
    apis = " and ".join(f"v{a}" for a in hv.nested_apis) or "none"
    under = f" under {hv.kind} (nested API {apis})" if host.platform == "pseries" else ""
    print(f"  platform:    {host.platform}{under}")
    if cpu.pvr is not None:
        gen = cpu.generation.name if cpu.generation else "?"
        mode = cpu.mode.name if cpu.mode else "raw"
        print(
            f"  cpu:         PVR {cpu.pvr:#010x} ({gen}), mode {mode}, {host.mmu} MMU, {host.page_size // 1024}K pages"
        )
    else:
        print(f"  cpu:         {cpu.model}")
    print(f"  modules:     {' '.join(host.modules) or '(none)'}")
    if 2 in hv.nested_apis:
        offers = " ".join(m.name for m in hv.offers) or "(none)"
        print(f"  L0 offers:   {offers} (H_GUEST_GET_CAPABILITIES; other bits {hv.other_capability_bits:#x})")
        init, runtime = papr.H_NAMES[hv.hcall_at_init], papr.H_NAMES[hv.hcall_at_runtime]
        print(f"  hcall:       {init} at kvm_hv init, {runtime} at run time")
    for node in host.cpu_nodes:
        if node.cpu_version is None:
            print(f"  /cpus/{node.name}: no cpu-version")
        else:
            dt_mode = mode_of_logical_pvr(node.cpu_version)
            known = dt_mode.name if dt_mode else "unknown"
            print(f"  /cpus/{node.name}: cpu-version {node.cpu_version:#010x} ({known})")
    for rev in REVISIONS.values():
        seen = simulate(host, rev)
        kind = "draft" if rev.draft else "kernel"
        cap = "-" if seen.cap is None else seen.cap
        asked = rev if rev.ioctl is not None else LINUX_7_3
        print(f"  {rev.name} {kind}: cap {asked.cap} = {cap}; ioctl {seen.request:#010x} -> {seen.text()}")
        modules = getattr(seen.kernel.kvm, "load_errors", {})
        for module, exc in modules.items():
            print(f"    modprobe {module}: {errname(exc.errno)} ({exc.reason})")
        for line in seen.kernel.dmesg:
            print(f"    dmesg: {line}")
    return EXIT_OK


def matrix_json(names: list[str]) -> list[dict[str, object]]:
    """The matrix as data: per host, per revision, the capability and the ioctl's answer."""
    rows: list[dict[str, object]] = []
    for name in names:
        host = profile.load(name)
        row: dict[str, object] = {"host": name, "arch": host.arch.name, "summary": host.summary}
        for rev in REVISIONS.values():
            row[rev.name] = simulate(host, rev).to_json()
        rows.append(row)
    return rows


MATRIX_CELL = 26


def _short(seen: Observation) -> str:
    """A matrix cell: the modes (P9 P10 P11) or the errno."""
    if isinstance(seen.result, int):
        return " ".join(m.name.replace("power", "P") for m in modes_of_caps(seen.result)) or "0 (none)"
    return seen.result if seen.stage == "ioctl" else f"{seen.result} ({seen.stage})"


def cmd_matrix(args: argparse.Namespace) -> int:
    names = profile.names()
    if args.json:
        import json

        print(json.dumps(matrix_json(names)))
        return EXIT_OK
    width = max(map(len, names))
    head = f"{'HOST':<{width}}  {'ARCH':<7}"
    for rev in REVISIONS.values():
        head += f"  {rev.name.upper():<{MATRIX_CELL}}"
    print(head.rstrip())
    for name in names:
        host = profile.load(name)
        row = f"{name:<{width}}  {host.arch.name:<7}"
        for rev in REVISIONS.values():
            seen = simulate(host, rev)
            row += f"  {'-' if seen.cap is None else seen.cap} {_short(seen):<{MATRIX_CELL - 2}}"
        print(row.rstrip())
    return EXIT_OK


def _kernel(args: argparse.Namespace) -> Kernel:
    from ..user.simulated import Kernel  # the whole kernel model: only where a kernel boots

    return Kernel(profile.load(args.host), _revision(args))


def _revision(args: argparse.Namespace) -> AbiRevision:
    return revisions(args)[args.abi or DEFAULT_REVISION]


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    from ..intercept.command import host_view
    from ..intercept.server import Server, ServerError

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="kvmsim serve: %(message)s")
    kernel = _kernel(args)
    with _tracer(args, kernel.arch) as trace:
        try:
            view = trust.temp_dir("kvmsim-serve-")  # 0700, locked while we live: the host's files
        except OSError as exc:
            raise UsageError(f"no private directory for the host's files: {exc}") from None
        try:
            try:
                from ..seccomp.supervisor import SeccompSupervision  # run --server: the server supervises

                root = host_view(kernel, view.subdir("root"))
                server = Server(kernel, args.socket, trace=trace, root=root, supervision=SeccompSupervision())
            except ServerError as exc:
                raise UsageError(str(exc)) from None
            for signum in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, lambda *_: server.stop())
            print(f"kvmsim serve: {kernel.host.name} ({kernel.rev.name}) on {args.socket}", file=sys.stderr, flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                server.stop()
        finally:
            view.remove()
    return EXIT_OK


def cmd_env(args: argparse.Namespace) -> int:
    """Print what attaches programs to a running ``kvmsim serve``: ``eval "$(kvmsim env ...)"``."""
    from ..intercept.attach import AttachError
    from ..intercept.build import BuildError
    from ..preload.runner import attached_environment

    try:
        _host, env = attached_environment(args.socket)
    except (AttachError, BuildError) as exc:
        print(f"kvmsim: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    variables = {k: v for k, v in env.items() if k == "LD_PRELOAD" or k.startswith("KVMSIM_")}
    if args.format == "json":
        import json

        print(f"kvmsim env: {ENV_REACH}", file=sys.stderr)  # the JSON stays the variables alone
        print(json.dumps(variables, indent=2))
    else:
        import shlex

        print(f"# {ENV_REACH}")
        for key, value in variables.items():
            print(f"export {key}={shlex.quote(value)}")
    return EXIT_OK


ENV_REACH = (
    "LD_PRELOAD reaches dynamically linked programs only: a static or Go binary makes its own system "
    "calls and would reach this machine's /dev/kvm; run those with kvmsim run --server SOCKET -- CMD"
)


def intercept_for(host_name: str, machine: str, command: list[str], arch: str | None, asked: str) -> tuple[str, str]:
    """How ``kvmsim run`` reaches ``command`` (``seccomp`` or ``preload``) on the host named
    ``host_name`` (uname ``machine``), and why: the trace's first line says both."""
    from ..intercept.command import RunError, StartError, target_arch

    foreign = target_arch(host_name, machine, command, arch)
    if asked == "preload":
        return "preload", "asked for (--intercept preload)"
    if foreign is not None:
        if asked == "seccomp":
            raise RunError(
                f"{command[0]}: a {foreign} binary runs under qemu-user, which passes no KVM ioctl to this "
                "machine's kernel: the seccomp path cannot serve it (--intercept preload)"
            )
        return "preload", f"a {foreign} binary under qemu-user: the shim inside it"
    from ..seccomp.launch import unavailable  # only where seccomp may serve it (its import is most of a start)

    why = unavailable()
    if why is not None:
        if asked == "seccomp":
            raise StartError(f"--intercept seccomp: {why}")
        return "preload", f"{why}: the preload shim instead"
    return "seccomp", "user notification below libc: static, dynamic and Go programs alike"


def cmd_run(args: argparse.Namespace) -> int:
    from ..intercept.build import BuildError
    from ..intercept.command import RunError, StartError

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise UsageError("run: no command given (kvmsim run --host HOST -- CMD ...)")
    if (args.host is None) == (args.server is None):
        raise UsageError("run: give one of --host HOST (a server of its own) or --server SOCKET (a running one)")
    if args.server is not None and (args.abi or args.trace is not None):
        raise UsageError("run --server: the server chose its revision and traces; give --abi/--trace to kvmsim serve")
    try:
        if args.server is not None:
            return _run_attached(args, command)
        host = profile.load(args.host)
        how, why = intercept_for(host.name, host.arch.name, command, args.arch, args.intercept)
        with _tracer(args, host.arch) as trace:
            if trace is not None:
                trace.intercept(how, why)
            if how == "seccomp":  # the kernel boots when the program first needs it (kvmsim.seccomp.run)
                from ..seccomp import run as seccomp

                return seccomp.run(host, _revision(args), command, trace=trace)
            from ..preload import runner  # the server, its channel, the shim's build: only for this path

            kernel = _kernel(args)
            return runner.run(
                kernel,
                command,
                arch=args.arch,
                trace=trace,
                allow_unreached=args.allow_unreached,
                sysroot=args.sysroot,
            )
    except RunError as exc:
        raise UsageError(str(exc)) from None
    except (BuildError, StartError) as exc:
        print(f"kvmsim: error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except FileNotFoundError:
        print(f"kvmsim: error: {command[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionError:
        print(f"kvmsim: error: {command[0]}: not executable", file=sys.stderr)
        return EXIT_NOT_EXECUTABLE
    except OSError as exc:  # ENOEXEC and the like: the kernel would not execute it
        print(f"kvmsim: error: {command[0]}: cannot execute: {exc.strerror}", file=sys.stderr)
        return EXIT_NOT_EXECUTABLE


def _run_attached(args: argparse.Namespace, command: list[str]) -> int:
    """Run ``command`` attached to the server at ``--server``: under the seccomp filter with the
    server as its supervisor, or (the preload path) exec'd with the shim: this process becomes
    it (a POWER program under qemu-user with ``--sysroot`` and the server's processor)."""
    import os

    from ..intercept.attach import AttachError, ask_host

    socket_path = args.server
    try:
        host = ask_host(socket_path)
        how, _why = intercept_for(host.name, host.machine, command, args.arch, args.intercept)
        if how == "seccomp":
            from ..seccomp.run import run_attached

            return run_attached(os.path.abspath(socket_path), command)
    except AttachError as exc:
        print(f"kvmsim: error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    from ..preload.runner import prepare

    argv, env = prepare(
        host,
        command,
        os.path.abspath(socket_path),
        arch=args.arch,
        allow_unreached=args.allow_unreached,
        sysroot=args.sysroot,
    )
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)  # raises on failure: not found / not executable


def cmd_record(args: argparse.Namespace) -> int:
    from .. import record

    if os.path.lexists(args.output) and not args.force:
        raise UsageError(f"record -o {args.output}: already exists; nothing written (--force replaces it)")
    obs = record.observe(args.device)
    opened = obs["probes"].get("open")
    if opened != "fd" and not args.no_device_ok:
        hint = {
            "EACCES": "run it as a user who may open it (the kvm group, or root)",
            "EPERM": "run it as a user who may open it (the kvm group, or root)",
            "ENOENT": "load KVM first (modprobe kvm_hv, or kvm_pr), or name the device with --device",
        }.get(str(opened), "check the path given to --device")
        print(
            f"kvmsim record: cannot open {args.device}: {opened}: {hint}; nothing written "
            "(--no-device-ok records a machine without KVM)",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    api = obs["probes"].get("api version")
    if opened == "fd" and not isinstance(api, int):  # KVM_GET_API_VERSION failed: not KVM at all
        print(
            f"kvmsim record: {args.device} is not a KVM device (KVM_GET_API_VERSION: {api}); nothing written",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent):
        raise UsageError(f"{args.output}: the directory {parent} does not exist")
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
    from .. import record

    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{args.file}: not a recording (not UTF-8 text at byte {exc.start})") from None
    rev, checks = record.verify(text, args.file)
    width = max(len(c.name) for c in checks)
    print(f"{'PROBE':<{width}}  {'RECORDED':<22} {'SIMULATED (' + rev.name + ')':<22} VERDICT")
    for c in checks:
        verdict = "ok" if c.agrees else "MISMATCH"
        print(f"{c.name:<{width}}  {c.shown(c.recorded):<22} {c.shown(c.simulated):<22} {verdict}")
    bad = sum(not c.agrees for c in checks)
    print(f"{len(checks) - bad} agree, {bad} mismatch")
    return EXIT_OK if not bad else EXIT_MISMATCH


def cmd_fetch_qemu(args: argparse.Namespace) -> int:
    from ..lab.debian import Archive, CacheError, FetchError
    from ..lab.qemu import fetch_sysroot

    try:
        archive = Archive()
        print(f"kvmsim fetch-qemu: Debian's archive {archive.mirror} (from {archive.mirror_from})", flush=True)
        sysroot = fetch_sysroot(archive)
    except CacheError as exc:
        raise UsageError(f"fetch-qemu: {exc}") from None
    except FetchError as exc:
        print(f"kvmsim fetch-qemu: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"sysroot: {sysroot.root}")
    print(f"qemu-system-ppc64: {sysroot.qemu_system} ({sysroot.version})")
    print(f"qemu-user: {sysroot.qemu_user}")
    print(
        f"run: kvmsim run --host HOST --sysroot {sysroot.root} -- {sysroot.qemu_system} -L {sysroot.firmware} "
        "-machine pseries,accel=kvm -cpu host -m 512 -nodefaults -display none -S -qmp stdio"
    )
    return EXIT_OK


def cmd_lab(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import lab

    if args.qemu:
        return _lab_qemu(args)
    names = args.config or [n for n, c in lab.CONFIGS.items() if args.kernel is None or c.kernel == args.kernel]
    unknown = [n for n in names if n not in lab.CONFIGS]
    if unknown:
        raise UsageError(f"lab: unknown configuration {unknown[0]!r} (known: {', '.join(lab.CONFIGS)})")
    configs = [lab.CONFIGS[n] for n in names if args.kernel is None or lab.CONFIGS[n].kernel == args.kernel]
    if not configs:
        raise UsageError(f"lab: no configuration of those runs Linux {args.kernel}")
    out = Path(args.output or ("fixtures/recorded" if Path("fixtures/recorded").is_dir() else "."))
    said = [f"{args.fuzz} fuzz cases a configuration, seed {args.seed}"] if args.fuzz else []
    results = _with_archive(
        lambda archive: lab.run_lab(configs, out, jobs=args.jobs, fuzz_cases=args.fuzz, seed=args.seed,
                                    archive=archive),
        *said,
    )  # fmt: skip
    if results is None:
        return EXIT_UNAVAILABLE
    lines: list[tuple[str, str, str, Sequence[str]]] = []
    for r in results:
        if r.error is not None:
            lines.append((r.config.name, "FAILED", r.error, ()))
        elif r.mismatches:
            lines.append((r.config.name, "MISMATCH", f"{r.path} ({len(r.mismatches)} probes; {r.seconds:.0f} s)",
                          r.mismatches))  # fmt: skip
        else:
            fuzzed = f"; {r.fuzzed} fuzz cases agree" if r.fuzzed else ""
            lines.append((r.config.name, "ok", f"{r.path} (verifies{fuzzed}; {r.seconds:.0f} s)", ()))
    return _report(lines, 28)


def _report(lines: Sequence[tuple[str, str, str, Sequence[str]]], width: int) -> int:
    """A line a result (its name, verdict, what), what went wrong below it; EXIT_MISMATCH where
    any is neither "ok" nor "same"."""
    for name, verdict, what, details in lines:
        print(f"{name:<{width}} {verdict:<8} {what}")
        for detail in details:
            print(f"    {detail}")
    return EXIT_OK if all(verdict in ("ok", "same") for _, verdict, _, _ in lines) else EXIT_MISMATCH


def _with_archive(run: Callable[[Archive], list[T]], *said: str) -> list[T] | None:
    """``run`` of Debian's archive, the first line saying which (and ``said``): None where the
    packages cannot be had (the reason on stderr); a cache somebody else could write, a usage error."""
    from .. import lab
    from ..lab.debian import Archive

    try:
        archive = Archive()
        print(f"kvmsim lab: Debian's archive {archive.mirror} (from {archive.mirror_from})", flush=True)
        for line in said:
            print(f"kvmsim lab: {line}", flush=True)
        return run(archive)
    except lab.CacheError as exc:  # refused, not unavailable: somebody else could write there
        raise UsageError(f"lab: {exc}") from None
    except lab.FetchError as exc:
        print(f"kvmsim lab: {exc}", file=sys.stderr)
        return None


def _lab_qemu(args: argparse.Namespace) -> int:
    """``kvmsim lab --qemu``: Debian's QEMU to -S in each real L1, recorded and compared."""
    from pathlib import Path

    from ..lab import qemu_l1

    names = args.config or list(qemu_l1.QEMU_CONFIGS)
    unknown = [n for n in names if n not in qemu_l1.QEMU_CONFIGS]
    if unknown:
        known = ", ".join(qemu_l1.QEMU_CONFIGS)
        raise UsageError(f"lab --qemu: no QEMU start on configuration {unknown[0]!r} (those with one: {known})")
    if args.fuzz or args.kernel:
        raise UsageError("lab: --qemu takes no --fuzz or --kernel (it starts QEMU, it asks no probes)")
    out = Path(args.output or (str(qemu_l1.RECORDED) if Path("fixtures").is_dir() else "."))
    kvmsim = str(Path(sys.executable).parent / "kvmsim")
    starts = [s for s in qemu_l1.STARTS if s.config in names]
    results = _with_archive(lambda archive: qemu_l1.run_qemu_lab(starts, out, archive=archive, kvmsim=kvmsim))
    if results is None:
        return EXIT_UNAVAILABLE
    lines: list[tuple[str, str, str, Sequence[str]]] = []
    for r in results:
        if r.error is not None:
            lines.append((r.start.name, "FAILED", r.error, ()))
        elif r.differences:
            lines.append((r.start.name, "DIFFERS", f"{r.path} ({r.calls} KVM calls real; {r.seconds:.0f} s)",
                          r.differences))  # fmt: skip
        else:
            same = f"{r.path} (same {r.calls} KVM calls and answers, same outcome; {r.seconds:.0f} s)"
            lines.append((r.start.name, "same", same, ()))
    return _report(lines, 36)


@contextlib.contextmanager
def _tracer(args: argparse.Namespace, arch: Arch) -> Iterator[Tracer | None]:
    """``--trace[=FILE]`` (stderr without a file) in ``--trace-format`` text or json."""
    if args.trace is None:
        yield None
        return
    try:  # before anything starts: a bad path is the trace file's fault, not the program's
        stream = sys.stderr if args.trace == "-" else open(args.trace, "a")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise UsageError(f"--trace {args.trace}: cannot write the trace there: {exc.strerror}") from None
    try:
        from ..intercept.trace import Tracer

        yield Tracer(stream, arch, json_lines=args.trace_format == "json")
    finally:
        if stream is not sys.stderr:
            stream.close()


def _trace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace", nargs="?", const="-", metavar="FILE",
        help="one line per call (the request decoded, bytes in and out, errno and why) to FILE, or stderr",
    )  # fmt: skip
    p.add_argument("--trace-format", choices=["text", "json"], default="text", help="text lines or JSON lines")


def _kernel_options(p: argparse.ArgumentParser, *, host_required: bool = True) -> None:
    p.add_argument("--host", required=host_required, metavar="HOST", help="a profile name or a .toml path")
    p.add_argument(
        "--abi",
        choices=list(REVISIONS),
        help=f"the kernel's revision (default {DEFAULT_REVISION}; none: a kernel before 7.3; v5, v4: posted drafts)",
    )
    add_revision_options(p)
    add_hosts_option(p, "sub_hosts_dir")
    _trace_options(p)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="kvmsim", description="A simulated kernel side of KVM_PPC_GET_COMPAT_CAPS.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_hosts_option(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    hosts = sub.add_parser("hosts", help="list the host profiles")
    add_hosts_option(hosts, "sub_hosts_dir")
    hosts.set_defaults(func=cmd_hosts)
    show = sub.add_parser("show", help="a profile and what the simulated kernel derives from it")
    show.add_argument("host", metavar="HOST", help="a profile name or a .toml path")
    add_hosts_option(show, "sub_hosts_dir")
    show.set_defaults(func=cmd_show)
    matrix = sub.add_parser("matrix", help="every profile × revision")
    matrix.add_argument("--json", action="store_true", help="one JSON array, a row per host")
    add_hosts_option(matrix, "sub_hosts_dir")
    matrix.set_defaults(func=cmd_matrix)
    serve = sub.add_parser("serve", help="serve one simulated kernel on a Unix socket")
    _kernel_options(serve)
    serve.add_argument("--socket", required=True, metavar="PATH", help="the socket to create (mode 0600)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    serve.set_defaults(func=cmd_serve)
    run = sub.add_parser(
        "run",
        help="run a command against a simulated host",
        description="Run CMD with the simulated host in place of this machine's: /dev/kvm and its VM fds, "
        "the stat and access family, /proc/device-tree, /proc/cpuinfo, /sys/module/kvm*, uname's machine. "
        "--intercept auto (the default) catches the system calls below libc by seccomp user notification "
        "(static and dynamic programs, musl, Go, Python alike) and uses the LD_PRELOAD shim where seccomp "
        "cannot serve: POWER binaries under qemu-user, kernels without user notification. The --trace's "
        "first line says which, and why.",
    )
    _kernel_options(run, host_required=False)
    run.add_argument(
        "--intercept",
        choices=["auto", "seccomp", "preload"],
        default="auto",
        help="how CMD's calls are caught (default auto: seccomp for native programs, preload under qemu-user)",
    )
    run.add_argument(
        "--server",
        metavar="SOCKET",
        help="attach CMD to a running `kvmsim serve` instead of --host (under seccomp the server is its supervisor)",
    )
    run.add_argument(
        "--arch", choices=["ppc64le", "ppc64"], help="run a POWER binary under qemu-user (default: from its ELF header)"
    )
    run.add_argument(
        "--sysroot",
        metavar="DIR",
        help="a POWER program's libraries (qemu-user's -L, and its qemu-user when DIR has one), e.g. what "
        "`kvmsim fetch-qemu` unpacks; default the cross toolchain's",
    )
    run.add_argument(
        "--allow-unreached",
        action="store_true",
        help="with --intercept preload, run a static or Go program anyway: the shim cannot reach it, so it "
        "sees this machine's real /dev/kvm (refused by default, exit 125)",
    )
    run.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    run.set_defaults(func=cmd_run)
    env = sub.add_parser(
        "env",
        help="print the shell lines that attach programs to a running `kvmsim serve`",
        description='eval "$(kvmsim env --socket P)": every program started after that reaches the server at P '
        "with only the preload shim (LD_PRELOAD and KVMSIM_* variables). The server must be this user's.",
    )
    env.add_argument("--socket", required=True, metavar="PATH", help="the socket `kvmsim serve` listens on")
    env.add_argument("--format", choices=["sh", "json"], default="sh", help="export lines (default) or JSON")
    env.set_defaults(func=cmd_env)
    rec = sub.add_parser("record", help="record this machine as a host profile")
    rec.add_argument("--device", default="/dev/kvm", metavar="PATH", help="the KVM device (default /dev/kvm)")
    rec.add_argument("-o", "--output", required=True, metavar="FILE.toml", help="where to write the profile")
    rec.add_argument("--force", action="store_true", help="replace FILE.toml if it exists (else: refused, exit 2)")
    rec.add_argument(
        "--no-device-ok",
        action="store_true",
        help="record even when the device cannot be opened (a machine without KVM)",
    )
    rec.set_defaults(func=cmd_record)
    lab = sub.add_parser(
        "lab",
        help="boot real ppc64le kernels under QEMU, record them, verify the simulator",
        description="Fetch Debian's ppc64le kernels, QEMU and a cross compiler into a private cache "
        "(~/.cache/kvmsim/lab or $KVMSIM_CACHE/lab), boot each configuration with a hard timeout, "
        "and write qemu-<config>-linux-<version>.toml recordings that kvmsim verify replays. Exit 0 "
        "when every boot recorded and verified, 1 otherwise, 3 when the packages cannot be had. Debian's "
        "archive is the machine's own (its apt sources: a deb822 URIs: or a sources.list line), "
        "$KVMSIM_DEBIAN_MIRROR overriding it, else deb.debian.org; the first line says which.",
    )
    lab.add_argument("--config", action="append", metavar="NAME", help="a configuration (repeatable; default all)")
    lab.add_argument(
        "--kernel",
        choices=["7.3", "7.2", "7.3-64k"],
        help="only the configurations running this kernel (7.3-64k: built here)",
    )
    lab.add_argument("-o", "--output", metavar="DIR", help="where to write (default fixtures/recorded, else .)")
    lab.add_argument("-j", "--jobs", type=jobs_arg, metavar="N", help="boots at once (1..1024, default: the CPUs)")
    lab.add_argument(
        "--fuzz",
        type=fuzz_arg,
        default=0,
        metavar="N",
        help="also ask each real kernel N argument cases drawn from --seed and replay them on the simulator; "
        "any disagreement fails, naming the case (0..100000)",
    )
    lab.add_argument("--seed", type=seed_arg, default=0, metavar="S", help="the fuzz cases' seed (default 0)")
    lab.add_argument(
        "--qemu",
        action="store_true",
        help="instead, start Debian's QEMU to -S inside each configuration's real L1 under strace (default: "
        "every configuration with a start in kvmsim.lab.qemu_l1: docs/lab.md's table), write "
        "fixtures/qemu-l1/<config>.toml (-o: elsewhere), and compare its KVM calls, their answers and QEMU's "
        "outcome with the same QEMU under kvmsim run; any difference fails",
    )
    lab.set_defaults(func=cmd_lab)
    fq = sub.add_parser(
        "fetch-qemu",
        help="fetch Debian's ppc64el QEMU and qemu-user into the lab's cache",
        description="Fetch sid's qemu-system-ppc for ppc64el with its libraries (what apt-get install "
        "--no-install-recommends brings, about 60 packages), its firmware and the amd64 qemu-user through the "
        "lab's private apt (signed lists; every .deb checked), unpacked into one sysroot in the lab's cache. "
        "Prints the sysroot, QEMU's binary and version, and the kvmsim run line that runs it. Exit 3 when the "
        "packages cannot be had.",
    )
    fq.set_defaults(func=cmd_fetch_qemu)
    ver = sub.add_parser("verify", help="replay a recording on the simulator")
    ver.add_argument("file", metavar="FILE.toml")
    ver.set_defaults(func=cmd_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        use_hosts_dirs(args)
        return int(args.func(args))
    except InvalidInput as exc:  # a bad name, number, profile or header; never any ValueError (a bug stays one)
        print(f"kvmsim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `kvmsim hosts | head`
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C before a command started (kvmsim run forwards it after)
        return 128 + 2


if __name__ == "__main__":
    sys.exit(main())
