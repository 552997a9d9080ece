#!/usr/bin/env python3
"""Side-by-side load benchmark: Switchyard against HAProxy and nginx.

Run through bench/run.sh, which installs the tools and builds Switchyard.
Everything listens on loopback; every load loop is bounded by wrk's -d or
by an explicit duration, and every process started here is stopped by PID.

Series: one worker per proxy, then all cores. Cases: keep-alive at 64 and
256 connections, a new connection per request, 16 KiB responses, TCP mode.
Runs alternate between targets; each figure is the median of RUNS runs.
Then the reconfiguration storm: 30 s of load while each proxy reloads.

Shape (the same for every proxy, stated in the report): --backends 3
(default) balances round robin over three backend ports of the one nginx
backend worker, --backends 1 sends everything to one; --forwarding on
(default) makes every proxy add X-Forwarded-For, -Proto and -Host,
--forwarding off none of them.
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# SWITCHYARD_BIN runs another build (a profiling or experimental one).
SWITCHYARD = Path(os.environ.get("SWITCHYARD_BIN", ROOT / "target" / "release" / "switchyard"))

BACKEND_PORT = 18080
# The backend listens on these; a run balances over the first --backends.
BACKEND_PORTS = [18080, 18081, 18082]
# The reload storm's second config adds this one.
BACKEND2_PORT = 18083
PORTS = {
    "switchyard": {"http": 18090, "tcp": 18091, "admin": 18099},
    "haproxy": {"http": 18092, "tcp": 18093},
    "nginx": {"http": 18094, "tcp": 18095},
}
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The shape every proxy is given (see the module doc).
SHAPE = {"backends": 3, "forwarding": True}


def backend_ports():
    return BACKEND_PORTS[: SHAPE["backends"]]


# CPU placement for the one-worker series: each proxy on its own core, the
# load generator and the backend on the other, so a proxy never competes with
# wrk for its core and runs are comparable. Empty = let the kernel place.
PIN = {"proxy": [], "load": []}


def pinned(role, args):
    cpus = PIN[role]
    return (["taskset", "-c", ",".join(map(str, cpus))] + args) if cpus else args


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# === processes ===


STARTED = []  # every Proc, so a failure part-way still stops them all


class Proc:
    """A server started here, stopped by its PID when the bench ends."""

    def __init__(self, name, args, workdir, env=None):
        STARTED.append(self)
        self.name = name
        self.log = open(workdir / f"{name}.log", "w")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.args = args

    def pids(self):
        """This process and its children (nginx workers, haproxy worker)."""
        out = {self.p.pid}
        try:
            kids = Path(f"/proc/{self.p.pid}/task/{self.p.pid}/children").read_text().split()
            out.update(int(k) for k in kids)
        except OSError:
            pass
        return out

    def cpu_seconds(self):
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError):
                pass
        return total / CLK_TCK

    def signal(self, sig):
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)

    def stop(self):
        if self.log.closed:
            return
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def wait_port(port, timeout=10):
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


# === configs ===


def backend_conf(workdir):
    www = workdir / "www"
    www.mkdir(exist_ok=True)
    (www / "16k").write_bytes(b"x" * 16384)
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/backend.pid;
error_log {workdir}/backend-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{BACKEND_PORTS[0]} backlog=4096 reuseport;
        listen 127.0.0.1:{BACKEND_PORTS[1]} backlog=4096 reuseport;
        listen 127.0.0.1:{BACKEND_PORTS[2]} backlog=4096 reuseport;
        listen 127.0.0.1:{BACKEND2_PORT} backlog=4096 reuseport;
        root {www};
        location = / {{ return 200 "ok\\n"; }}
        location = /16k {{ }}
    }}
}}
"""


