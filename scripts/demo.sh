#!/usr/bin/env bash
# `make demo`: Kafka + the worker with embedded ClickHouse, about a minute of simulated traffic in three
# workspaces (shops), one of them sending to a bad list, then reports and the deliverability alert.
#   DEMO_MESSAGES (default 20000) and DEMO_SECONDS (default 60) size the run; DEMO_KEEP=1 leaves the
#   worker running afterwards (its report API answers on SENDTRACK_WEB_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
run="demo-$(date +%Y%m%d-%H%M%S)"
export SENDTRACK_TOPIC_PREFIX="$run."
export SENDTRACK_APP_ID="sendtrack-$run"
export SENDTRACK_DATA_DIR="${SENDTRACK_DATA_DIR:-$PWD/data}/$run"
export SENDTRACK_WEB_PORT="${SENDTRACK_WEB_PORT:-6066}"
messages="${DEMO_MESSAGES:-20000}"
seconds="${DEMO_SECONDS:-60}"
api="http://127.0.0.1:$SENDTRACK_WEB_PORT"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

started_kafka=0
if ! scripts/kafka/kafka.sh status >/dev/null 2>&1; then
  scripts/kafka/kafka.sh up
  started_kafka=1
fi
worker_pid=""
cleanup() {
  if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
    echo "demo: stopping the worker"
    kill -TERM "$worker_pid"; wait "$worker_pid" 2>/dev/null || true
  fi
  if [ "$started_kafka" = 1 ]; then scripts/kafka/kafka.sh down; fi
}
trap cleanup EXIT

if (exec 3<>"/dev/tcp/127.0.0.1/$SENDTRACK_WEB_PORT") 2>/dev/null; then
  echo "demo: port $SENDTRACK_WEB_PORT is taken; set SENDTRACK_WEB_PORT to a free port" >&2
  exit 1
fi

say "starting the worker ($run): status engine, ClickHouse sink, web server on $api"
mkdir -p "$SENDTRACK_DATA_DIR"
$bin/sendtrack worker >"$SENDTRACK_DATA_DIR/worker.log" 2>&1 &
worker_pid=$!
for i in $(seq 1 120); do
  if curl -sf "$api/health" >/dev/null 2>&1; then break; fi
  kill -0 "$worker_pid" 2>/dev/null || { echo "demo: the worker exited:"; tail -n 20 "$SENDTRACK_DATA_DIR/worker.log"; exit 1; }
  sleep 0.5
done
curl -sf "$api/health" >/dev/null || { echo "demo: the worker did not become healthy"; exit 1; }
echo "worker is up (log: $SENDTRACK_DATA_DIR/worker.log)"
echo "dashboard: $api/dashboard   (open it now: it fills up live while the simulation runs)"

workspaces="shop-hanoi,shop-saigon,shop-danang"
say "simulating $messages sends over ${seconds}s in three workspaces ($workspaces; shop-danang's email list has gone bad)"
echo "(all twelve actions, duplicates, reordering, orphans, malformed records)"
$bin/sendtrack simulate --messages "$messages" --duration "$seconds" --run-id "$run" --workspaces "$workspaces" \
  --bouncy shop-danang

say "waiting for the pipeline to catch up"
$bin/python - "$api" <<'PY'
import json, sys, time, urllib.request
api = sys.argv[1]
def q(sql):
    url = api + "/query?" + urllib.parse.urlencode({"q": sql})
    return json.loads(urllib.request.urlopen(url, timeout=30).read())["rows"][0][0]
import urllib.parse
last, stable, start = -1, 0, time.monotonic()
while time.monotonic() - start < 180:
    n = q("SELECT count() FROM sendtrack.status_changes_raw")
    stable = stable + 1 if n == last else 0
    last = n
    print(f"\r  status changes in ClickHouse: {n:,}", end="", flush=True)
    if stable >= 4:
        break
    time.sleep(1)
print()
PY

