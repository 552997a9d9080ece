#!/usr/bin/env python3
"""Side-by-side A/B of Switchyard builds against HAProxy, with the proxy's
CPU time split into user and system time per request.

    python3 bench/ab.py BIN[,BIN...] [--conns 64,256] [--runs 3] [--seconds 5] [--path /16k]
                        [--backends 1|3] [--forwarding on|off] [--threads N]

Each BIN is a switchyard binary (or a script that execs one) run with
`--threads 1` on its own port; HAProxy runs with `nbthread 1`; the backend
is the same one-worker nginx as bench.py's. Runs alternate between all
targets, so every build sees the same machine state; figures are medians.
Use it to decide whether a change helps before running the full bench
(`bench/run.sh`). Needs nginx, haproxy and wrk (bench/run.sh installs them).
Loopback only; every process is stopped by its PID; every load loop is
bounded by wrk's -d.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import bench as B


def cpu_split(proc):
    """User and system CPU seconds and minor page faults of `proc`."""
    user = system = faults = 0
    for pid in proc.pids():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        faults += int(fields[7])
        user += int(fields[11])
        system += int(fields[12])
    return user / B.CLK_TCK, system / B.CLK_TCK, faults


def switchyard_conf(index):
    servers = ", ".join(f'"127.0.0.1:{port}"' for port in B.backend_ports())
    # Written only when off: builds from before the key existed add them.
    forwarding = "" if B.SHAPE["forwarding"] else "forwarded_headers = false\n"
    return f"""
[admin]
bind = "127.0.0.1:{18200 + index}"
[[listeners]]
name = "http"
bind = "127.0.0.1:{18100 + index}"
default_backend = "be"
{forwarding}[[backends]]
name = "be"
servers = [{servers}]
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bins", help="comma-separated switchyard binaries")
    ap.add_argument("--conns", default="64,256")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--path", default="/", help="/ (small body) or /16k")
    ap.add_argument("--backends", type=int, choices=[1, 3], default=3)
    ap.add_argument("--forwarding", choices=["on", "off"], default="on")
    ap.add_argument("--threads", type=int, default=1, help="workers of every target")
    args = ap.parse_args()
    B.SHAPE["backends"] = args.backends
    B.SHAPE["forwarding"] = args.forwarding == "on"
    conns = [int(c) for c in args.conns.split(",")]
    work = Path(tempfile.mkdtemp(prefix="switchyard-ab-"))
    targets = {}
    try:
        (work / "backend.conf").write_text(B.backend_conf(work))
        B.Proc("backend", ["nginx", "-c", str(work / "backend.conf")], work)
        B.wait_port(B.BACKEND_PORTS[0])
        for i, binary in enumerate(args.bins.split(",")):
            conf = work / f"sy{i}.toml"
            conf.write_text(switchyard_conf(i))
            cmd = [binary, "--log-level", "warn", "run", "-c", str(conf), "--no-watch", "--threads", str(args.threads)]
            targets[f"sy{i}"] = (B.Proc(f"sy{i}", cmd, work), 18100 + i)
            B.wait_port(18100 + i)
        targets["haproxy"] = (B.start_haproxy(work, args.threads), B.PORTS["haproxy"]["http"])
        results = {}
        for run in range(args.runs):
            for c in conns:
                for name, (proc, port) in targets.items():
                    u0, s0, f0 = cpu_split(proc)
                    m = B.wrk(port, args.path, c, args.seconds)
                    u1, s1, f1 = cpu_split(proc)
                    n = max(m["requests"], 1)
                    row = (m["rps"], (u1 - u0) * 1e6 / n, (s1 - s0) * 1e6 / n, m["p99"], (f1 - f0) / n, m["p999"])
                    results.setdefault((c, name), []).append(row)
                    B.log(f"run {run + 1}/{args.runs} c={c} {name:8} {row[0]:8.0f} req/s  user {row[1]:5.2f}  sys {row[2]:5.2f} µs/req  p99 {row[3]:.2f} ms")
        print("| conns | target | req/s | vs HAProxy | user µs/req | sys µs/req | CPU µs/req | p99 ms | p99.9 ms | page faults/req |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in conns:
            base = statistics.median(r[0] for r in results[(c, "haproxy")])
            for name in targets:
                rows = results[(c, name)]
                med = [statistics.median(r[k] for r in rows) for k in range(6)]
                print(f"| {c} | {name} | {med[0]:.0f} | {med[0] / base:.2f} | {med[1]:.2f} | {med[2]:.2f} | {med[1] + med[2]:.2f} | {med[3]:.2f} | {med[5]:.2f} | {med[4]:.3f} |")
    finally:
        for proc in B.STARTED:
            proc.stop()


if __name__ == "__main__":
    main()
