#!/usr/bin/env python3
"""Generate deploy/grafana/ward-dashboard.json (Grafana 10+ schema, importable).

Every expression here is checked by tests/deploy.rs against the metrics a running gateway
exports, so a renamed metric breaks the build instead of a panel. Usage:
    python3 tools/gen_dashboard.py > deploy/grafana/ward-dashboard.json
"""
import json

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

panels = []


def panel(title, exprs, unit="short", kind="timeseries", w=12, h=8, desc=""):
    i = len(panels)
    targets = [
        {"datasource": DS, "expr": e, "legendFormat": legend, "refId": chr(65 + n)}
        for n, (e, legend) in enumerate(exprs)
    ]
    panels.append({
        "id": i + 1,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": (i % 2) * 12 if w == 12 else 0, "y": (i // 2) * h, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": targets,
    })


panel("Requests by route and status class",
      [("sum by (route, status) (rate(ward_requests_total[5m]))", "{{route}} {{status}}")], "reqps")
panel("Latency p50 / p99 by route",
      [("histogram_quantile(0.5, sum by (le, route) (rate(ward_request_duration_seconds_bucket[5m])))", "p50 {{route}}"),
       ("histogram_quantile(0.99, sum by (le, route) (rate(ward_request_duration_seconds_bucket[5m])))", "p99 {{route}}")], "s")
panel("Upstream errors",
      [("sum by (upstream, kind) (rate(ward_upstream_errors_total[5m]))", "{{upstream}} {{kind}}"),
       ("min by (upstream) (ward_upstream_up)", "up {{upstream}}")])
panel("Upstream latency p99",
      [("histogram_quantile(0.99, sum by (le, upstream) (rate(ward_upstream_duration_seconds_bucket[5m])))", "{{upstream}}")], "s")
panel("Authentication denials by code",
      [("sum by (route, code) (rate(ward_authn_total{result!=\"ok\"}[5m]))", "{{route}} {{code}}")], "reqps")
panel("FHIR authorization denials by code",
      [("sum by (route, code) (rate(ward_fhir_authz_total{decision!=\"allow\"}[5m]))", "{{route}} {{code}}")], "reqps")
panel("Rate-limited and shed requests",
      [("sum by (route, limit) (rate(ward_rate_limited_total[5m]))", "429 {{route}} {{limit}}"),
       ("sum by (upstream) (rate(ward_upstream_shed_total[5m]))", "shed {{upstream}}"),
       ("sum by (policy, kind) (rate(ward_rate_limit_backend_errors_total[5m]))", "redis {{policy}} {{kind}}")], "reqps")
panel("Validation failures by route and kind",
      [("sum by (route, kind) (rate(ward_validation_failures_total[5m]))", "{{route}} {{kind}}")], "reqps")
panel("DLP findings by detector and action",
      [("sum by (detector, action) (rate(ward_dlp_findings_total[5m]))", "{{detector}} {{action}}")], "short",
      desc="PHI found in bodies (counts, never values); a rising `block` or a new detector is worth a look.")
panel("DLP outcomes by route",
      [("sum by (route, direction, outcome) (rate(ward_dlp_messages_total[5m]))", "{{route}} {{direction}} {{outcome}}")], "reqps")
panel("Incident response: signals, blocks, break-glass",
      [("sum by (signal, action) (increase(ward_signals_total[5m]))", "signal {{signal}} {{action}}"),
       ("ward_blocks_active", "blocks in force"),
       ("sum by (kind) (rate(ward_blocked_total[5m]))", "refused {{kind}}"),
       ("sum by (route) (increase(ward_break_glass_total[5m]))", "break-glass {{route}}"),
       ("sum by (result) (rate(ward_notifications_total[5m]))", "notifications {{result}}")], "short",
      desc="Breach signals fired and what Ward did; emergency accesses; notification delivery.")
panel("Refusals by code",
      [("sum by (code) (rate(ward_rejections_total[5m]))", "{{code}}")], "reqps")
panel("TLS handshake failures",
      [("sum by (listener, reason) (rate(ward_tls_handshake_failures_total[5m]))", "{{listener}} {{reason}}")])
panel("Certificate expiry (days)",
      [("min by (listener, kind, file) (ward_certificate_expiry_days)", "{{listener}} {{kind}} {{file}}")], "d", "stat")
panel("MLLP messages by result",
      [("sum by (listener, type, result) (rate(ward_mllp_messages_total[5m]))", "{{listener}} {{type}} {{result}}")])
panel("MLLP ACKs sent",
      [("sum by (listener, code) (rate(ward_mllp_acks_total[5m]))", "{{listener}} {{code}}"),
       ("sum by (listener, reason) (rate(ward_mllp_frame_errors_total[5m]))", "framing {{listener}} {{reason}}")])
panel("Audit trail",
      [("ward_audit_backlog", "backlog"),
       ("sum by (result) (rate(ward_audit_records_total[5m]))", "{{result}}"),
       ("rate(ward_audit_write_errors_total[5m])", "write errors")])
panel("Connections",
      [("sum by (listener) (ward_active_connections)", "http {{listener}}"),
       ("sum by (listener) (ward_mllp_active_connections)", "mllp {{listener}}")])
# DLP findings get a panel with the DLP policy (issue #7): a panel on a metric that no
# gateway exports would only ever show "no data".

dashboard = {
    "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                  "pluginId": "prometheus", "pluginName": "Prometheus"}],
    "title": "Ward gateway",
    "uid": "ward-gateway",
    "tags": ["ward", "fhir", "hl7"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [{"name": "DS_PROMETHEUS", "type": "datasource", "query": "prometheus"}]},
    "panels": panels,
}
print(json.dumps(dashboard, indent=2))
