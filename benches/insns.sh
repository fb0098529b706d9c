#!/usr/bin/env bash
# Instructions per byte of each body-aware consumer, counted by callgrind (deterministic:
# machine load does not move it). Runs benches/insns.rs with 1 and 11 repetitions and divides
# the difference by 10 x the input's length.   benches/insns.sh [WORKLOAD...]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 2; }
BIN=$(cargo bench --manifest-path "$ROOT/Cargo.toml" --bench insns --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="insns" and m.get("executable"): print(m["executable"])' | tail -n1)
WORK=${*:-validate_patient validate_bundle dlp_patient dlp_bundle_safe_harbor dlp_bundle_detectors dlp_adt guard_patient guard_patient_tree}
count() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$1" "$2" 2>&1 \
  | awk '/Collected :/{print $NF} /^bytes /{print "B", $2}'; }
printf '%-24s %10s %14s %12s\n' workload bytes insns/run insns/byte
for w in $WORK; do
  a=$(count "$w" 1); b=$(count "$w" 11)
  python3 - "$w" "$a" "$b" <<'PY'
import sys
w, a, b = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
n = int(a[a.index("B") + 1]); ia = int(a[-1] if a[-2] != "B" else a[0]); ib = int(b[-1] if b[-2] != "B" else b[0])
per = (ib - ia) / 10
print(f"{w:24} {n:10} {per:14.0f} {per / n:12.1f}")
PY
done
