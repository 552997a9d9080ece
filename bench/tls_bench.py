#!/usr/bin/env python3
"""TLS side by side: Switchyard (rustls, ring) against HAProxy and nginx
(OpenSSL), one worker each, terminating HTTPS in front of the same
one-worker nginx backend.

    python3 bench/tls_bench.py [--runs 3] [--seconds 5] [--out FILE]

Cases: keep-alive HTTPS at 64 and 256 connections (wrk); a full handshake
per request (wrk with `Connection: close`: wrk does not resume sessions);
resumed and full handshakes one after another (`openssl s_time -reuse` and
`-new`, one connection at a time); proxy CPU per request; memory per idle
TLS connection (2,000 connections, each having served one request); and a
certificate swap under load (Switchyard only: the certificate file is
replaced every second while wrk opens a new TLS connection per request).
Every proxy gets the same ECDSA P-256 certificate, TLS 1.2 and 1.3, session
tickets on, no forwarding headers. Runs alternate between targets; figures
are medians. Loopback only; every process is stopped by its PID; every load
loop is bounded by wrk's -d or s_time's -time.
"""

import argparse
import asyncio
import os
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402  (the shared process and wrk helpers)

PORTS = {"switchyard": 18443, "haproxy": 18444, "nginx": 18445, "switchyard-b": 18446}
ADMIN = {"switchyard": 18449, "switchyard-b": 18448}
TARGETS = ["switchyard", "haproxy", "nginx"]


def make_cert(workdir, name):
    key, cert = workdir / f"{name}.key", workdir / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "30", "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    combined = workdir / f"{name}.pem"
    combined.write_text(cert.read_text() + key.read_text())
    return combined


def switchyard_conf(workdir, name="switchyard"):
    return f"""
[admin]
bind = "127.0.0.1:{ADMIN[name]}"

[[listeners]]
name = "https"
bind = "127.0.0.1:{PORTS[name]}"
mode = "https"
default_backend = "be"
forwarded_headers = false
certs = [{{ cert = "{workdir}/site.pem" }}]

[[backends]]
name = "be"
servers = ["127.0.0.1:{B.BACKEND_PORT}"]
"""


def haproxy_conf(workdir):
    return f"""
global
    nbthread 1
    maxconn 8000
    tune.ssl.default-dh-param 2048
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:{PORTS['haproxy']} ssl crt {workdir}/site.pem alpn h2,http/1.1
    default_backend be
backend be
    server s0 127.0.0.1:{B.BACKEND_PORT}
"""


