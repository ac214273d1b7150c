#!/usr/bin/env bash
# What a user gets from `pip install`: build the wheel, install it into a fresh virtual
# environment, and from a directory outside the checkout run the CLIs, `kvmsim run` with the
# C client, and a pytest file that uses the kvm_host fixture.  Any failure fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rm -rf "$root/build/lib" "$root/build/bdist."*  # setuptools' own build tree: stale files would ship
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$root" 2>"$work/build.log" || {
    cat "$work/build.log" >&2; exit 1; }
if grep -q -i "warning" "$work/build.log"; then
    echo "wheel-check: the build warned:" >&2; cat "$work/build.log" >&2; exit 1
fi
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/kvmsim-*.whl
cd "$work"  # outside the checkout: nothing but the wheel
bin="$work/venv/bin"
echo "wheel-check: $(basename "$work"/dist/*.whl) in a fresh venv, from $work"
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
"$bin/python" -m pytest -q -p no:cacheprovider test_user.py
echo "wheel-check: ok"