def switchyard_conf(variant="a"):
    servers = [f"127.0.0.1:{port}" for port in backend_ports()]
    if variant == "b":
        servers.append(f"127.0.0.1:{BACKEND2_PORT}")
    p = PORTS["switchyard"]
    server_list = ", ".join(f'"{s}"' for s in servers)
    return f"""
[admin]
bind = "127.0.0.1:{p['admin']}"

[[listeners]]
name = "http"
bind = "127.0.0.1:{p['http']}"
default_backend = "be_{variant}"
{"" if SHAPE["forwarding"] else "forwarded_headers = false"}

[[listeners]]
name = "tcp"
bind = "127.0.0.1:{p['tcp']}"
mode = "tcp"
default_backend = "be_{variant}"

[[routes]]
listener = "http"
path_prefix = "/{variant}-only/"
backend = "be_{variant}"

[[backends]]
name = "be_{variant}"
servers = [{server_list}]
"""


def haproxy_conf(workdir, threads, expose_fd=False):
    p = PORTS["haproxy"]
    servers = "\n".join(f"    server s{i} 127.0.0.1:{port}" for i, port in enumerate(backend_ports()))
    forwarding = ""
    if SHAPE["forwarding"]:
        # The three headers Switchyard adds.
        forwarding = ("    option forwardfor\n"
                      "    http-request set-header X-Forwarded-Proto http\n"
                      "    http-request set-header X-Forwarded-Host %[req.hdr(host)]\n")
    stats = ""
    if expose_fd:
        stats = f"    stats socket {workdir}/haproxy.sock mode 600 level admin expose-fd listeners\n"
    return f"""
global
    nbthread {threads}
    maxconn 8000
{stats}
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always

frontend fe_http
    bind 127.0.0.1:{p['http']}
{forwarding}    default_backend be_http

backend be_http
    balance roundrobin
{servers}

listen tcp
    mode tcp
    bind 127.0.0.1:{p['tcp']}
    balance roundrobin
{servers}
"""


def nginx_conf(workdir, workers):
    p = PORTS["nginx"]
    servers = "\n".join(f"        server 127.0.0.1:{port};" for port in backend_ports())
    forwarding = ""
    if SHAPE["forwarding"]:
        forwarding = ("            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
                      "            proxy_set_header X-Forwarded-Proto $scheme;\n"
                      "            proxy_set_header X-Forwarded-Host $host;\n")
    return f"""
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes {workers};
daemon off;
pid {workdir}/nginx-proxy.pid;
error_log {workdir}/nginx-proxy-error.log warn;
events {{ worker_connections 8000; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    upstream be {{
{servers}
        keepalive 1024;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{p['http']} backlog=4096;
        location / {{
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{forwarding}        }}
    }}
}}
stream {{
    upstream be_tcp {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{p['tcp']};
        proxy_pass be_tcp;
    }}
}}
"""


# === starting the contenders ===


def start_switchyard(workdir, threads):
    conf = workdir / "switchyard.toml"
    conf.write_text(switchyard_conf("a"))
    args = [str(SWITCHYARD), "--log-level", "warn", "run", "-c", str(conf), "--no-watch"]
    if threads:
        args += ["--threads", str(threads)]
    proc = Proc("switchyard", pinned("proxy", args), workdir)
    wait_port(PORTS["switchyard"]["http"])
    return proc


def start_haproxy(workdir, threads, master_worker=False, expose_fd=False):
    conf = workdir / "haproxy.cfg"
    conf.write_text(haproxy_conf(workdir, threads, expose_fd))
    args = ["haproxy", "-f", str(conf)]
    args += ["-W", "-db"] if master_worker else ["-db"]
    proc = Proc("haproxy", pinned("proxy", args), workdir)
    wait_port(PORTS["haproxy"]["http"])
    return proc


def start_nginx(workdir, workers):
    conf = workdir / "nginx-proxy.conf"
    conf.write_text(nginx_conf(workdir, workers))
    args = ["nginx", "-c", str(conf), "-e", str(workdir / "nginx-proxy-error.log")]
    proc = Proc("nginx-proxy", pinned("proxy", args), workdir)
    wait_port(PORTS["nginx"]["http"])
    return proc


