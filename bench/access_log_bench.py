#!/usr/bin/env python3
"""Access logs on and off, side by side: Switchyard (JSON lines to a file),
HAProxy (`option httplog` to a file through stdout) and nginx (an
`escape=json` access_log to a file), each against its own run without a
log, keep-alive, 64 connections, in front of the same nginx backend on
three ports, forwarding headers on for all.

    python3 bench/access_log_bench.py [--runs 5] [--seconds 5]

Shapes: one worker each; and Switchyard on every core (`--threads` = cores)
beside nginx with as many workers (HAProxy with as many threads). Runs
alternate log on / log off (the order flips each run) so a drift of the
machine hits both alike; figures are medians with p50 and p99 beside them.
For Switchyard the lines written and dropped per run come from its own
metrics, so "lines per second the writer sustains" is what reached the
file, not what was asked. Loopback only; every process is stopped by its
PID; every load is bounded by wrk's -d.
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402  (the shared process and wrk helpers)


def metric(admin_port, series):
    body = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def switchyard(workdir, threads, logged):
    conf = B.switchyard_conf("a")
    if logged:
        conf = conf.replace('default_backend = "be_a"\n',
                            f'default_backend = "be_a"\naccess_log = {{ path = "{workdir}/switchyard-access.log" }}\n', 1)
    path = workdir / "switchyard.toml"
    path.write_text(conf)
    args = [str(B.SWITCHYARD), "--log-level", "warn", "run", "-c", str(path), "--no-watch",
            "--threads", str(threads)]
    proc = B.Proc("switchyard", args, workdir)
    B.wait_port(B.PORTS["switchyard"]["http"])
    return proc


def haproxy(workdir, threads, logged):
    conf = B.haproxy_conf(workdir, threads)
    if logged:
        # HAProxy writes no files itself: `log stdout` to the Proc's log file.
        conf = conf.replace("defaults\n", "    log stdout format raw local0\ndefaults\n    log global\n    option httplog\n", 1)
    path = workdir / "haproxy.cfg"
    path.write_text(conf)
    proc = B.Proc("haproxy", ["haproxy", "-f", str(path), "-db"], workdir)
    B.wait_port(B.PORTS["haproxy"]["http"])
    return proc


NGINX_JSON = ("log_format jsonlog escape=json '{\"time\":\"$time_iso8601\",\"client\":\"$remote_addr\","
              "\"method\":\"$request_method\",\"uri\":\"$request_uri\",\"status\":$status,"
              "\"bytes_out\":$body_bytes_sent,\"upstream\":\"$upstream_addr\",\"duration\":$request_time,"
              "\"ttfb\":\"$upstream_header_time\",\"request_id\":\"$request_id\",\"ua\":\"$http_user_agent\"}';")


def nginx(workdir, workers, logged):
    conf = B.nginx_conf(workdir, workers)
    if logged:
        conf = conf.replace("    access_log off;\n",
                            f"    {NGINX_JSON}\n    access_log {workdir}/nginx-access.log jsonlog;\n", 1)
    path = workdir / "nginx-proxy.conf"
    path.write_text(conf)
    proc = B.Proc("nginx-proxy", ["nginx", "-c", str(path), "-e", str(workdir / "nginx-proxy-error.log")], workdir)
    B.wait_port(B.PORTS["nginx"]["http"])
    return proc


STARTERS = {"switchyard": switchyard, "haproxy": haproxy, "nginx": nginx}


def one_run(workdir, target, workers, logged, seconds):
    proc = STARTERS[target](workdir, workers, logged)
    try:
        admin = B.PORTS["switchyard"]["admin"]
        before = metric(admin, 'switchyard_access_log_lines_total{listener="http"}') if target == "switchyard" else 0
        result = B.wrk(B.PORTS[target]["http"], "/", 64, seconds)
        if target == "switchyard":
            time.sleep(0.3)  # the writer's last batch (it writes every 50 ms)
            result["lines"] = metric(admin, 'switchyard_access_log_lines_total{listener="http"}') - before
            result["dropped"] = sum(
                metric(admin, f'switchyard_access_log_dropped_total{{listener="http",reason="{r}"}}')
                for r in ("queue_full", "write_error"))
    finally:
        proc.stop()
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=B.ROOT / "bench" / "results" / "access_log.md")
    args = ap.parse_args()
    cores = os.cpu_count() or 2
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-accesslog-"))
    workdir.chmod(0o755)
    (workdir / "backend.conf").write_text(B.backend_conf(workdir))
    backend = B.Proc("backend", ["nginx", "-c", str(workdir / "backend.conf"), "-e",
                                 str(workdir / "backend-error.log")], workdir)
    B.wait_port(B.BACKEND_PORT)
    shapes = [("one worker", 1), (f"{cores} workers", cores)]
    results = {}  # (shape, target, logged) -> [wrk result]
    try:
        for run in range(args.runs):
            for shape, workers in shapes:
                for target in STARTERS:
                    order = [False, True] if run % 2 == 0 else [True, False]
                    for logged in order:
                        r = one_run(workdir, target, workers, logged, args.seconds)
                        results.setdefault((shape, target, logged), []).append(r)
                        extra = f" lines {r['lines']:.0f} dropped {r['dropped']:.0f}" if "lines" in r else ""
                        B.log(f"run {run + 1} {shape:10} {target:10} log {'on ' if logged else 'off'} "
                              f"{r['rps']:9.0f} req/s p50 {r['p50']:.3f} ms p99 {r['p99']:.3f} ms "
                              f"errors {r['errors'] + r['non2xx']}{extra}")
    finally:
        for p in reversed(B.STARTED):
            p.stop()
        del backend

    def med(key, rows):
        return statistics.median(r[key] for r in rows)

    lines = ["# Access logs on and off", "", *B.versions(), "",
             f"Command: `python3 bench/access_log_bench.py --runs {args.runs} --seconds {args.seconds}`", "",
             "Keep-alive, 64 connections (wrk), one backend nginx on three ports, forwarding headers on for all. "
             "Log on: Switchyard JSON lines to a file; HAProxy `option httplog` to a file (stdout); nginx an "
             "`escape=json` log_format to a file. Medians over the runs; each run alternates on and off.", "",
             "| shape | proxy | req/s log off | req/s log on | on / off | p50 off / on (ms) | p99 off / on (ms) | on / off, each run |",
             "|---|---|---:|---:|---:|---|---|---|"]
    for shape, _ in shapes:
        for target in STARTERS:
            off, on = results[(shape, target, False)], results[(shape, target, True)]
            ratio = med("rps", on) / med("rps", off)
            each = ", ".join(f"{a['rps'] / b['rps']:.2f}" for a, b in zip(on, off))
            lines.append(f"| {shape} | {target} | {med('rps', off):.0f} | {med('rps', on):.0f} | {ratio:.2f} | "
                         f"{med('p50', off):.3f} / {med('p50', on):.3f} | {med('p99', off):.3f} / {med('p99', on):.3f} | {each} |")
    lines += ["", "Switchyard's writer: lines written per second of load, and lines dropped (from its metrics).", "",
              "| shape | lines/s written (median) | lines written / requests answered, each run | dropped, each run |",
              "|---|---:|---|---|"]
    for shape, _ in shapes:
        on = results[(shape, "switchyard", True)]
        per_s = statistics.median(r["lines"] / args.seconds for r in on)
        share = ", ".join(f"{r['lines'] / max(r['requests'], 1):.3f}" for r in on)
        dropped = ", ".join(f"{r['dropped']:.0f}" for r in on)
        lines.append(f"| {shape} | {per_s:.0f} | {share} | {dropped} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
