#!/usr/bin/env bash
# What a user gets from `pip install`: build the wheel and install it into fresh virtual
# environments, used from a directory outside the checkout.  First alone (`pip install kvmsim`):
# attrs is all it brings, the client queries the real /dev/kvm and a simulated host, the CLIs
# and `kvmsim run` with the C example work, and a kvm_host test without the extra fails naming
# it.  Then with the extra (`kvmsim[pytest]`): a pytest file that uses the fixture passes.
# Any failure fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
case $python in */*) python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python") ;; esac  # we cd away
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rm -rf "$root/build/lib" "$root/build/bdist."*  # setuptools' own build tree: stale files would ship
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$root" 2>"$work/build.log" || {
    cat "$work/build.log" >&2; exit 1; }
if grep -q -i "warning" "$work/build.log"; then
    echo "wheel-check: the build warned:" >&2; cat "$work/build.log" >&2; exit 1
fi
"$python" -m venv "$work/venv"
wheel=$(echo "$work"/dist/kvmsim-*.whl)
"$work/venv/bin/python" -m pip install --quiet "$wheel"
cd "$work"  # outside the checkout: nothing but the wheel
bin="$work/venv/bin"
echo "wheel-check: $(basename "$wheel") alone in a fresh venv, from $work"
installed=$("$bin/python" -m pip list --format=freeze --exclude pip --exclude setuptools | cut -d= -f1 | sort | tr '\n' ' ')
[ "$installed" = "attrs kvmsim " ] || { echo "wheel-check: pip install kvmsim brought: $installed" >&2; exit 1; }
"$bin/python" - <<'PY'
import sys
from kvmcompat import RealDevice, query, CompatError
try:
    print("real /dev/kvm:", query(RealDevice()).to_json())
except CompatError as exc:  # an x86 /dev/kvm: the capability is unknown there
    print("real /dev/kvm:", exc.kind, exc)
    assert exc.kind in ("unsupported", "no-device"), exc
assert not {"pytest", "pyfakefs"} & set(sys.modules), "the client loaded pytest or pyfakefs"
assert [m for m in sys.modules if m.startswith("kvmsim.") and not m.startswith("kvmsim.uapi")] == ["kvmsim._version"]
PY
"$bin/kvm-compat-caps" --sim powervm-p11 --json | tee out.json
grep -q '"modes": \["power10", "power11"\]' out.json
"$bin/kvmsim" hosts | grep -q '^powervm-p11 '
"$bin/kvmsim" matrix | grep -q '^kvm-l1-p11 '
cc -O2 -o kvm_compat_caps "$root/examples/c/kvm_compat_caps.c"  # the example a user copies (not in the wheel)
"$bin/python" -c 'import importlib.util as u; assert u.find_spec("kvmcompat.c") is None'  # no C in the package
"$bin/kvmsim" run --host powervm-p11 -- ./kvm_compat_caps | tee run.json
grep -q '"modes": \["power10", "power11"\]' run.json
cat > test_user.py <<'PY'
import os, struct
from fcntl import ioctl

def test_modes(kvm_host):
    fd = os.open("/dev/kvm", os.O_RDWR)
    vm = ioctl(fd, 0x2000AE01, 0)
    assert ioctl(vm, 0x2000AE03, 250) == 1
    buf = bytearray(struct.pack("<QQQ", 24, 0, 0))
    ioctl(vm, 0x2000AEB8, buf)
    assert struct.unpack("<QQQ", buf)[2] == 0x3000000000000000
    os.close(vm)
    os.close(fd)
PY
"$bin/python" -m pip install --quiet pytest  # pytest without the extra: the plugin loads, a host fails
if "$bin/python" -m pytest -q -p no:cacheprovider test_user.py > noextra.log 2>&1; then
    echo "wheel-check: kvm_host passed without pyfakefs" >&2; cat noextra.log >&2; exit 1
fi
grep -q "pip install 'kvmsim\[pytest\]'" noextra.log || { cat noextra.log >&2; exit 1; }
"$python" -m venv "$work/venv2"
"$work/venv2/bin/python" -m pip install --quiet "$wheel[pytest]"
echo "wheel-check: $(basename "$wheel")[pytest] in a fresh venv"
"$work/venv2/bin/python" -m pytest -q -p no:cacheprovider test_user.py
echo "wheel-check: ok"
