#!/usr/bin/env bash
# User-space instructions per proxied request (callgrind): a steadier figure
# than req/s on a busy machine.
#
#   bench/callgrind.sh [CONNECTIONS]      # default 64
#
# Needs valgrind, nginx and wrk (apt-get install valgrind nginx wrk); uses
# the release binary, ports 18080 (an nginx backend) and 18090. Every
# process it starts is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-64}
WORK=$(mktemp -d)
cat > "$WORK/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/backend.pid;
error_log $WORK/backend-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:18080 backlog=4096;
        location = / { return 200 "ok\n"; }
    }
}
CONF
cat > "$WORK/sy.toml" <<CONF
[admin]
bind = "127.0.0.1:0"
[[listeners]]
name = "http"
bind = "127.0.0.1:18090"
default_backend = "be"
[[backends]]
name = "be"
servers = ["127.0.0.1:18080"]
CONF
cargo build --release --bin switchyard
nginx -c "$WORK/backend.conf" > /dev/null 2>&1 &
NGINX=$!
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
  "${SWITCHYARD_BIN:-target/release/switchyard}" --log-level warn run -c "$WORK/sy.toml" --no-watch --threads 1 \
  > "$WORK/sy.log" 2>&1 &
VG=$!
trap 'kill $VG $NGINX 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18090/ && break; sleep 0.2; done
wrk -t1 -c"$CONNS" -d3s http://127.0.0.1:18090/ > /dev/null   # warm up
callgrind_control -i on $VG > /dev/null
OUT=$(wrk -t1 -c"$CONNS" -d5s http://127.0.0.1:18090/)
callgrind_control -i off $VG > /dev/null
N=$(echo "$OUT" | grep -oE '^ +[0-9]+ requests' | grep -oE '[0-9]+')
kill $VG; wait $VG 2>/dev/null || true
TOTAL=$(grep -E '^totals:' "$WORK"/cg.out* | head -1 | awk '{print $2}')
echo "connections=$CONNS requests=$N instructions=$TOTAL per_request=$((TOTAL / N))"
