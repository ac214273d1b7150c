"""Debian's archive through a private apt configuration: everything lands in a cache
directory (``~/.cache/kvmsim/lab``, or ``$KVMSIM_CACHE/lab``); the machine's apt sources,
dpkg status and architectures are never touched.  Packages are downloaded with
``apt-get download`` and unpacked with ``dpkg-deb -x`` into one tree; a download is reused
as long as its version is the one asked for."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import attrs

MIRROR = "http://deb.debian.org/debian"
SUITES = ("bookworm", "bookworm-backports", "sid", "experimental")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE = 24 * 3600  # refresh the package lists once a day


class FetchError(Exception):
    """A package could not be had (no archive, no such package): one line saying which."""


@attrs.frozen
class Package:
    name: str  # with ":arch" where it is not the machine's (e.g. "linux-libc-dev:ppc64el")
    suite: str

    @property
    def spec(self) -> str:
        return f"{self.name}/{self.suite}"


def cache_dir() -> Path:
    base = os.environ.get("KVMSIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kvmsim")
    return Path(base) / "lab"


class Archive:
    """A private apt: its own sources, lists, status file and download directory."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir()
        self.apt = self.root / "apt"
        self.debs = self.root / "debs"
        self.tree = self.root / "tree"
        self.config = self.apt / "apt.conf"

    def _setup(self) -> None:
        for d in (
            "etc/sources.list.d",
            "etc/preferences.d",
            "etc/apt.conf.d",
            "state/lists/partial",
            "cache/archives/partial",
        ):
            (self.apt / d).mkdir(parents=True, exist_ok=True)
        self.debs.mkdir(parents=True, exist_ok=True)
        (self.apt / "state" / "status").touch()
        sources = "".join(f"deb [arch=amd64,ppc64el signed-by={KEYRING}] {MIRROR} {suite} main\n" for suite in SUITES)
        (self.apt / "etc" / "sources.list").write_text(sources)
        a = self.apt
        self.config.write_text(
            f'Dir::State "{a}/state";\nDir::State::status "{a}/state/status";\nDir::Etc "{a}/etc";\n'
            f'Dir::Etc::sourcelist "{a}/etc/sources.list";\nDir::Etc::sourceparts "{a}/etc/sources.list.d";\n'
            f'Dir::Etc::preferencesparts "{a}/etc/preferences.d";\nDir::Etc::parts "{a}/etc/apt.conf.d";\n'
            f'Dir::Cache "{a}/cache";\nAPT::Architecture "amd64";\n'
            'APT::Architectures { "amd64"; "ppc64el"; };\nDebug::NoLocking "true";\n'
            'Acquire::Languages "none";\nAcquire::Check-Valid-Until "false";\n'
            'APT::Sandbox::User "root";\n'
        )

    def _apt(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "APT_CONFIG": str(self.config), "DEBIAN_FRONTEND": "noninteractive"}
        return subprocess.run(["apt-get", "-q", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)

    def update(self) -> None:
        """Fetch the package lists unless they are fresh."""
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise FetchError("apt-get and dpkg-deb are needed (a Debian or Ubuntu machine)")
        if not Path(KEYRING).exists():
            raise FetchError(f"{KEYRING} is missing (apt-get install debian-archive-keyring)")
        self._setup()
        stamp = self.apt / "state" / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE:
            return
        r = self._apt("update")
        if r.returncode != 0 or "Err:" in r.stdout:
            reason = next((ln for ln in (r.stderr + r.stdout).splitlines() if ln.startswith(("E:", "Err:"))), "")
            raise FetchError(f"cannot read Debian's archive ({MIRROR}): {reason.strip() or 'apt-get update failed'}")
        stamp.touch()

    def versions(self, packages: list[Package]) -> dict[str, str]:
        """The version each package has in its suite (one apt-cache call for all)."""
        env = {**os.environ, "APT_CONFIG": str(self.config)}
        r = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", *(p.spec for p in packages)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        found: dict[str, str] = {}
        name = ""
        for ln in r.stdout.splitlines():
            if ln.startswith("Package: "):
                name = ln.removeprefix("Package: ")
            elif ln.startswith("Version: "):
                found.setdefault(name, ln.removeprefix("Version: "))
        out = {}
        for p in packages:
            base = p.name.split(":")[0]
            if base not in found:
                raise FetchError(f"{p.name}: no such package in Debian {p.suite}")
            out[p.name] = found[base]
        return out

    def fetch(self, packages: list[Package]) -> dict[str, str]:
        """Download (once) and unpack every package into :attr:`tree`; name -> version."""
        versions = self.versions(packages)
        missing = [p for p in packages if not self._deb(p, versions[p.name])]
        if missing:
            r = self._apt("download", *(p.spec for p in missing), cwd=self.debs)
            if r.returncode != 0:
                reason = next((ln for ln in r.stderr.splitlines() if ln.startswith("E:")), r.stderr.strip())
                raise FetchError(f"cannot download {', '.join(p.name for p in missing)}: {reason}")
        self.tree.mkdir(parents=True, exist_ok=True)
        unpacked = self.root / "unpacked"
        done = set(unpacked.read_text().split()) if unpacked.exists() else set()
        for p in packages:
            deb = self._deb(p, versions[p.name])
            assert deb is not None
            if deb.name not in done:
                subprocess.run(["dpkg-deb", "-x", str(deb), str(self.tree)], check=True)
                done.add(deb.name)
        unpacked.write_text("\n".join(sorted(done)) + "\n")
        return versions

    def _deb(self, package: Package, version: str) -> Path | None:
        name = package.name.split(":")[0]
        quoted = version.replace(":", "%3a")
        found = sorted(self.debs.glob(f"{name}_{quoted}_*.deb"))
        return found[0] if found else None
