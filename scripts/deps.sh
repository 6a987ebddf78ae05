#!/usr/bin/env bash
# Installs, with apt-get, what building and testing ondisk needs and this machine lacks:
#   - libclang, which bindgen loads at build time to generate RocksDB's bindings;
#   - C and C++ compilers (g++ brings both) for RocksDB and for jemalloc, its and our allocator;
#   - protoc, for etcd's API (server and the benchmark's client, generated from etcd's .proto files);
#   - fuse3 (fusermount3), for the power-cut file system the tests mount;
#   - etcdctl (Debian's etcd-client), the real etcd client the tests drive ondisk's etcd API with.
# `scripts/deps.sh --find-libclang ROOT` only prints the libclang that a build would load, looking
# under ROOT instead of / (the test in scripts/test-deps.sh uses it with a fake directory layout).
set -euo pipefail

# The directories and file names clang-sys (bindgen's loader) searches on Linux. `libclang-cpp`
# is a different library that clang-sys skips: a machine that has only it still cannot build.
LIBCLANG_DIRS=("usr/local/llvm*/lib*" "usr/local/lib*/*/*" "usr/local/lib*/*" "usr/local/lib*"
    "usr/lib*/*/*" "usr/lib*/*" "usr/lib*")
LIBCLANG_NAMES=("libclang.so" "libclang-*.so" "libclang.so.*" "libclang-*.so.*")

# Prints the first libclang under $1 (a root directory) that bindgen would load; fails if none.
find_libclang() {
    local root=${1%/} dir name file
    shopt -s nullglob
    for dir in "${LIBCLANG_DIRS[@]}"; do
        for name in "${LIBCLANG_NAMES[@]}"; do
            for file in "$root"/$dir/$name; do
                case "$(basename "$file")" in *-cpp.*) continue ;; esac
                [ -e "$file" ] && { echo "$file"; return 0; }
            done
        done
    done
    return 1
}

if [ "${1:-}" = "--find-libclang" ]; then
    find_libclang "${2:-/}"
    exit
fi

missing=()
if [ -n "${LIBCLANG_PATH:-}" ]; then
    :
elif ! find_libclang / >/dev/null; then
    missing+=(libclang-dev clang)
fi
command -v c++ >/dev/null || missing+=(g++)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v etcdctl >/dev/null || missing+=(etcd-client)

if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (needed to build and test ondisk)"
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    if [ -z "${LIBCLANG_PATH:-}" ] && ! find_libclang / >/dev/null; then
        echo "error: libclang is still missing after installing libclang-dev; set LIBCLANG_PATH" >&2
        exit 1
    fi
fi
command -v cargo >/dev/null || {
    echo "error: cargo is required: install Rust from your distribution or rustup" >&2
    exit 1
}
