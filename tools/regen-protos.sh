#!/bin/sh
# Regenerate the *_pb2.py and .pyi files of androcond's .proto schemas.
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
for proto in androcond/images/criu.proto androcond/protocol/protocol.proto; do
    "$venv/bin/python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. "$proto"
    echo "generated: ${proto%.proto}_pb2.py ${proto%.proto}_pb2.pyi"
done
"$venv/bin/python" -m grpc_tools.protoc --version
