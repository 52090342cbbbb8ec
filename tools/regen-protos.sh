#!/bin/sh
# Regenerate androcond/images/criu_pb2.py and .pyi from criu.proto.
#
# Uses protoc from grpcio-tools in a throwaway venv so the generated code matches the protobuf runtime
# (protobuf 7.x needs gencode from protoc >= 30; grpcio-tools 1.85 ships libprotoc 35.1, which emits
# gencode 7.35.x). Override the venv with PROTOC_VENV, the grpcio-tools version with GRPCIO_TOOLS.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${PROTOC_VENV:-/tmp/androcond-protoc-venv}
tools=${GRPCIO_TOOLS:-grpcio-tools==1.85.1}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "$tools"
fi
cd "$root"
"$venv/bin/python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. androcond/images/criu.proto
echo "generated: androcond/images/criu_pb2.py androcond/images/criu_pb2.pyi ($("$venv/bin/python" -m grpc_tools.protoc --version))"