def nginx_conf(workdir):
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx-tls.pid;
error_log {workdir}/nginx-tls-error.log warn;
events {{ worker_connections 8000; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    ssl_protocols TLSv1.2 TLSv1.3;
    upstream be {{
        server 127.0.0.1:{B.BACKEND_PORT};
        keepalive 1024;
    }}
    server {{
        listen 127.0.0.1:{PORTS['nginx']} ssl http2 backlog=4096;
        ssl_certificate {workdir}/site.pem;
        ssl_certificate_key {workdir}/site.pem;
        location / {{
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start(workdir, also=None):
    procs = {}
    conf = workdir / "switchyard.toml"
    conf.write_text(switchyard_conf(workdir))
    procs["switchyard"] = B.Proc("switchyard", [str(B.SWITCHYARD), "--log-level", "warn", "run", "-c", str(conf), "--threads", "1"], workdir)
    if also:
        conf_b = workdir / "switchyard-b.toml"
        conf_b.write_text(switchyard_conf(workdir, "switchyard-b"))
        procs["switchyard-b"] = B.Proc("switchyard-b", [str(also), "--log-level", "warn", "run", "-c", str(conf_b), "--threads", "1"], workdir)
    (workdir / "haproxy.cfg").write_text(haproxy_conf(workdir))
    procs["haproxy"] = B.Proc("haproxy", ["haproxy", "-f", str(workdir / "haproxy.cfg"), "-db"], workdir)
    (workdir / "nginx-tls.conf").write_text(nginx_conf(workdir))
    procs["nginx"] = B.Proc("nginx-tls", ["nginx", "-c", str(workdir / "nginx-tls.conf"), "-e", str(workdir / "nginx-tls-error.log")], workdir)
    for name in procs:
        B.wait_port(PORTS[name])
    return procs


def wrk_https(port, conns, seconds, close):
    args = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s", "-H", "Host: bench.test"]
    if close:
        args += ["-H", "Connection: close"]
    args.append(f"https://127.0.0.1:{port}/")
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60).stdout
    return B.parse_wrk(out)


def s_time(port, seconds, reuse):
    args = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-www", "/", "-time", str(seconds),
            "-reuse" if reuse else "-new"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.findall(r"(\d+) connections in ([\d.]+)s", out)
    # s_time prints a line for the first (full) round and one for the timed round.
    if not m:
        return float("nan")
    conns, secs = m[-1]
    return int(conns) / float(secs) if float(secs) else float("nan")


def rss_kib(proc):
    total = 0
    for pid in proc.pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


async def open_idle_tls(port, count):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conns = []

    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="bench.test")
        w.write(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
        await w.drain()
        await r.readuntil(b"\r\n\r\n")
        return (r, w)

    for i in range(0, count, 200):
        conns += await asyncio.gather(*[one() for _ in range(min(200, count - i))])
    return conns


def idle_memory(procs, count):
    out = {}
    for name in TARGETS:
        proc = procs[name]
        before = rss_kib(proc)
        loop = asyncio.new_event_loop()
        conns = loop.run_until_complete(open_idle_tls(PORTS[name], count))
        time.sleep(1)
        after = rss_kib(proc)
        for _, w in conns:
            w.close()
        loop.run_until_complete(asyncio.sleep(0.5))
        loop.close()
        out[name] = (after - before) * 1024 / count
        B.log(f"idle TLS memory {name}: {out[name]:.0f} bytes per connection")
        time.sleep(2)
    return out


def swap_under_load(workdir, seconds):
    """wrk opens a new TLS connection per request against Switchyard while
    the certificate file is replaced every second (two certificates in
    turn, renamed over the file as renewal tools do)."""
    certs = [workdir / "site.pem", make_cert(workdir, "other")]
    texts = [c.read_text() for c in certs]
    args = ["wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout", "5s", "-H", "Host: bench.test", "-H", "Connection: close",
            f"https://127.0.0.1:{PORTS['switchyard']}/"]
    w = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    swaps = 0
    deadline = time.time() + seconds - 1
    while time.time() < deadline:
        time.sleep(1)
        tmp = workdir / "site.pem.tmp"
        tmp.write_text(texts[(swaps + 1) % 2])
        os.rename(tmp, workdir / "site.pem")
        swaps += 1
    out = w.communicate(timeout=seconds + 60)[0]
    m = B.parse_wrk(out)
    return swaps, m


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=B.ROOT / "bench" / "results" / "tls.md")
    ap.add_argument("--also", type=Path, help="a second Switchyard build (another crypto provider) as target switchyard-b")
    ap.add_argument("--skip-extras", action="store_true", help="no idle memory and no swap under load")
    args = ap.parse_args()
    if args.also:
        TARGETS.append("switchyard-b")
    for tool in ("wrk", "haproxy", "nginx", "openssl"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (bench/run.sh installs it)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-tls-bench-"))
    workdir.chmod(0o755)
    make_cert(workdir, "site")
    (workdir / "backend.conf").write_text(B.backend_conf(workdir))
    try:
        B.Proc("backend", ["nginx", "-c", str(workdir / "backend.conf"), "-e", str(workdir / "backend-error.log")], workdir)
        B.wait_port(B.BACKEND_PORT)
        procs = start(workdir, args.also)
        cases = [("keep-alive HTTPS, 64 conns", 64, False), ("keep-alive HTTPS, 256 conns", 256, False),
                 ("full handshake per request, 64 conns", 64, True)]
        results = {}
        for r in range(args.runs):
            order = TARGETS[r % len(TARGETS):] + TARGETS[:r % len(TARGETS)]
            for name, conns, close in cases:
                for t in order:
                    cpu0 = procs[t].cpu_seconds()
                    m = wrk_https(PORTS[t], conns, args.seconds, close)
                    m["cpu_us"] = (procs[t].cpu_seconds() - cpu0) * 1e6 / m["requests"] if m["requests"] else float("nan")
                    results.setdefault((name, t), []).append(m)
                    B.log(f"run {r + 1}/{args.runs} {name:38} {t:10} {m['rps']:>9.0f} req/s p99 {m['p99']:.2f} ms cpu {m['cpu_us']:.1f} us errors {m['errors'] + m['non2xx']}")
            for reuse, label in ((False, "s_time -new (full, one at a time)"), (True, "s_time -reuse (resumed, one at a time)")):
                for t in order:
                    rate = s_time(PORTS[t], args.seconds, reuse)
                    results.setdefault((label, t), []).append({"rps": rate, "p99": float("nan"), "cpu_us": float("nan"), "errors": 0, "non2xx": 0})
                    B.log(f"run {r + 1}/{args.runs} {label:38} {t:10} {rate:>9.0f} handshakes/s")
        if args.skip_extras:
            memory, swaps, swap = {t: float("nan") for t in TARGETS}, 0, {"requests": 0, "errors": 0, "non2xx": 0}
        else:
            memory = idle_memory(procs, args.idle)
            swaps, swap = swap_under_load(workdir, 12)
            B.log(f"swap under load: {swaps} swaps, {swap['requests']} requests, {swap['errors'] + swap['non2xx']} failed")
        lines = ["# TLS benchmark run", "", *B.versions(), "",
                 "Command: `python3 bench/tls_bench.py " + " ".join(sys.argv[1:]) + "`", "",
                 f"One worker each, ECDSA P-256, medians of {args.runs} alternating runs of {args.seconds} s.", "",
                 "| case | " + " | ".join(TARGETS) + " | S vs better peer | p99 ms (" + " / ".join(TARGETS) + ") | CPU µs/req (" + " / ".join(TARGETS) + ") |",
                 "|---|" + "---:|" * len(TARGETS) + "---:|---|---|"]
        names = [c[0] for c in cases] + ["s_time -new (full, one at a time)", "s_time -reuse (resumed, one at a time)"]
        for name in names:
            med = {t: {k: statistics.median([m[k] for m in results[(name, t)]]) for k in ("rps", "p99", "cpu_us")} for t in TARGETS}
            best = max(med["haproxy"]["rps"], med["nginx"]["rps"])
            ratio = med["switchyard"]["rps"] / best if best else float("nan")
            p99 = " / ".join(f"{med[t]['p99']:.2f}" for t in TARGETS)
            cpu = " / ".join(f"{med[t]['cpu_us']:.1f}" for t in TARGETS)
            rates = " | ".join(f"{med[t]['rps']:.0f}" for t in TARGETS)
            lines.append(f"| {name} | {rates} | {ratio:.2f} | {p99} | {cpu} |")
        failed = sum(m["errors"] + m["non2xx"] for ms in results.values() for m in ms)
        lines += ["", f"Failed requests in all runs: {failed}", "",
                  "| idle TLS connection (each served one request) | bytes of RSS per connection |", "|---|---:|"]
        lines += [f"| {t} | {memory[t]:.0f} |" for t in TARGETS]
        lines += ["", f"Certificate swap under load (Switchyard, 12 s, 32 connections, a new TLS connection per request): "
                  f"{swaps} swaps, {swap['requests']} requests, {swap['errors'] + swap['non2xx']} failed."]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        for p in B.STARTED:
            p.stop()


if __name__ == "__main__":
    main()