# === wrk ===

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


# wrk prints 50/75/90/99 %; the Lua `done` hook prints the 99.9th too.
WRK_LUA = """
done = function(summary, latency, requests)
  io.write(string.format("p99.9 %d\\n", latency:percentile(99.9)))
end
"""


def parse_wrk(out):
    def num(pattern, default=0.0):
        m = re.search(pattern, out)
        return float(m.group(1)) if m else default

    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(value) * UNITS[unit]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(x) for x in m.groups()) if m else 0
    p999 = re.search(r"^p99\.9 (\d+)$", out, re.M)
    return {
        "p999": int(p999.group(1)) / 1000 if p999 else float("nan"),
        "rps": num(r"Requests/sec:\s+([\d.]+)"),
        "requests": int(num(r"(\d+) requests in")),
        "p50": lat.get("50", float("nan")),
        "p99": lat.get("99", float("nan")),
        "non2xx": int(num(r"Non-2xx or 3xx responses: (\d+)")),
        "errors": socket_errors,
    }


def wrk(port, path, conns, seconds, close=False):
    script = Path(tempfile.gettempdir()) / "switchyard-wrk-p999.lua"
    if not script.exists():
        script.write_text(WRK_LUA)
    args = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s", "-s", str(script)]
    if close:
        args += ["-H", "Connection: close"]
    args.append(f"http://127.0.0.1:{port}{path}")
    args = pinned("load", args)
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60).stdout
    return parse_wrk(out)


CASES = [
    # name, path, connections, new connection per request, mode
    ("keep-alive, 64 conns", "/", 64, False, "http"),
    ("keep-alive, 256 conns", "/", 256, False, "http"),
    ("new conn per request, 64", "/", 64, True, "http"),
    ("16 KiB body, 64 conns", "/16k", 64, False, "http"),
    ("TCP mode, 64 conns", "/", 64, False, "tcp"),
]


def port_of(target, mode):
    if target == "direct":
        return BACKEND_PORTS[0]
    return PORTS[target][mode]


def run_series(workdir, procs, runs, seconds, label):
    """Alternating runs of every case on every target: medians, and every
    run's measurements (for the per-run comparison)."""
    results = {}  # (case, target) -> list of measurements
    targets = ["direct", "switchyard", "haproxy", "nginx"]
    for r in range(runs):
        # The order rotates from run to run, so no target always runs right
        # after another one (the direct run loads the backend hardest).
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for case in CASES:
            name, path, conns, close, mode = case
            for target in order:
                proc = procs.get(target)
                cpu0 = proc.cpu_seconds() if proc else 0
                m = wrk(port_of(target, mode), path, conns, seconds, close)
                m["cpu_us"] = ((proc.cpu_seconds() - cpu0) * 1e6 / m["requests"]) if proc and m["requests"] else float("nan")
                results.setdefault((name, target), []).append(m)
                log(f"[{label}] run {r + 1}/{runs} {name:28} {target:10} {m['rps']:>10.0f} req/s  p99 {m['p99']:.2f} ms  errors {m['errors'] + m['non2xx']}")
    med = {}
    for key, ms in results.items():
        med[key] = {k: statistics.median([m[k] for m in ms]) for k in ("rps", "p50", "p99", "p999", "cpu_us")}
        med[key]["failed"] = sum(m["errors"] + m["non2xx"] for m in ms)
    return med, results


