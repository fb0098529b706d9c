#!/usr/bin/env bash
# Ward against nginx and direct-to-upstream, all in one run, by the method issue #16 judges by:
#
#   * each proxy confined to one core (`taskset -c 1`; nginx `worker_processes 1`, Ward
#     `--workers 1`); the upstream (nginx serving a 2 KB FHIR Patient) and the load generator
#     (`wrk -t1 -c32`, `h2load -t1`) on the other core;
#   * TLS 1.3 keep-alive from the client, plain HTTP/1.1 keep-alive to the upstream;
#   * CPU per request = utime+stime of the proxy process / requests (from /proc, so the load
#     generator's own cost is not counted);
#   * per-policy marginal cost = (Ward with that policy alone) - (Ward pass-through), same round;
#   * memory = RSS growth per idle TLS keep-alive connection over IDLE connections (each has
#     served one request first, so per-request buffers that are kept show up).
#
#   benches/load.sh [WARD_BIN]        (builds target/release/ward when no binary is given)
#   env: DUR=10 CONNS=32 ROUNDS=3 IDLE=2000 PARTS="auth authz dlp rate audit log" H2=1
#        WARD_ARGS="--workers 1" (empty for a build older than `--workers`)
#
# Every figure is printed per round; the summary gives the mean and the best (lowest CPU)
# round, and the ratios the issue asks for. Machine load moves absolute figures 2-5x: run it
# on an idle machine, and compare only figures from the same run.
# Needs: wrk, nginx, openssl, python3, taskset (apt-get install wrk nginx-light openssl
# util-linux python3), h2load (nghttp2-client) for the HTTP/2 rows. Loopback only.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WARD_ARGS=${WARD_ARGS---workers 1}
DUR=${DUR:-10}; CONNS=${CONNS:-32}; ROUNDS=${ROUNDS:-3}; IDLE=${IDLE:-2000}; H2=${H2:-1}
PARTS=${PARTS-"auth authz dlp rate audit log"}
WARD=${1:-}
if [ -z "$WARD" ]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" || exit 1
  WARD="$ROOT/target/release/ward"
fi
WARD=$(readlink -f "$WARD")
for t in wrk nginx openssl python3 taskset; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }; done
if [ "$H2" = 1 ] && ! command -v h2load >/dev/null; then echo "h2load missing: no HTTP/2 rows" >&2; H2=0; fi
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores" >&2; exit 2; }
ulimit -n 65536 2>/dev/null || ulimit -n 8192

W=$(mktemp -d); chmod 755 "$W"
UP=${UP_PORT:-18080}; NGX=${NGX_PORT:-18443}; WRD=${WARD_PORT:-18444}; ADM=${ADMIN_PORT:-18445}
WP=""
cleanup() {
  [ -n "$WP" ] && kill "$WP" 2>/dev/null
  for f in up px; do [ -f "$W/$f.pid" ] && kill "$(cat "$W/$f.pid")" 2>/dev/null; done
  sleep 0.3; rm -rf "$W"
}
trap cleanup EXIT

# --- material: certificate, token key, a 2 KB Patient -------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/key.pem" \
  -out "$W/cert.pem" -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$W/tok.key" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$W/tok.key" -out "$W/tok8.key"
openssl ec -in "$W/tok.key" -pubout -out "$W/cfg-tok.pub" 2>/dev/null
# The upstream's files live outside Ward's config folder: what the config watcher sees is
# Ward's business, not the benchmark's.
mkdir -p "$W/up" "$W/cfg/policies" "$W/audit" "$W/logs"
mv "$W/cfg-tok.pub" "$W/cfg/tok.pub"; cp "$W/cert.pem" "$W/key.pem" "$W/cfg/"
python3 - > "$W/up/patient.json" <<'PY'
import json
p = {"resourceType": "Patient", "id": "example", "meta": {"versionId": "1"},
     "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
     "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
     "gender": "male", "birthDate": "1974-12-25",
     "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}],
     "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">" + "x" * 1400 + "</div>"}}
print(json.dumps(p))
PY
chmod -R a+rX "$W/up"

# --- nginx: upstream (core 0) and reverse proxy (core 1) ---------------------------------
cat > "$W/up.conf" <<NG
worker_processes 1; pid $W/up.pid; error_log $W/up.err; events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000; open_file_cache max=16;
  server { listen 127.0.0.1:$UP; location / { default_type application/fhir+json; root $W/up; try_files /patient.json =404; } } }
NG
cat > "$W/px.conf" <<NG
worker_processes 1; pid $W/px.pid; error_log $W/px.err; events { worker_connections 8192; }
worker_rlimit_nofile 65536;
http { access_log off; keepalive_requests 10000000;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGX ssl http2; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
           ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
           location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                        proxy_set_header X-Forwarded-For \$remote_addr; } } }
