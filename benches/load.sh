#!/usr/bin/env bash
# Load comparison, all in one run on this machine: direct-to-upstream vs nginx (reverse
# proxy, same TLS settings) vs ward, in front of the same upstream (an nginx instance that
# answers a small FHIR Patient). Prints throughput, p50/p99 latency added over direct, CPU
# time per request (user+sys of the proxy's processes / requests), and proxy RSS, as ratios.
#
#   benches/load.sh [duration_seconds=10] [connections=32]
#
# Needs: wrk, nginx, openssl (apt-get install wrk nginx-light openssl). Loopback only.
set -euo pipefail
DUR="${1:-10}"
CONNS="${2:-32}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/up.pid" ] && kill "$(cat "$WORK/up.pid")" 2>/dev/null || true
  [ -f "$WORK/px.pid" ] && kill "$(cat "$WORK/px.pid")" 2>/dev/null || true
  sleep 0.5; rm -rf "$WORK"
}
trap cleanup EXIT

for t in wrk nginx openssl; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }; done
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
WARD="$ROOT/target/release/ward"
bash "$ROOT/certs-example/make-demo-certs.sh" "$WORK/certs" >/dev/null 2>&1

UP=18081; NGX=18443; WRD=18444; ADM=19901
BODY='{"resourceType":"Patient","id":"example-1","name":[{"family":"Testperson","given":["Alba"]}],"gender":"female","birthDate":"1970-01-01"}'

cat > "$WORK/up.conf" <<NGINX
worker_processes 1; pid $WORK/up.pid; error_log $WORK/up.err; daemon on;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$UP; keepalive_requests 100000;
    location / { default_type application/fhir+json; return 200 '$BODY'; } } }
NGINX

# nginx as a TLS reverse proxy with Ward's TLS policy (1.2/1.3, ECDHE+AEAD), upstream keep-alive.
cat > "$WORK/px.conf" <<NGINX
worker_processes 2; pid $WORK/px.pid; error_log $WORK/px.err; daemon on;
events { worker_connections 4096; }
http { access_log off;
  upstream ehr { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGX ssl; http2 on; keepalive_requests 100000;
    ssl_certificate $WORK/certs/server.pem; ssl_certificate_key $WORK/certs/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305;
    location /fhir { proxy_pass http://ehr; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr; proxy_set_header X-Forwarded-Proto https; } } }
NGINX
# Debian 12's nginx 1.22 predates `http2 on;`.
if ! nginx -t -c "$WORK/px.conf" -p "$WORK" >/dev/null 2>&1; then
  sed -i 's/ ssl; http2 on;/ ssl http2;/' "$WORK/px.conf"
fi

cat > "$WORK/ward.yaml" <<YAML
policies_dir: $WORK/none
listeners:
  - name: public
    bind: 127.0.0.1:$WRD
    tls:
      certificates:
        - cert: $WORK/certs/server.pem
          key: $WORK/certs/server.key
    limits:
      idle_timeout: 120s
upstreams:
  - name: ehr
    url: http://127.0.0.1:$UP
routes:
  - name: fhir
    listener: public
    path_prefix: /fhir
    upstream: ehr
    fhir: true
admin:
  bind: 127.0.0.1:$ADM
log:
  level: warn
YAML

nginx -c "$WORK/up.conf" -p "$WORK"
nginx -c "$WORK/px.conf" -p "$WORK"
"$WARD" run --config "$WORK/ward.yaml" 2>"$WORK/ward.log" &
WPID=$!; PIDS+=("$WPID")
for _ in $(seq 50); do curl -sk "https://127.0.0.1:$WRD/fhir/Patient/1" >/dev/null 2>&1 && break; sleep 0.1; done

# CPU ticks (user+sys) of a set of pids.
ticks() { local t=0; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
rss_kb() { local t=0; for p in "$@"; do [ -r "/proc/$p/status" ] && t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo $t; }
HZ=$(getconf CLK_TCK)
nginx_pids() { pgrep -f "nginx.*$WORK/px.conf" | tr '\n' ' '; pgrep -P "$(cat "$WORK/px.pid")" | tr '\n' ' '; }

# run NAME URL PIDS... -> "rps p50_ms p99_ms requests cpu_us_per_req rss_kb"
run() {
  local name=$1 url=$2; shift 2
  wrk -t1 -c"$CONNS" -d2s "$url" >/dev/null 2>&1   # warm-up
  local c0; c0=$(ticks "$@")
  local out; out=$(wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$url")
  local c1; c1=$(ticks "$@")
  local rps reqs p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  p50=$(echo "$out" | awk '$1=="50%"{print $2}')
  p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  local ms50 ms99
  ms50=$(python3 -c "import re,sys;v=sys.argv[1];m=re.match(r'([\d.]+)(us|ms|s)',v);print(float(m.group(1))*{'us':1e-3,'ms':1,'s':1e3}[m.group(2)])" "$p50")
  ms99=$(python3 -c "import re,sys;v=sys.argv[1];m=re.match(r'([\d.]+)(us|ms|s)',v);print(float(m.group(1))*{'us':1e-3,'ms':1,'s':1e3}[m.group(2)])" "$p99")
  local cpu_us="n/a"
  if [ "$#" -gt 0 ]; then cpu_us=$(python3 -c "print(round(($c1-$c0)/$HZ*1e6/$reqs,2))"); fi
  echo "$name $rps $ms50 $ms99 $reqs $cpu_us $(rss_kb "$@")"
}

echo "duration=${DUR}s connections=$CONNS cores=$(nproc) ($(nginx -v 2>&1), ward $("$WARD" --version))"
D=$(run direct "http://127.0.0.1:$UP/fhir/Patient/1")
N=$(run nginx "https://127.0.0.1:$NGX/fhir/Patient/1" $(nginx_pids))
W=$(run ward "https://127.0.0.1:$WRD/fhir/Patient/1" "$WPID")
python3 - "$D" "$N" "$W" <<'PY'
import sys
rows = [r.split() for r in sys.argv[1:]]
print(f"{'target':8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'cpu us/req':>10} {'rss KiB':>8}")
for r in rows:
    print(f"{r[0]:8} {float(r[1]):>10.0f} {float(r[2]):>8.3f} {float(r[3]):>8.3f} {int(r[4]):>9} {r[5]:>10} {r[6]:>8}")
d, n, w = rows
f = float
print()
print(f"throughput ward/nginx          = {f(w[1])/f(n[1]):.2f}")
print(f"throughput ward/direct         = {f(w[1])/f(d[1]):.2f}")
print(f"added p50 ward/nginx           = {(f(w[2])-f(d[2]))/max(f(n[2])-f(d[2]),1e-3):.2f}  (ward +{f(w[2])-f(d[2]):.3f} ms, nginx +{f(n[2])-f(d[2]):.3f} ms over direct)")
print(f"added p99 ward/nginx           = {(f(w[3])-f(d[3]))/max(f(n[3])-f(d[3]),1e-3):.2f}  (ward +{f(w[3])-f(d[3]):.3f} ms, nginx +{f(n[3])-f(d[3]):.3f} ms)")
print(f"cpu per request ward/nginx     = {f(w[5])/f(n[5]):.2f}  ({w[5]} us vs {n[5]} us)")
print(f"rss ward/nginx(master+workers) = {f(w[6])/f(n[6]):.2f}")
PY