def series_table(med, title):
    lines = [f"### {title}", "",
             "| case | target | req/s | vs HAProxy | p50 ms | p99 ms | p99.9 ms | proxy CPU µs/req | failed |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, *_ in CASES:
        base = med[(name, "haproxy")]["rps"]
        for target in ["direct", "switchyard", "haproxy", "nginx"]:
            m = med[(name, target)]
            ratio = f"{m['rps'] / base:.2f}" if target != "direct" and base else "—"
            cpu = "—" if m["cpu_us"] != m["cpu_us"] else f"{m['cpu_us']:.1f}"
            lines.append(f"| {name} | {target} | {m['rps']:.0f} | {ratio} | {m['p50']:.2f} | {m['p99']:.2f} | {m['p999']:.2f} | {cpu} | {m['failed']} |")
    return "\n".join(lines) + "\n"


def per_run_table(results, runs):
    """Switchyard against HAProxy run by run (both measured minutes apart in
    the same rotation): a median can hide how often each was ahead."""
    lines = ["Switchyard vs HAProxy, run by run (req/s ratio; p99 Switchyard / HAProxy ms):", "",
             "| case | " + " | ".join(f"run {r + 1}" for r in range(runs)) + " | ahead in | p99 lower or equal in |",
             "|---|" + "---:|" * runs + "---:|---:|"]
    for name, *_ in CASES:
        sy, ha = results[(name, "switchyard")], results[(name, "haproxy")]
        pairs = list(zip(sy, ha))
        cells = [f"{a['rps'] / b['rps']:.2f} ({a['p99']:.2f} / {b['p99']:.2f})" if b["rps"] else "—" for a, b in pairs]
        ahead = sum(a["rps"] >= b["rps"] for a, b in pairs)
        p99_ok = sum(a["p99"] <= b["p99"] for a, b in pairs)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ahead} of {len(pairs)} | {p99_ok} of {len(pairs)} |")
    return "\n".join(lines) + "\n"


# === reconfiguration under load ===


def reload_storm(workdir, seconds, threads):
    rows = []

    def under_load(name, port, reload_every, do_reload):
        result = {}

        def load():
            result.update(wrk(port, "/", 64, seconds))

        import threading

        t = threading.Thread(target=load)
        t.start()
        time.sleep(0.5)  # let wrk connect
        reloads = 0
        deadline = time.time() + seconds - 1.0
        while time.time() < deadline:
            do_reload(reloads)
            reloads += 1
            time.sleep(reload_every)
        t.join()
        failed = result.get("errors", 0) + result.get("non2xx", 0)
        rows.append((name, reloads, result.get("requests", 0), failed, result.get("rps", 0)))
        log(f"[reload] {name:45} reloads {reloads:4}  requests {result.get('requests', 0):8}  failed {failed}")

    # Switchyard: config swapped 10 times a second, routes and servers change.
    sy = start_switchyard(workdir, threads)
    conf = workdir / "switchyard.toml"
    admin = PORTS["switchyard"]["admin"]
    variants = [switchyard_conf("b"), switchyard_conf("a")]

    def sy_reload(i):
        conf.write_text(variants[i % 2])
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/reload", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read().decode()
            if '"success"' not in body:
                raise SystemExit(f"switchyard reload did not apply: {body}")

    under_load("Switchyard, config swap every 100 ms", PORTS["switchyard"]["http"], 0.1, sy_reload)
    sy.stop()

    for expose in (False, True):
        hp = start_haproxy(workdir, threads, master_worker=True, expose_fd=expose)
        label = "HAProxy -W reload every 1 s" + (", expose-fd listeners" if expose else "")
        under_load(label, PORTS["haproxy"]["http"], 1.0, lambda i: hp.signal(signal.SIGUSR2))
        hp.stop()

    ng = start_nginx(workdir, threads)
    under_load("nginx -s reload every 1 s", PORTS["nginx"]["http"], 1.0, lambda i: ng.signal(signal.SIGHUP))
    ng.stop()

    lines = [f"### Reconfiguration under load ({seconds} s, 64 keep-alive connections)", "",
             "| proxy | reloads | requests | failed or non-2xx |", "|---|---:|---:|---:|"]
    for name, reloads, reqs, failed, _ in rows:
        lines.append(f"| {name} | {reloads} | {reqs} | {failed} |")
    return "\n".join(lines) + "\n"


