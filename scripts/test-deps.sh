#!/usr/bin/env bash
# Checks scripts/deps.sh's libclang detection against fake directory layouts: a machine with only
# libclang-cpp (which bindgen cannot use) must be told to install libclang-dev, and each file name
# bindgen does load must be found.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
failures=0

layout() { # layout NAME FILE...: a fresh fake root holding exactly FILE...
    rm -rf "${root:?}"/*
    local file
    for file in "$@"; do mkdir -p "$root/$(dirname "$file")" && touch "$root/$file"; done
}
expect() { # expect found|missing DESCRIPTION
    local got=missing
    scripts/deps.sh --find-libclang "$root" >/dev/null && got=found
    if [ "$got" = "$1" ]; then
        echo "ok: $2: $got"
    else
        echo "FAILED: $2: expected $1, got $got"
        failures=$((failures + 1))
    fi
}

layout usr/lib/x86_64-linux-gnu/libclang-cpp.so.14 usr/lib/llvm-14/lib/libclang-cpp.so.14
expect missing "only libclang-cpp.so.14"
layout usr/lib/llvm-14/lib/libclang-cpp.so
expect missing "only libclang-cpp.so"
layout usr/lib/llvm-14/lib/libclang.so
expect found "libclang.so in an llvm directory"
layout usr/lib/x86_64-linux-gnu/libclang-14.so.1
expect found "versioned libclang-14.so.1"
layout usr/lib/x86_64-linux-gnu/libclang-14.so
expect found "libclang-14.so"
layout usr/lib64/libclang.so.1
expect found "libclang.so.1 in lib64"
layout usr/local/llvm17/lib/libclang.so
expect found "libclang.so under /usr/local/llvm17"

echo "$((7 - failures)) passed, $failures failed"
[ "$failures" = 0 ]
