"""Debian's archive through a private apt configuration: everything lands in a cache
directory (``~/.cache/kvmsim/lab``, or ``$KVMSIM_CACHE/lab``); the machine's apt sources,
dpkg status and architectures are never touched.  Packages are downloaded with
``apt-get download`` and unpacked with ``dpkg-deb -x`` into one tree.

What the lab unpacks, it later runs (the cross compiler, QEMU): so the cache is trusted only
as the build cache is (:mod:`kvmsim.intercept.trust`: ours at every level, writable by nobody else,
else refused in one line); apt checks the index files' signatures against Debian's keyring
(``signed-by``) and each download against the signed index; a ``.deb`` already in the cache
is reused only when its SHA256 is the one that index gives for that package and version —
never by its file name.  Every file the lab writes is written atomically through the
directory's fd, never through a symlink."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import attrs

from ..intercept import trust
from ..kernel.errors import KvmsimError

MIRROR = "http://deb.debian.org/debian"  # where none is configured
MIRROR_ENV = "KVMSIM_DEBIAN_MIRROR"  # overrides the machine's apt configuration
APT_SOURCES = ("/etc/apt/sources.list.d", "/etc/apt/sources.list")
SUITES = ("bookworm", "bookworm-backports", "sid", "experimental")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE = 24 * 3600  # refresh the package lists once a day
# Suites whose Release files carry a Valid-Until that the archive served here lets lapse (sid
# and experimental are re-signed daily upstream; a mirror snapshot serves them expired).  Only
# those skip the date check; the signature is checked for every suite.
STALE_OK = ("sid", "experimental")


class FetchError(KvmsimError):
    """A package could not be had (no archive, no such package): one line saying which."""


class CacheError(FetchError):
    """The cache is not ours alone (another user could have planted what the lab runs)."""


@attrs.frozen
class Package:
    name: str  # with ":arch" where it is not the machine's (e.g. "linux-libc-dev:ppc64el")
    suite: str

    @property
    def spec(self) -> str:
        return f"{self.name}/{self.suite}"


def mirror(sources: tuple[str, ...] = APT_SOURCES) -> tuple[str, str]:
    """Debian's archive the lab fetches from, and where that was said: ``$KVMSIM_DEBIAN_MIRROR``,
    else the machine's own apt configuration (a deb822 ``URIs:`` or a ``sources.list`` line of a
    Debian archive, not its security one: a site mirror or proxy CI must use), else
    deb.debian.org."""
    chosen = os.environ.get(MIRROR_ENV, "").strip()
    if chosen:
        return chosen.rstrip("/"), f"${MIRROR_ENV}"
    files: list[str] = []
    for where in sources:
        if os.path.isdir(where):
            files += sorted(os.path.join(where, f) for f in os.listdir(where) if f.endswith((".sources", ".list")))
        elif os.path.isfile(where):
            files.append(where)
    for path in files:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        for uri in _debian_uris(text, deb822=path.endswith(".sources")):
            return uri.rstrip("/"), path
    return MIRROR, "the default (no Debian archive in the machine's apt sources)"


def _debian_uris(text: str, *, deb822: bool) -> list[str]:
    """The URIs of ``deb`` sources of Debian's main archive in an apt sources file."""
    found: list[str] = []
    if deb822:
        for stanza in text.split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.strip() and not line.lstrip().startswith("#") and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                continue
            suites = fields.get("suites", "").split()
            found += [u for u in fields.get("uris", "").split() if _is_debian(u, suites)]
        return found
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=... signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and _is_debian(words[0], [words[1]]):
            found.append(words[0])
    return found


def _is_debian(uri: str, suites: list[str]) -> bool:
    """Debian's main archive (not debian-security, not a third party's): its path ends in
    /debian and its suites are Debian's."""
    debian = ("bookworm", "trixie", "forky", "sid", "unstable", "testing", "stable", "experimental", "bullseye")
    return uri.rstrip("/").endswith("/debian") and any(s.split("-")[0] in debian for s in suites)