NG

# --- Ward configs: pass-through, full chain, one per policy --------------------------------
base() { cat <<Y
policies_dir: policies
listeners:
  - name: public
    bind: 127.0.0.1:$WRD
    tls:
      certificates:
        - cert: cert.pem
          key: key.pem
          server_names: [localhost]
    limits:
      max_connections: 20000
      idle_timeout: 300s
upstreams:
  - name: ehr
    url: http://127.0.0.1:$UP
routes:
  - name: fhir
    listener: public
    path_prefix: /fhir
    upstream: ehr
    fhir: true
Y
}
pol() { # name -> policy text
  case $1 in
    auth) printf 'auth:\n  providers:\n    - name: bench\n      issuer: https://bench.example\n      audiences: [bench]\n      algorithms: [ES256]\n      keys_file: tok.pub\n' ;;
    authz) printf 'fhir_authz:\n  patient_claim: patient\n' ;;
    dlp) printf 'dlp:\n  mode: enforce\n  direction: response\n  preset: safe_harbor\n' ;;
    rate) printf 'rate_limit:\n  backend: local\n  limits:\n    - name: per-user\n      key: %s\n      rate: 1000000\n      per: second\n      burst: 1000000\n' "${2:-client_ip}" ;;
    audit) printf 'audit: {}\n' ;;
  esac
}
for p in auth authz dlp rate audit; do pol $p > "$W/cfg/policies/$p.yaml"; done
{ pol auth; pol authz; pol dlp; pol rate token_sub; pol audit; } > "$W/cfg/policies/chain.yaml"
echo "ops $(printf x | sha256sum | cut -d' ' -f1)" > "$W/cfg/operators.txt"
tail_cfg() { printf 'admin: {bind: 127.0.0.1:%s}\nlog: {level: %s}\n' "$ADM" "${1:-warn}"; }
{ base; tail_cfg; } > "$W/cfg/pass.yaml"
{ base; echo "    policies: [chain]"
  printf 'audit: {path: %s/audit/chain.jsonl, durability: fsync}\n' "$W"
  printf 'respond:\n  blocks_file: %s/audit/blocks.json\n  operators: {tokens_file: operators.txt}\n' "$W"
  printf '  signals:\n    exfiltration:\n      distinct_patients: 1000\n      window_secs: 3600\n'
  tail_cfg; } > "$W/cfg/chain.yaml"
part_cfg() { # name policies...
  local n=$1; shift
  { base; [ $# -gt 0 ] && echo "    policies: [$(echo "$@" | sed 's/ /, /g')]"
    printf 'audit: {path: %s/audit/%s.jsonl, durability: fsync}\n' "$W" "$n"
    if [ "$n" = log ]; then tail_cfg info; else tail_cfg; fi; } > "$W/cfg/$n.yaml"
}
part_cfg auth auth; part_cfg authz auth authz; part_cfg dlp dlp; part_cfg rate rate
part_cfg audit audit; part_cfg log
for c in pass chain $PARTS; do
  "$WARD" check --config "$W/cfg/$c.yaml" >/dev/null || { "$WARD" check --config "$W/cfg/$c.yaml"; exit 1; }
done
TOK=$("$WARD" token --key "$W/tok8.key" --iss https://bench.example --aud bench --sub bench-user \
      --scope 'launch/patient patient/*.read' --patient example --ttl 2h)
AUTHZ="Authorization: Bearer $TOK"

taskset -c 0 nginx -c "$W/up.conf" -p "$W" || exit 1
taskset -c 1 nginx -c "$W/px.conf" -p "$W" || exit 1
for _ in $(seq 50); do [ -s "$W/px.pid" ] && [ -s "$W/up.pid" ] && break; sleep 0.1; done
NGX_PID=$(pgrep -P "$(cat "$W/px.pid")" | head -n1)
HZ=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }

startw() { # config -> sets WP (ward's pid); waits until it answers
  (cd "$W/cfg" && exec taskset -c 1 "$WARD" run $WARD_ARGS --config "$W/cfg/$1.yaml" >"$W/logs/$1.log" 2>&1) &
  WP=$!
  for _ in $(seq 200); do
    curl -sk -o /dev/null "https://127.0.0.1:$WRD/fhir/metadata" 2>/dev/null && return 0; sleep 0.05
  done
  echo "ward ($1) did not start:" >&2; cat "$W/logs/$1.log" >&2; exit 1
}
stopw() { kill "$WP" 2>/dev/null; wait "$WP" 2>/dev/null; WP=""; }

