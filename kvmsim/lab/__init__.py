"""``kvmsim lab``: a real Linux ppc64le kernel in the loop.

It fetches Debian's ppc64le kernels, QEMU and a cross compiler through a private apt
configuration (:mod:`.debian`), cross-builds the static prober that asks every probe of
:func:`kvmsim.user.probe.kvm_probes` (:mod:`.build`), boots each configuration (:mod:`.configs`)
under ``qemu-system-ppc64`` with a hard timeout, in parallel (:mod:`.boot`), and writes each
boot as a ``kvmsim record`` recording whose profile is the configuration's host profile, then
verifies it against the simulator."""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import subprocess
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from .. import record
from ..intercept import trust
from ..kernel import profile
from ..record import toml
from ..user.probe import Answer, Probe
from . import boot, build, kbuild
from .configs import CONFIGS, HEADERS, KERNELS, QEMU, QEMU_LIBS, TOOLCHAIN, Config, KernelBuild
from .debian import Archive, CacheError, FetchError

__all__ = ["CONFIGS", "CacheError", "FetchError", "Result", "run_lab"]


@attrs.frozen
class Result:
    config: Config
    path: Path | None  # the recording written
    mismatches: tuple[str, ...]  # probes where the simulator disagrees with the real kernel
    error: str | None  # why there is no recording
    seconds: float
    fuzzed: int = 0  # fuzz cases asked of the real kernel and replayed (their mismatches are above)


def _missing_libraries(binary: Path, tree: Path) -> list[str]:
    libs = [str(tree / "usr/lib/x86_64-linux-gnu"), str(tree / "lib/x86_64-linux-gnu")]
    r = subprocess.run(
        ["ldd", str(binary)],
        env={**os.environ, "LD_LIBRARY_PATH": ":".join(libs)},
        capture_output=True,
        text=True,
        check=False,
    )
    return [ln.split()[0] for ln in r.stdout.splitlines() if "not found" in ln]


def prepare(archive: Archive, kernels: set[str]) -> dict[str, str]:
    """Everything fetched and unpacked; package -> version."""
    archive.update()
    packages = [*TOOLCHAIN, *HEADERS, *QEMU, *QEMU_LIBS]
    for version in sorted(kernels):
        packages += KERNELS[version].packages
    versions = archive.fetch(packages)
    for binary in ("usr/bin/qemu-system-ppc64", "usr/bin/powerpc64le-linux-gnu-as"):
        missing = _missing_libraries(archive.tree / binary, archive.tree)
        if missing:
            raise FetchError(f"{binary}: shared libraries missing from this machine: {', '.join(missing)}")
    return versions


def recording(config: Config, obs: dict[str, Any], result: boot.Boot, versions: dict[str, str]) -> str:
    """The host profile of ``config`` with the boot's observations as its ``[recorded]``."""
    kernel = KERNELS[config.kernel]
    doc = tomllib.loads(profile.read_text(profile.resolve(config.profile)))
    doc["summary"] = f"{doc['summary']} (recorded: Linux {obs.get('kernel', kernel.version)} under QEMU)"
    if "mem_total_kb" in obs:  # the guest's RAM as its kernel counts it (QEMU's -m less what it keeps)
        doc["mem_total_kb"] = obs["mem_total_kb"]
    lab = {
        "qemu": " ".join(Path(a).name if a.startswith("/") else a for a in result.command),
        "packages": [f"{p.name}={versions[p.name]}" for p in (*kernel.packages, *QEMU, *HEADERS)],
        "seconds": round(result.seconds),
        "dmesg": boot.kvm_dmesg(obs.pop("dmesg")),
        "module_init": obs.pop("module_init"),
    }
    date = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    recorded = {"date": date, **obs, "revision": kernel.revision, "lab": lab}
    return toml.dumps(doc | {"recorded": recorded})


def built_kernel(archive: Archive, versions: dict[str, str], configs: Sequence[Config]) -> kbuild.Built | None:
    """The kernel the lab builds here (7.3 with 64K pages and kvm_pr), where one of ``configs`` runs it."""
    if any(isinstance(KERNELS[c.kernel], KernelBuild) for c in configs):
        return kbuild.build_kernel(archive, versions)
    return None


