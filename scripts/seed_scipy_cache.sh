#!/usr/bin/env bash
# Copy a local ascent.dat where scipy.datasets.ascent() looks for it (pooch's cache), so the lab's
# convolution part works offline. Usage: seed_scipy_cache.sh PATH/TO/ascent.dat
set -euo pipefail
target="${XDG_CACHE_HOME:-$HOME/.cache}/scipy-data/ascent.dat"
if [[ ! -f "$target" ]]; then
    mkdir -p "$(dirname "$target")"
    cp "$1" "$target.partial" && mv "$target.partial" "$target"
fi