RES="$W/results.txt"; : > "$RES"
# wrk NAME URL PID [HEADER] -> a result line "h1 NAME round rps p50_ms p99_ms cpu_us non2xx"
measure() {
  local name=$1 url=$2 pid=$3 hdr=${4:-} out b a
  local args=(-t1 -c"$CONNS" --latency); [ -n "$hdr" ] && args+=(-H "$hdr")
  taskset -c 0 wrk "${args[@]}" -d2s "$url" >/dev/null 2>&1   # warm-up: pools, caches
  b=$(cpu "$pid"); out=$(taskset -c 0 wrk "${args[@]}" -d"${DUR}s" "$url" 2>&1); a=$(cpu "$pid")
  python3 - "$name" "$ROUND" "$b" "$a" "$HZ" "$out" >> "$RES" <<'PY'
import re, sys
name, rnd, b, a, hz, out = sys.argv[1:]
def t(v):
    m = re.match(r'([\d.]+)(us|ms|s)', v); return float(m.group(1)) * {'us': 1e-3, 'ms': 1, 's': 1e3}[m.group(2)]
reqs = int(re.search(r'(\d+) requests in', out).group(1))
rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
p50 = t(re.search(r'\s50%\s+(\S+)', out).group(1)); p99 = t(re.search(r'\s99%\s+(\S+)', out).group(1))
non2 = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
cpu = (float(a) - float(b)) / float(hz) * 1e6 / max(reqs, 1)
print(f"h1 {name} {rnd} {rps:.0f} {p50:.3f} {p99:.3f} {cpu:.2f} {non2.group(1) if non2 else 0}")
PY
  tail -n1 "$RES"
}
# h2load NAME URL PID [HEADER]: many streams per connection
measure_h2() {
  local name=$1 url=$2 pid=$3 hdr=${4:-} out b a
  local args=(-t1 -c"$CONNS" -m10); [ -n "$hdr" ] && args+=(-H "$hdr")
  taskset -c 0 h2load "${args[@]}" -D 2 "$url" >/dev/null 2>&1
  b=$(cpu "$pid"); out=$(taskset -c 0 h2load "${args[@]}" -D "$DUR" "$url" 2>&1); a=$(cpu "$pid")
  python3 - "$name" "$ROUND" "$b" "$a" "$HZ" "$out" >> "$RES" <<'PY'
import re, sys
name, rnd, b, a, hz, out = sys.argv[1:]
m = re.search(r'requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded', out)
done, ok = int(m.group(3)), int(m.group(4))
rps = float(re.search(r'finished in [\d.]+\w+, ([\d.]+) req/s', out).group(1))
cpu = (float(a) - float(b)) / float(hz) * 1e6 / max(done, 1)
print(f"h2 {name} {rnd} {rps:.0f} - - {cpu:.2f} {done - ok}")
PY
  tail -n1 "$RES"
}

URL_N="https://127.0.0.1:$NGX/fhir/Patient/example"
URL_W="https://127.0.0.1:$WRD/fhir/Patient/example"
echo "# $(date -u +%FT%TZ) $(nginx -v 2>&1) | $("$WARD" --version) | DUR=${DUR}s CONNS=$CONNS ROUNDS=$ROUNDS"
for ROUND in $(seq 1 "$ROUNDS"); do
  echo "--- round $ROUND"
  measure direct "http://127.0.0.1:$UP/fhir/Patient/example" "$(pgrep -P "$(cat "$W/up.pid")" | head -n1)"
  measure nginx "$URL_N" "$NGX_PID"
  [ "$H2" = 1 ] && measure_h2 nginx "$URL_N" "$NGX_PID"
  startw pass; measure pass "$URL_W" "$WP"; [ "$H2" = 1 ] && measure_h2 pass "$URL_W" "$WP"; stopw
  startw chain
  code=$(curl -sk -o /dev/null -w '%{http_code}' -H "$AUTHZ" "$URL_W")
  [ "$code" = 200 ] || { echo "chain answered $code" >&2; exit 1; }
  measure chain "$URL_W" "$WP" "$AUTHZ"; [ "$H2" = 1 ] && measure_h2 chain "$URL_W" "$WP" "$AUTHZ"; stopw
  for p in $PARTS; do startw "$p"; measure "$p" "$URL_W" "$WP" "$AUTHZ"; stopw; done
done

# --- idle connections: RSS growth per TLS keep-alive connection ---------------------------
idle() { # name port pid
  python3 - 127.0.0.1 "$2" "$3" "$IDLE" /fhir/Patient/example <<'PY'
import socket, ssl, sys, time
host, port, pid, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def rss():
    return int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")))
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
req = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
def one():
    s = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname="localhost")
    s.sendall(req); buf = b""
    while b"\r\n\r\n" not in buf: buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    cl = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    while cl and len(body) < cl[0]: body += s.recv(65536)
    return s