def versions():
    def first_line(args):
        try:
            out = subprocess.run(args, capture_output=True, text=True)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "not found"

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return [
        f"- machine: {os.cpu_count()} cores, {cpu}, kernel {os.uname().release}",
        f"- {first_line([str(SWITCHYARD), '--version'])} (release build, fat LTO)",
        f"- {first_line(['haproxy', '-v'])}",
        f"- {first_line(['nginx', '-v'])}",
        f"- {first_line(['wrk', '--version'])}",
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--storm-seconds", type=int, default=30)
    ap.add_argument("--only", choices=["series", "storm"], help="run one part")
    ap.add_argument("--cases", help="comma-separated case numbers (1-based) to run")
    ap.add_argument("--one-worker-only", action="store_true", help="skip the all-cores series")
    ap.add_argument("--pin", action="store_true",
                    help="pin one-worker proxies to core 1, wrk and the backend to core 0 (steadier, but the "
                         "shared load core then caps throughput near the proxies' figures)")
    ap.add_argument("--backends", type=int, choices=[1, 3], default=3,
                    help="backend ports balanced round robin by every proxy")
    ap.add_argument("--forwarding", choices=["on", "off"], default="on",
                    help="X-Forwarded-For/-Proto/-Host added by every proxy, or by none")
    ap.add_argument("--threads", type=int, help="the all-cores series' worker count (default: cores)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.md")
    args = ap.parse_args()
    SHAPE["backends"] = args.backends
    SHAPE["forwarding"] = args.forwarding == "on"

    if args.cases:
        keep = [int(c) - 1 for c in args.cases.split(",")]
        CASES[:] = [CASES[i] for i in keep]
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    # nginx workers run as an unprivileged user and must read the files.
    workdir.chmod(0o755)
    log(f"work dir {workdir}")
    (workdir / "backend.conf").write_text(backend_conf(workdir))
    ap_pin = args.pin and (os.cpu_count() or 1) >= 2
    if ap_pin:
        PIN["load"] = [0]
    backend_args = ["nginx", "-c", str(workdir / "backend.conf"), "-e", str(workdir / "backend-error.log")]
    backend = Proc("backend", pinned("load", backend_args), workdir)
    wait_port(BACKEND_PORT)
    report = ["# Benchmark run", "", *versions(), "",
              "Command: `python3 bench/bench.py " + " ".join(sys.argv[1:]) + "`", "",
              "CPU placement: " + ("one-worker proxies on core 1, wrk and the backend on core 0 (taskset)" if ap_pin else "unpinned"),
              f"Shape: {args.backends} backend port(s), round robin, one nginx worker behind; forwarding headers "
              + ("on for every proxy (X-Forwarded-For, -Proto, -Host)" if SHAPE["forwarding"] else "off for every proxy"), ""]
    try:
        if args.only in (None, "series"):
            cores = args.threads or os.cpu_count()
            series = [(1, "one worker each"), (cores, f"all cores ({cores} workers each)")]
            if args.one_worker_only:
                series = series[:1]
            for threads, label in series:
                # One worker: the proxy gets core 1 to itself. All cores: no pinning.
                PIN["proxy"] = [1] if (ap_pin and threads == 1) else []
                procs = {
                    "switchyard": start_switchyard(workdir, threads),
                    "haproxy": start_haproxy(workdir, threads),
                    "nginx": start_nginx(workdir, threads),
                }
                try:
                    med, results = run_series(workdir, procs, args.runs, args.seconds, label)
                finally:
                    for p in procs.values():
                        p.stop()
                report.append(series_table(med, f"{label} (wrk -t1, {args.seconds} s, median of {args.runs})"))
                report.append(per_run_table(results, args.runs))
                (args.out.parent).mkdir(parents=True, exist_ok=True)
                args.out.write_text("\n".join(report))
        if args.only in (None, "storm"):
            PIN["proxy"] = [1] if ap_pin else []
            report.append(reload_storm(workdir, args.storm_seconds, 1))
    finally:
        for proc in STARTED:
            proc.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report))
    print("\n".join(report))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
