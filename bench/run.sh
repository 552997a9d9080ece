#!/usr/bin/env bash
# Side-by-side benchmark of Switchyard, HAProxy and nginx on loopback.
#
#   bench/run.sh                      # full run (about 25 minutes)
#   bench/run.sh --runs 1 --seconds 5 # a quick look
#   bench/run.sh --only storm         # only the reload-under-load comparison
#   bench/run.sh --only dns           # only the DNS convergence figure
#   bench/run.sh --only consul        # only the Consul convergence figure
#   bench/run.sh --only fleet         # only the fleet model: 1,000 sidecars' watches on one Consul (about 2 minutes)
#   bench/run.sh --only templates     # only the template (KV to route) figure
#   bench/run.sh --only tls           # only TLS: HTTPS, handshakes, idle memory, certificate swap
#   bench/run.sh --only upgrade       # only binary upgrades under load, beside HAProxy -W and nginx reloads
#   bench/run.sh --only access_log    # only access logs on vs off, beside HAProxy's and nginx's, and the writer's ceiling
#   bench/run.sh --only soak          # only the 30-minute soak under load and faults (bench/soak.rs)
#
# Installs what it needs with apt-get when missing, builds Switchyard in
# release mode, and writes the report to bench/results/latest.md. Do not run
# it while the test suite runs: both want the two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The DNS convergence figure needs no other proxy: an in-process DNS server,
# Switchyard and backends (bench/dns_convergence.rs).
dns_convergence() {
  mkdir -p bench/results
  cargo bench --bench dns_convergence | tee bench/results/dns.md
}
# Likewise Consul: the Consul-compatible test server (bench/consul_convergence.rs).
consul_convergence() {
  mkdir -p bench/results
  cargo bench --bench consul_convergence | tee bench/results/consul.md
}
# And templates: KV change to routing, kv directory and Consul KV
# (bench/template_convergence.rs).
template_convergence() {
  mkdir -p bench/results
  cargo bench --bench template_convergence | tee bench/results/templates.md
}
# The soak: the release binary for 30 minutes under mixed load while the
# config, DNS and Consul change and Consul restarts (bench/soak.rs); exits
# non-zero when a bound is broken.
if [ "${1:-}" = "--only" ] && [ "${2:-}" = "soak" ]; then
  mkdir -p bench/results
  shift 2
  cargo bench --bench soak -- "$@" | tee bench/results/soak.md
  exit "${PIPESTATUS[0]}"
fi
# The fleet model: 1,000 in-process sidecars' watches against the test
# Consul server, reductions off and on (bench/fleet.rs).
if [ "${1:-}" = "--only" ] && [ "${2:-}" = "fleet" ]; then
  mkdir -p bench/results
  cargo bench --bench fleet | tee bench/results/fleet.md
  exit "${PIPESTATUS[0]}"
fi
if [ "${1:-}" = "--only" ] && [ "${2:-}" = "templates" ]; then
  template_convergence
  exit 0
fi
if [ "${1:-}" = "--only" ] && [ "${2:-}" = "dns" ]; then
  dns_convergence
  exit 0
fi
if [ "${1:-}" = "--only" ] && [ "${2:-}" = "consul" ]; then
  consul_convergence
  exit 0
fi

cargo build --release --bin switchyard
if [ "${1:-}" = "--only" ] && [ "${2:-}" = "upgrade" ]; then
  shift 2
  python3 bench/upgrade_bench.py "$@"
  exit 0
fi
if [ "${1:-}" = "--only" ] && [ "${2:-}" = "access_log" ]; then
  shift 2
  python3 bench/access_log_bench.py "$@"
  cargo bench --bench access_log_writer | tee bench/results/access_log_writer.md
  exit 0
fi
if [ "${1:-}" = "--only" ] && [ "${2:-}" = "tls" ]; then
  shift 2
  python3 bench/tls_bench.py "$@"
  exit 0
fi
python3 bench/bench.py "$@"
case " $* " in
  *" --only "*) ;;
  *) dns_convergence; consul_convergence; template_convergence ;;
esac
