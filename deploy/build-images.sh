#!/bin/sh
# Builds ebbtide:dev and ebbtide-backend:dev without a registry: a static ebbtide binary (glibc,
# crt-static) copied into scratch images by deploy/Dockerfile.scratch. Run from anywhere; the
# binary is built in target/static so the normal target/ keeps its cache.
#   deploy/build-images.sh            # build both images
#   TAG=test deploy/build-images.sh   # ebbtide:test and ebbtide-backend:test
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
tag="${TAG:-dev}"
triple="$(uname -m)-unknown-linux-gnu"
cd "$root"
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --target "$triple" --target-dir target/static -p ebbtide
bin="target/static/$triple/release/ebbtide"
if ldd "$bin" 2>&1 | grep -q "=>"; then
    echo "build-images: $bin is not static; scratch images need a static binary" >&2
    exit 1
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/ebbtide"
strip "$ctx/ebbtide" 2>/dev/null || true
for stage in ebbtide backend; do
    case "$stage" in
        ebbtide) name="ebbtide:$tag" ;;
        backend) name="ebbtide-backend:$tag" ;;
    esac
    DOCKER_BUILDKIT=0 docker build -q -f deploy/Dockerfile.scratch --target "$stage" -t "$name" "$ctx"
    echo "build-images: built $name"
done
# The images a rebuild replaced (now untagged), and nothing else.
docker image prune -f --filter label=ebbtide.build=scratch >/dev/null
