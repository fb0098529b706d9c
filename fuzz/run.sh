#!/usr/bin/env bash
# Run one fuzz target with its committed seeds and dictionary.
#   fuzz/run.sh <target> [seconds=60] [extra libFuzzer args...]
# New inputs go to fuzz/corpus/<target>/ (git-ignored); fuzz/seeds/<target>/ is read-only input.
# One in-process fuzzer (no -jobs/-workers: the machine has 2 cores and may be building).
# SANITIZER=address (or any cargo-fuzz --sanitizer value) overrides the default "none".
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: fuzz/run.sh <target> [seconds] [libFuzzer args...]}
secs=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "fuzz/corpus/$target"
dict=()
[ -f "fuzz/dicts/$target.dict" ] && dict=("-dict=fuzz/dicts/$target.dict")
RUSTC_BOOTSTRAP=1 exec cargo fuzz run --sanitizer "${SANITIZER:-none}" "$target" \
    "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$secs" "${dict[@]}" "$@"
