#!/usr/bin/env bash
# Regenerates server/_generated/ from protos/. Usage: protos/generate.sh [OUT_DIR]
# Run from anywhere; protoc is given the repository root as include path so the
# descriptor-pool file names are "protos/*.proto" and never collide with
# tritonclient's "grpc_service.proto" / "model_config.proto".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/server/_generated}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$root" && python -m grpc_tools.protoc -I. --python_out="$tmp" --pyi_out="$tmp" \
  protos/model_config.proto protos/grpc_service.proto protos/rollout.proto)
mkdir -p "$out"
cp "$tmp"/protos/*_pb2.py "$tmp"/protos/*_pb2.pyi "$out"/
# protoc emits absolute imports (protobuf issue 1491); make them package-relative.
sed -i -E 's/^from protos import /from . import /' "$out"/*.py "$out"/*.pyi
printf '"""Code generated from protos/ by protos/generate.sh. Do not edit."""\n' > "$out/__init__.py"
