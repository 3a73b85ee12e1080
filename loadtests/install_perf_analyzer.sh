#!/usr/bin/env bash
# Installs Triton's perf_analyzer into .bench/perf_analyzer/ (never into a project venv).
#
# The binary in the pip package `perf-analyzer` needs a newer glibc than Debian 12's 2.36; the one
# bundled in the tritonclient==2.51.0 wheel runs once libcudart.so.12 (from nvidia-cuda-runtime-cu12)
# and libb64.so.0d (Debian's libb64-0d) can be found. Both are unpacked beside the binary, so nothing
# is installed system-wide; loadtests/perf_analyzer.sh puts them on LD_LIBRARY_PATH.
# Idempotent: each step is skipped when its output is already there. Usage:
#   loadtests/install_perf_analyzer.sh [DEST]      (default: <repo>/.bench/perf_analyzer)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/.bench/perf_analyzer}
py=${PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
mkdir -p "$dest/bin" "$dest/lib"

if [ ! -x "$dest/bin/perf_analyzer" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  "$py" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 --python-version 3.11 -d "$tmp" tritonclient==2.51.0
  "$py" - "$tmp" "$dest/bin" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "tritonclient-2.51.0-*.whl"))[0]
member = "tritonclient-2.51.0.data/data/bin/perf_analyzer"
with zipfile.ZipFile(wheel) as zf, open(os.path.join(sys.argv[2], "perf_analyzer"), "wb") as out:
    out.write(zf.read(member))
PY
  chmod +x "$dest/bin/perf_analyzer"
fi

if ! ls "$dest"/lib/libcudart.so.12* >/dev/null 2>&1; then
  "$py" -m pip install --quiet --no-deps --target "$dest/cuda" nvidia-cuda-runtime-cu12
  cp -a "$dest"/cuda/nvidia/cuda_runtime/lib/libcudart.so.12* "$dest/lib/"
fi

if ! ls "$dest"/lib/libb64.so.0d* >/dev/null 2>&1; then
  tmp_deb=$(mktemp -d)
  # `apt-get download` needs no root and changes nothing on the system; the package lists may be
  # stale on a fresh machine, so refresh them once when the first try fails.
  if ! (cd "$tmp_deb" && apt-get download -q libb64-0d >/dev/null 2>&1); then
    apt-get update -q >/dev/null
    (cd "$tmp_deb" && apt-get download -q libb64-0d >/dev/null)
  fi
  dpkg-deb -x "$tmp_deb"/libb64-0d_*.deb "$tmp_deb/x"
  cp -a "$tmp_deb"/x/usr/lib/*/libb64.so.0d* "$dest/lib/"
  rm -rf "$tmp_deb"
fi

if LD_LIBRARY_PATH="$dest/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$dest/bin/perf_analyzer" \
    | grep -q "not found"; then
  echo "perf_analyzer still misses libraries:" >&2
  LD_LIBRARY_PATH="$dest/lib" ldd "$dest/bin/perf_analyzer" | grep "not found" >&2
  exit 1
fi
echo "perf_analyzer ready: $dest/bin/perf_analyzer (run it through loadtests/perf_analyzer.sh)"
