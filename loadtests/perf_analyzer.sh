#!/usr/bin/env bash
# Runs the perf_analyzer installed by loadtests/install_perf_analyzer.sh with its libraries found.
# Example (Tessera on 127.0.0.1, gRPC then HTTP):
#   loadtests/perf_analyzer.sh -m tabular -i grpc -u 127.0.0.1:8001 --concurrency-range 1:32
#   loadtests/perf_analyzer.sh -m tabular -i http -u 127.0.0.1:8000 --concurrency-range 1:32
# PERF_ANALYZER_HOME overrides the install directory (default <repo>/.bench/perf_analyzer).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
home=${PERF_ANALYZER_HOME:-$root/.bench/perf_analyzer}
if [ ! -x "$home/bin/perf_analyzer" ]; then
  echo "perf_analyzer is not installed; run loadtests/install_perf_analyzer.sh" >&2
  exit 127
fi
export LD_LIBRARY_PATH="$home/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$home/bin/perf_analyzer" "$@"
