#!/usr/bin/env bash
# Ward's guided tutorial as one script. Every command in it is meant to be copied and
# pasted, section by section (a section starts at a `# --- name` line). README.md ("The
# demo") shows the same sections verbatim, `ward demo` prints them with its own paths, and
# `cargo test --test demo` runs this script against a started demo: none of the three can
# drift from what Ward does.
#
#   cargo run --release -- demo      # in one terminal
#   bash docs/tutorial.sh            # in another, from the repository root
#
# Override where things are with D (demo directory), GW (gateway URL), ADMIN (admin
# listener host:port) and WARD (the ward binary).
set -euo pipefail

# --- setup
D=${D:-certs-example/demo}          # the demo's certificates, keys, tokens, audit trail
GW=${GW:-https://localhost:8443}    # the gateway
ADMIN=${ADMIN:-127.0.0.1:9901}      # its admin listener (loopback only)
WARD=${WARD:-target/release/ward}   # the ward binary (`cargo run --release` built it)

# --- init
# Your own gateway, the way a hospital would start: `ward init` asks the EHR what it serves
# (its CapabilityStatement: types, interactions, search parameters) and writes ward.yaml and
# policies/ with one route per kind of client — here in front of Ward's sample EHR, with
# development certificates and a development token issuer. `ward check` and `ward doctor`
# then read it the way a reviewer would.
MY=${MY:-my-gateway}                  # where the new configuration goes
MYBIND=${MYBIND:-127.0.0.1:9443}      # its HTTPS listener
MYADMIN=${MYADMIN:-127.0.0.1:9902}    # its admin listener
mkdir -p "$MY"
"$WARD" sample-upstream --bind "${EHRBIND:-127.0.0.1:8081}" --addresses-file "$MY/ehr.addr" \
  > "$MY/ehr.log" 2>&1 & EHRPID=$!
trap 'kill $EHRPID ${MYPID:-} 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$MY/ehr.addr" ] && break; sleep 0.1; done
EHR="http://$(cut -d' ' -f2 "$MY/ehr.addr")/fhir"
"$WARD" init --non-interactive --upstream "$EHR" --dev-certs --dir "$MY" --audience ward-demo \
  --clients clinician,patient,research --bind "$MYBIND" --admin-bind "$MYADMIN"
#   -> ward.yaml, policies/*.yaml, certs/ (development only), secrets/audit.key
"$WARD" check --config "$MY/ward.yaml"
"$WARD" doctor --config "$MY/ward.yaml"
#   -> no critical or high finding (exit 0)
"$WARD" run --config "$MY/ward.yaml" --addresses-file "$MY/addresses" > "$MY/ward.log" 2>&1 & MYPID=$!
for _ in $(seq 100); do [ -s "$MY/addresses" ] && break; sleep 0.1; done
MYGW="https://localhost:$(grep '^public ' "$MY/addresses" | cut -d' ' -f2 | sed 's/.*://')"
MYTOKEN=$("$WARD" token --key "$MY/certs/token-signing.key" --sub dr-example --scope 'user/*.read')
APPTOKEN=$("$WARD" token --key "$MY/certs/token-signing.key" --sub app-example --patient example-1 \
  --scope 'launch/patient patient/*.read')
curl -s -o /dev/null -w '%{http_code}\n' --cacert "$MY/certs/ca.pem" "$MYGW/clinician/fhir/Patient/example-1"
#   -> 401: no token, no data
curl -s -o /dev/null -w '%{http_code}\n' --cacert "$MY/certs/ca.pem" \
  -H "Authorization: Bearer $MYTOKEN" "$MYGW/clinician/fhir/Patient/example-1"
#   -> 200
curl -s -o /dev/null -w '%{http_code}\n' --cacert "$MY/certs/ca.pem" \
  -H "Authorization: Bearer $APPTOKEN" "$MYGW/patient/fhir/Patient/example-2"
#   -> 404: a patient app sees its own patient's record only
curl -s --cacert "$MY/certs/ca.pem" -H "Authorization: Bearer $MYTOKEN" \
  "$MYGW/research/fhir/Patient/example-3" | grep -c '123-45-6789' || true
#   -> 0: the research route de-identifies (HIPAA Safe Harbor)
kill "$MYPID" "$EHRPID"; wait "$MYPID" "$EHRPID" 2>/dev/null || true; trap - EXIT

# --- tokens
# Tokens from the demo issuer (15 minutes): a clinician, and an emergency-department
# doctor launched on patient example-1 whose `emergency-access` scope allows break-glass.
TOKEN=$("$WARD" token --key "$D/token-signing.key" --sub demo-clinician --scope 'patient/*.read')
ERTOKEN=$("$WARD" token --key "$D/token-signing.key" --sub demo-er-doctor --patient example-1 \
  --scope 'launch/patient patient/*.read emergency-access')

# --- exfiltration
# Detect and respond: in the demo, one token reading 3 distinct patients within a minute
# looks like exfiltration. The third read fires the signal; from the next request on,
# the token is blocked for 15 minutes (403 `blocked`) and the EHR sees nothing more.
for p in example-1 example-2 example-3 example-4 example-5; do
  curl -s -o /dev/null -w '%{http_code} ' --cacert "$D/ca.pem" \
    -H "Authorization: Bearer $TOKEN" "$GW/secure/fhir/Patient/$p"
done; echo
#   -> 200 200 200 403 403
curl -s --cacert "$D/ca.pem" -H "Authorization: Bearer $TOKEN" "$GW/secure/fhir/Patient/example-1"; echo
#   -> an OperationOutcome with the code `blocked`

# --- operators
# The incident responder's side, through the admin API. The operator token is in
# $D/operator.token; the gateway keeps only its SHA-256 (in $D/operators.txt).
"$WARD" blocks --admin "$ADMIN" --token-file "$D/operator.token"
#   -> the block: kind sub, value https://ward.demo/issuer|demo-clinician, reason, expiry
"$WARD" unblock --admin "$ADMIN" --token-file "$D/operator.token" \
  --sub 'https://ward.demo/issuer|demo-clinician'
curl -s -o /dev/null -w '%{http_code}\n' --cacert "$D/ca.pem" \
  -H "Authorization: Bearer $TOKEN" "$GW/secure/fhir/Patient/example-1"
#   -> 200: served again

# --- break-glass
# Break-glass (HIPAA emergency access): the ER doctor's token is confined to example-1...
curl -s -o /dev/null -w '%{http_code}\n' --cacert "$D/ca.pem" \
  -H "Authorization: Bearer $ERTOKEN" "$GW/patient/fhir/Patient/example-2"
#   -> 404: outside the token's patient compartment, it does not exist for this token
# ...unless the doctor says why. Every use is audited with the reason and counted.
curl -s --cacert "$D/ca.pem" -H "Authorization: Bearer $ERTOKEN" \
  -H 'Break-Glass-Reason: Unresponsive patient in ED, allergy history needed' \
  "$GW/patient/fhir/Patient/example-2"; echo
#   -> example-2's record
grep '"break_glass":true' "$D/audit/audit.jsonl" | tail -1
#   -> its audit record: who, what, when, and "break_glass_reason"
curl -s "http://$ADMIN/metrics" | grep '^ward_break_glass_total'

# --- audit
# The audit trail is hash-chained: an edited, reordered or deleted record is found.
"$WARD" audit verify "$D/audit/audit.jsonl"
#   -> ok: N records, seq 1 to N, chain intact (exit 0)
# Each record carries its FHIR AuditEvent (IHE Basic Audit Log Patterns): the break-glass
# read above is a PatientRead whose purpose of use is BTG ("break the glass").
grep '"break_glass":true' "$D/audit/audit.jsonl" | tail -1 | grep -o 'IHE\.BasicAudit\.[A-Za-z]*\|"code":"BTG"'
#   -> "code":"BTG" and IHE.BasicAudit.PatientRead

# --- discovery
# SMART discovery: what a SMART app reads before it has a token. The patient route answers
# from its `discovery` policy, without a token and without asking the EHR.
curl -s --cacert "$D/ca.pem" "$GW/patient/fhir/.well-known/smart-configuration" | grep -o '"token_endpoint":"[^"]*"'
#   -> "token_endpoint":"https://ward.demo/issuer/token"

# --- deploy
# Watching it: Prometheus scrapes the admin listener with the shipped alert rules
# (deploy/prometheus/), and the Grafana dashboard (deploy/grafana/) graphs the same metrics.
# Here a local Prometheus against this demo; with Docker,
# `docker compose -f deploy/docker-compose.yml up --build` runs Ward, a sample EHR,
# Prometheus and Grafana (http://localhost:3000) together.
PROM=${PROM:-127.0.0.1:9090}
mkdir -p "$D/prometheus"
sed "s|ward:9901|$ADMIN|" deploy/prometheus/prometheus.yml > "$D/prometheus/prometheus.yml"
cp deploy/prometheus/alerts.yml "$D/prometheus/alerts.yml"
promtool check config "$D/prometheus/prometheus.yml" > /dev/null
prometheus --config.file="$D/prometheus/prometheus.yml" --storage.tsdb.path="$D/prometheus/data" \
  --web.listen-address="$PROM" > "$D/prometheus/log" 2>&1 & PROMPID=$!
trap 'kill $PROMPID 2>/dev/null || true' EXIT
for _ in $(seq 150); do
  curl -s "http://$PROM/api/v1/query?query=up" | grep -q '"1"\]' && break; sleep 0.2
done
curl -s "http://$PROM/api/v1/query?query=ward_audit_records_total" | grep -o '"status":"success"'
#   -> "status":"success": Prometheus has Ward's metrics, the dashboard's data source
"$WARD" doctor --config "$D/ward-demo.yaml" --admin "$ADMIN" --format json > "$D/doctor.json" \
  || echo "ward doctor: exit $?"
grep -o '"worst": *"[a-z]*"' "$D/doctor.json"
#   -> exit 3, "critical": the demo's open routes are flagged, on purpose (a real
#      deployment fixes every critical and high finding; the exit code is for monitoring)
kill "$PROMPID"; wait "$PROMPID" 2>/dev/null || true; trap - EXIT