say "funnel by action, all workspaces"
$bin/sendtrack report funnel
say "each workspace"
$bin/python - "$api" <<'PY'
import json, sys, urllib.parse, urllib.request
api = sys.argv[1]
def report(name, **params):
    return json.loads(urllib.request.urlopen(f"{api}/reports/{name}?{urllib.parse.urlencode(params)}", timeout=60).read())
workspaces = json.loads(urllib.request.urlopen(f"{api}/dashboard/api/choices", timeout=60).read())["workspace"]
print(f"  {'workspace':<14} {'messages':>9} {'delivered':>10} {'email bounced':>14}")
for w in workspaces:
    funnel = report("funnel", workspace=w)
    col = {c: i for i, c in enumerate(funnel["columns"])}
    total = sum(r[col["messages"]] for r in funnel["rows"])
    delivered = sum(r[col["delivered"]] for r in funnel["rows"])
    email = next((r for r in funnel["rows"] if r[col["action"]] == "email"), None)
    bounced = f"{email[col['bounced']] / email[col['messages']]:.1%}" if email and email[col["messages"]] else "-"
    print(f"  {w:<14} {total:>9,} {delivered:>10,} {bounced:>14}")
PY
say "deliverability alerts (the deliverability-alerts topic: each state change of a rate, once)"
for i in $(seq 1 30); do  # the worker judges the rates again after each insert
  if $bin/sendtrack alerts --format json 2>/dev/null | grep -q '"state":"critical"'; then break; fi
  sleep 1
done
$bin/sendtrack alerts > "$SENDTRACK_DATA_DIR/alerts.txt" 2>/dev/null || true
# The senders' reputation: email bounces and complaints over the last 24 hours (SES and Gmail watch those).
grep -E "email via .*(bounce|complaint) rate over 24h" "$SENDTRACK_DATA_DIR/alerts.txt" || echo "  (no email alert)"
others="$(grep -cvE "email via .*(bounce|complaint) rate over 24h" "$SENDTRACK_DATA_DIR/alerts.txt" || true)"
echo "  ($others more on other rates, periods and channels: sendtrack alerts)"
say "current status (Vietnamese labels)"
$bin/sendtrack report status --lang vi
say "top failure reasons"
$bin/sendtrack report failures | head -n 14
say "latency (seconds)"
$bin/sendtrack report latency
customer="$(curl -sf --get "$api/query" --data-urlencode "q=SELECT customer_id FROM sendtrack.messages WHERE workspace_id = 'shop-hanoi' GROUP BY customer_id ORDER BY count() DESC, customer_id LIMIT 1" | $bin/python -c 'import json,sys; print(json.load(sys.stdin)["rows"][0][0])')"
say "customer activity of $customer in shop-hanoi"
$bin/sendtrack report customer "$customer" --workspace shop-hanoi
say "dead letters"
curl -sf --get "$api/query" --data-urlencode "q=SELECT error_type, count() AS n FROM sendtrack.dead_letters GROUP BY error_type ORDER BY n DESC" \
  | $bin/python -c 'import json,sys; [print(f"  {t:<20} {n}") for t, n in json.load(sys.stdin)["rows"]]'

if [ "${DEMO_KEEP:-0}" = 1 ]; then
  trap - EXIT
  say "the worker keeps running (pid $worker_pid)"
  echo "reports:  SENDTRACK_WEB_PORT=$SENDTRACK_WEB_PORT $bin/sendtrack report funnel"
  echo "dashboard: $api/dashboard"
  echo "API:      $api/reports/funnel   SQL: $api/query?q=SELECT+..."
  echo "ClickHouse HTTP (DBeaver, Grafana, clickhouse-connect): http://127.0.0.1:${SENDTRACK_CLICKHOUSE_HTTP_PORT:-8123}"
  echo "stop it:  kill $worker_pid"
else
  say "done. DEMO_KEEP=1 make demo leaves the worker running for you to explore (dashboard: $api/dashboard)."
fi
