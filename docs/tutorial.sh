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
# TODO(issue 19, item 1): the `ward init` steps go here — generate ward.yaml and
# policies/ from the sample upstream's CapabilityStatement, `ward check` the result and
# start it. Until then the tutorial runs against `ward demo`'s own config.

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

# --- deploy
# TODO(issue 19, item 4): from here to a protected deployment with Prometheus and
# Grafana (deploy/compose) goes here.