def kernel_files(config: Config, archive: Archive, built: kbuild.Built | None) -> tuple[Path, dict[str, Path]]:
    """The kernel QEMU boots for ``config`` and the modules its initramfs packs."""
    kernel = KERNELS[config.kernel]
    if isinstance(kernel, KernelBuild):
        assert built is not None
        return built.vmlinux, {f"{m}.ko.xz": built.modules[m] for m in config.modules}
    tree = archive.tree
    return tree / kernel.vmlinuz, {f"{m}.ko.xz": tree / kernel.module(m) for m in config.modules}


def boot_one(
    config: Config,
    archive: Archive,
    prober: Path,
    versions: dict[str, str],
    out_dir: Path,
    work: trust.Dir,
    built: kbuild.Built | None = None,
    cases: Sequence[Probe] = (),
    seed: int = 0,
) -> Result:
    tree = archive.tree
    vmlinux, modules = kernel_files(config, archive, built)
    initrd = Path(work.write(f"{config.name}.cpio", build.initramfs(prober, modules)))
    result = boot.run(config, tree, vmlinux, initrd)
    with archive.dir("consoles") as consoles:  # kept for the curious
        console = consoles.write(f"{config.name}.log", result.console)
    if result.error is not None:
        return Result(config, None, (), f"{result.error}; console in {console}", result.seconds)
    obs = boot.observations(result)
    asked = {p.name for p in cases}
    real = {k: obs["probes"].pop(k) for k in list(obs["probes"]) if k in asked}  # not for the recording
    fuzz_bad = _fuzz_mismatches(config, cases, real, seed)
    text = recording(config, obs, result, versions)
    name = config.recording
    path = out_dir / name
    _, checks = record.verify(text, str(path))
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")  # a fresh name: never through a symlink
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)  # never half-written
    bad = tuple(f"{c.name}: real {c.recorded!r}, simulated {c.simulated!r}" for c in checks if not c.agrees)
    return Result(config, path, (*bad, *fuzz_bad), None, result.seconds, len(real))


def _fuzz_mismatches(config: Config, cases: Sequence[Probe], real: dict[str, Any], seed: int) -> tuple[str, ...]:
    """Every fuzz case the real kernel answered, replayed on the simulator: the disagreements,
    each reproducible from the seed and its index (``fuzz.cases(seed, n)[i]``)."""
    if not cases:
        return ()
    from ..uapi import REVISIONS
    from ..user import fuzz
    from ..user.simulated import Kernel

    kernel = Kernel(profile.load(config.profile), REVISIONS[KERNELS[config.kernel].revision])
    simulated = fuzz.simulate(kernel, cases)
    out = []
    for p in cases:
        got = Answer.from_toml(real[p.name]) if p.name in real else None
        want = simulated.get(p.name)
        if got != want:
            i = p.name.removeprefix("fuzz ")
            request = p.request(kernel.arch)
            arg = p.arg(kernel.arch)
            shown = f"{len(arg)} bytes {arg[:24].hex()}" if isinstance(arg, bytes) else f"{arg:#x}"
            out.append(
                f"fuzz case {i} of seed {seed} ({p.fd} fd, request {request:#x}, {shown}): "
                f"real {got.to_toml() if got else '(not asked)'}, simulated {want.to_toml() if want else '(not asked)'}"
            )
    return tuple(out)


def run_lab(
    configs: Sequence[Config],
    out_dir: Path,
    *,
    jobs: int | None = None,
    archive: Archive | None = None,
    fuzz_cases: int = 0,
    seed: int = 0,
) -> list[Result]:
    """Fetch, build, boot every configuration (``jobs`` at a time), record and verify; with
    ``fuzz_cases``, also ask each that many fuzz cases from ``seed`` and replay them."""
    from ..user import fuzz

    archive = archive or Archive()
    versions = prepare(archive, {c.kernel for c in configs})
    cases = fuzz.cases(seed, fuzz_cases) if fuzz_cases else []
    with archive.dir("build") as builds:
        prober = build.prober(archive.tree, builds, cases)
    built = built_kernel(archive, versions, configs)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        work = trust.temp_dir("kvmsim-lab-")
    except OSError as exc:
        raise FetchError(f"no private directory to build the initramfs in: {exc}") from None
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            futures = [
                pool.submit(boot_one, c, archive, prober, versions, out_dir, work, built, cases, seed) for c in configs
            ]
            return [f.result() for f in futures]
    finally:
        work.remove()