def cache_dir() -> Path:
    base = os.environ.get("KVMSIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kvmsim")
    return Path(base) / "lab"


@attrs.frozen
class Candidate:
    """What the signed index says of a package: the version, architecture and SHA256."""

    name: str
    version: str
    arch: str
    sha256: str

    @property
    def filename(self) -> str:
        """The name ``apt-get download`` gives it."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


class Archive:
    """A private apt: its own sources, lists, status file and download directory."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir()
        self.mirror, self.mirror_from = mirror()
        self.apt = self.root / "apt"
        self.debs = self.root / "debs"
        self.tree = self.root / "tree"
        self.config = self.apt / "apt.conf"

    def dir(self, below: str = "") -> trust.Dir:
        """A level of the cache, made 0700 if missing, refused unless it is private."""
        try:
            root = trust.Dir.private(self.root)
        except OSError as exc:
            raise CacheError(f"refusing the lab cache: {exc}; set KVMSIM_CACHE to a directory of yours") from None
        if not below:
            return root
        with root:
            try:
                return root.subdir(below)
            except OSError as exc:
                raise CacheError(f"refusing the lab cache: {exc}") from None

    def _setup(self) -> None:
        for d in (
            "apt/etc/sources.list.d",
            "apt/etc/preferences.d",
            "apt/etc/apt.conf.d",
            "apt/state/lists/partial",
            "apt/cache/archives/partial",
            "debs",
            "tree",
        ):
            self.dir(d).close()
        with self.dir("apt/state") as state:
            if state.stat("status") is None:
                state.write("status", b"")
        sources = "".join(
            f"deb [arch=amd64,ppc64el signed-by={KEYRING}{' check-valid-until=no' if suite in STALE_OK else ''}]"
            f" {self.mirror} {suite} main\n"
            for suite in SUITES
        )
        a = self.apt
        with self.dir("apt/etc") as etc:
            etc.write("sources.list", sources)
        with self.dir("apt") as apt:
            apt.write(
                "apt.conf",
                f'Dir::State "{a}/state";\nDir::State::status "{a}/state/status";\nDir::Etc "{a}/etc";\n'
                f'Dir::Etc::sourcelist "{a}/etc/sources.list";\nDir::Etc::sourceparts "{a}/etc/sources.list.d";\n'
                f'Dir::Etc::preferencesparts "{a}/etc/preferences.d";\nDir::Etc::parts "{a}/etc/apt.conf.d";\n'
                f'Dir::Cache "{a}/cache";\nAPT::Architecture "amd64";\n'
                'APT::Architectures { "amd64"; "ppc64el"; };\nDebug::NoLocking "true";\n'
                'Acquire::Languages "none";\n'
                # apt's downloads stay with us, not _apt: the cache is 0700 and private to its
                # owner, so _apt cannot enter it; what apt fetches is checked against the
                # signed index, and every .deb is checked again here before it is used
                'APT::Sandbox::User "root";\n'
                if os.getuid() == 0
                else "",
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
        with self.dir("apt/state") as state:
            stamp = state.stat("updated")
            age = time.time() - stamp.st_mtime if stamp is not None else None
            same = stamp is not None and state.read("updated") == self.mirror.encode()  # lists of this mirror
            if age is not None and 0 <= age < LISTS_MAX_AGE and same:  # a stamp from the future is no stamp
                return
            r = self._apt("update")
            if r.returncode != 0 or "Err:" in r.stdout or "W: GPG error" in r.stderr:
                lines = (r.stderr + r.stdout).splitlines()
                reason = next((ln for ln in lines if ln.startswith(("E:", "Err:", "W: GPG"))), "apt-get update failed")
                raise FetchError(
                    f"cannot read Debian's archive ({self.mirror}, from {self.mirror_from}): {reason.strip()}"
                )
            state.write("updated", self.mirror.encode())

    def candidates(self, packages: list[Package]) -> dict[str, Candidate]:
        """What the signed index says of each package in its suite (one apt-cache call)."""
        env = {**os.environ, "APT_CONFIG": str(self.config)}
        r = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", *(p.spec for p in packages)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        found: dict[str, Candidate] = {}
        for stanza in r.stdout.split("\n\n"):
            fields = dict(ln.split(": ", 1) for ln in stanza.splitlines() if ": " in ln and not ln.startswith(" "))
            name = fields.get("Package")
            if name and name not in found and {"Version", "Architecture", "SHA256"} <= fields.keys():
                found[name] = Candidate(name, fields["Version"], fields["Architecture"], fields["SHA256"].lower())
        out = {}
        for p in packages:
            base = p.name.split(":")[0]
            if base not in found:
                raise FetchError(f"{p.name}: no such package in Debian {p.suite}")
            out[p.name] = found[base]
        return out

    def closure(self, names: list[str], suite: str) -> list[Package]:
        """The packages ``apt-get install --no-install-recommends names`` would bring from
        ``suite`` into an empty system, less this machine's architecture's own (an amd64 name
        asked for by name stays)."""
        r = self._apt("-s", "--no-install-recommends", "-o", f"APT::Default-Release={suite}", "install", *names)
        if r.returncode != 0:
            reason = next((ln for ln in r.stdout.splitlines() + r.stderr.splitlines() if ln.startswith("E:")), "")
            raise FetchError(f"cannot resolve {' '.join(names)} in Debian {suite}: {reason or r.stderr.strip()}")
        asked = {n.split(":")[0] for n in names}
        out = []
        for line in r.stdout.splitlines():
            if line.startswith("Inst "):
                name = line.split()[1]
                if ":" in name or name in asked:
                    out.append(Package(name, suite))
        return out

    def versions(self, packages: list[Package]) -> dict[str, str]:
        """The version each package has in its suite."""
        return {name: c.version for name, c in self.candidates(packages).items()}

    def fetch(self, packages: list[Package], tree: str = "tree") -> dict[str, str]:
        """Download (once) and unpack every package into the cache's ``tree`` (:attr:`tree`
        unless told); name -> version."""
        wanted = self.candidates(packages)
        record = "unpacked" if tree == "tree" else f"unpacked-{tree}"
        self.dir(tree).close()
        with self.dir("debs") as debs:
            missing = [p for p in packages if not self._verified(debs, wanted[p.name])]
            if missing:
                r = self._apt("download", *(p.spec for p in missing), cwd=self.debs)
                if r.returncode != 0:
                    reason = next((ln for ln in r.stderr.splitlines() if ln.startswith("E:")), r.stderr.strip())
                    raise FetchError(f"cannot download {', '.join(p.name for p in missing)}: {reason}")
                bad = [p.name for p in missing if not self._verified(debs, wanted[p.name])]
                if bad:
                    raise FetchError(f"{', '.join(bad)}: the download's SHA256 is not the signed index's")
            with self.dir() as root:
                done = set((root.read(record) or b"").decode().split())
                for p in packages:
                    c = wanted[p.name]
                    if f"{c.filename}@{c.sha256}" not in done:
                        subprocess.run(["dpkg-deb", "-x", debs / c.filename, str(self.root / tree)], check=True)
                        done.add(f"{c.filename}@{c.sha256}")
                root.write(record, "\n".join(sorted(done)) + "\n")
        return {name: c.version for name, c in wanted.items()}

    @staticmethod
    def _verified(debs: trust.Dir, candidate: Candidate) -> bool:
        """Is the .deb apt names for ``candidate`` in the cache, a file of ours whose SHA256 is
        the signed index's?  One that is not is removed."""
        f = debs.open_file(candidate.filename)
        if f is not None:
            with f:
                if hashlib.file_digest(f, "sha256").hexdigest() == candidate.sha256:
                    return True
        debs.unlink(candidate.filename)
        return False
