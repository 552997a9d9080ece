#!/usr/bin/env bash
# Issue 15's trial with the real binary: three backend processes on
# 127.0.0.2-4 (Switchyard itself with a `respond` backend), a Switchyard in
# front with nothing but defaults (round robin, no health_check, no
# outlier), `wrk -t1 -c8 -d8s`; the backend on 127.0.0.3 is SIGKILLed after
# 3 s and started again after 5 s. Prints wrk's summary and the front's
# counters. Needs wrk (apt-get install wrk) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SWITCHYARD_BIN:-target/release/switchyard}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

backend() { # ip admin-port
  cat > "$work/b$1.toml" <<TOML
[admin]
bind = "127.0.0.1:$2"
[[listeners]]
name = "b"
bind = "$1:9101"
default_backend = "ok"
[[backends]]
name = "ok"
respond = { status = 200, body = "ok from $1\n" }
TOML
  "$bin" run -c "$work/b$1.toml" --no-watch >/dev/null 2>&1 &
  echo $!
}
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

pids+=("$(backend 127.0.0.2 19102)")
dead=$(backend 127.0.0.3 19103); pids+=("$dead")
pids+=("$(backend 127.0.0.4 19104)")
cat > "$work/front.toml" <<TOML
[admin]
bind = "127.0.0.1:19100"
[[listeners]]
name = "web"
bind = "127.0.0.1:18080"
default_backend = "web"
[[backends]]
name = "web"
servers = ["127.0.0.2:9101", "127.0.0.3:9101", "127.0.0.4:9101"]
TOML
"$bin" run -c "$work/front.toml" --no-watch >/dev/null 2>&1 &
pids+=("$!")
for ip in 127.0.0.2 127.0.0.3 127.0.0.4; do wait_port "$ip" 9101; done
wait_port 127.0.0.1 18080

wrk -t1 -c8 -d8s http://127.0.0.1:18080/ > "$work/wrk.txt" &
wrk_pid=$!
sleep 3
kill -9 "$dead"
echo "killed 127.0.0.3 at 3 s"
sleep 2
pids+=("$(backend 127.0.0.3 19103)")
echo "restarted 127.0.0.3 at 5 s"
wait "$wrk_pid"
cat "$work/wrk.txt"
curl -s 127.0.0.1:19100/metrics | grep -E '^switchyard_(upstream_connect_errors|upstream_retries|outlier_ejections)_total|^switchyard_http_requests_total\{.*5xx'
curl -s 127.0.0.1:19100/status | python3 -c '
import json,sys
for e in json.load(sys.stdin)["backends"][0]["endpoints"]:
    print(e["address"], "ejected" if e["ejected"] else "in rotation", e.get("ejection"))'
