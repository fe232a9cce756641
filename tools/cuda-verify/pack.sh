#!/bin/sh
# usage: pack.sh TREE DEST_DIR -- writes DEST_DIR/src.tar.gz (trimmed tree + CMakeLists.txt)
set -e
TREE=$1; DEST=$2; HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$DEST"
STAGE=$(mktemp -d)
mkdir -p "$STAGE/src/tests" "$STAGE/src/ggml/src"
cp "$HERE/CMakeLists.txt" "$STAGE/src/"
cp "$TREE/tests/test-backend-ops.cpp" "$HERE/hifi-cuda-check.cpp" "$STAGE/src/tests/"
cp -r "$TREE/ggml/CMakeLists.txt" "$TREE/ggml/cmake" "$TREE/ggml/include" "$STAGE/src/ggml/"
( cd "$TREE/ggml/src" && find . -maxdepth 1 -type f -exec cp {} "$STAGE/src/ggml/src/" \; )
cp -r "$TREE/ggml/src/ggml-cpu" "$TREE/ggml/src/ggml-cuda" "$STAGE/src/ggml/src/"
tar czf "$DEST/src.tar.gz" -C "$STAGE" src
rm -rf "$STAGE"
ls -la "$DEST/src.tar.gz"