warm = [one() for _ in range(50)]
time.sleep(0.5); before = rss()
conns = [one() for _ in range(n)]
time.sleep(1.0); after = rss()
print(f"{(after - before) / n:.1f} {before} {after}")
PY
}
echo "--- idle TLS keep-alive connections: $IDLE"
echo "idle nginx $(idle nginx "$NGX" "$NGX_PID")" | tee -a "$RES"
startw pass; echo "idle pass $(idle pass "$WRD" "$WP")" | tee -a "$RES"; stopw

# --- summary ------------------------------------------------------------------------------
python3 - "$RES" "$PARTS" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
parts = sys.argv[2].split()
h = {}
for r in rows:
    if r[0] in ("h1", "h2"):
        h.setdefault((r[0], r[1]), []).append(dict(round=int(r[2]), rps=float(r[3]), p50=r[4], p99=r[5], cpu=float(r[6]), bad=int(r[7])))
def cpu(k, proto="h1"):
    v = [x["cpu"] for x in h.get((proto, k), [])]; return (st.mean(v), min(v)) if v else (float("nan"),) * 2
def rps(k, proto="h1"):
    v = [x["rps"] for x in h.get((proto, k), [])]; return st.mean(v) if v else float("nan")
def lat(k, f):
    v = [float(x[f]) for x in h.get(("h1", k), []) if x[f] != "-"]; return st.mean(v) if v else float("nan")
print("\n## Summary (mean over rounds; best round in brackets). CPU = proxy utime+stime per request.")
print(f"{'':14}{'CPU us/req':>22}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
for k in ["direct", "nginx", "pass", "chain"] + parts:
    m, b = cpu(k)
    print(f"{k:14}{m:>14.1f} [{b:5.1f}]{rps(k):>10.0f}{lat(k,'p50'):>9.3f}{lat(k,'p99'):>9.3f}")
bad = sum(x["bad"] for v in h.values() for x in v)
print(f"non-2xx answers in all runs: {bad}")
n, nb = cpu("nginx"); p, pb = cpu("pass"); c, cb = cpu("chain")
print("\n## Ratios (issue #16)")
print(f"pass-through CPU / nginx CPU      {p/n:5.2f}  (best rounds {pb/nb:4.2f}; must be <= 1.0, aim 0.8)")
print(f"pass-through req/s / nginx req/s  {rps('pass')/rps('nginx'):5.2f}  (must be >= 1.0)")
dn, dp = lat('nginx','p99') - lat('direct','p99'), lat('pass','p99') - lat('direct','p99')
print(f"added p99 over direct: ward {dp:.3f} ms, nginx {dn:.3f} ms")
print(f"full chain CPU / pass-through CPU {c/p:5.2f}  (best rounds {cb/pb:4.2f}; must be <= 2.0)")
aims = {"auth": 1.5, "authz": 3.0, "dlp": None, "rate": 1.0, "audit": 5.0, "log": 1.0}
print("\n## Marginal cost of each policy alone (us CPU per request over pass-through, same round)")
print("| policy | marginal us/req (mean) | best round | aim |")
print("|---|---|---|---|")
for k in parts:
    xs = {x["round"]: x["cpu"] for x in h.get(("h1", k), [])}
    ps = {x["round"]: x["cpu"] for x in h.get(("h1", "pass"), [])}
    d = [xs[r] - ps[r] for r in xs if r in ps]
    if not d: continue
    base = " (over auth)" if k == "authz" else ""
    if k == "authz":  # auth + guard: subtract auth's own cost
        au = {x["round"]: x["cpu"] for x in h.get(("h1", "auth"), [])}
        d = [xs[r] - au[r] for r in xs if r in au]
    aim = aims.get(k)
    print(f"| {k}{base} | {st.mean(d):.1f} | {min(d):.1f} | {'<= %.1f' % aim if aim else '-'} |")
if ("h2", "nginx") in h:
    print("\n## HTTP/2 (h2load -c32 -m10, one TLS connection carries many streams)")
    for k in ["nginx", "pass", "chain"]:
        m, b = cpu(k, "h2"); print(f"{k:8} CPU {m:6.1f} us/req [{b:5.1f}]  {rps(k,'h2'):8.0f} req/s")
    print(f"pass-through / nginx (h2) CPU {cpu('pass','h2')[0]/cpu('nginx','h2')[0]:.2f}")
idle = {r[1]: r for r in rows if r[0] == "idle"}
if idle:
    print("\n## Idle TLS keep-alive connections: RSS growth per connection")
    for k, r in idle.items(): print(f"{k:6} {float(r[2]):6.1f} KiB per connection (RSS {r[3]} -> {r[4]} KiB)")
    if "nginx" in idle and "pass" in idle:
        print(f"ward / nginx {float(idle['pass'][2]) / float(idle['nginx'][2]):.2f}  (aim: <= 16 KiB per connection)")
PY
