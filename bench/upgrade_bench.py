#!/usr/bin/env python3
"""Binary upgrades under load: Switchyard upgrading its own binary in
place (`POST /upgrade`, which `switchyard upgrade` and SIGUSR2 also do)
beside HAProxy -W reloads (SIGUSR2 to the master) and nginx reloads
(SIGHUP), 20 in 20 s under 64 keep-alive connections, with a
control run of the same length and no reload for each.

    python3 bench/upgrade_bench.py [--runs 3] [--seconds 20] [--reloads 20]

One worker each, the same backend shape as bench.py (three backend ports,
forwarding headers on). Figures: requests, failed requests (socket errors
plus non-2xx, as wrk counts them) and req/s against the control run.
Loopback only; every process is stopped by its PID (the last Switchyard
process's PID is read from its /status); wrk's -d bounds every load loop.
"""

import argparse
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402


def switchyard_pid(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as resp:
        return json.load(resp)["pid"]


def upgrade(admin):
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/upgrade", method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.load(resp)
    if body.get("result") != "success":
        raise SystemExit(f"switchyard upgrade failed: {body}")
    return body


def under_load(port, seconds, reloads, action):
    """wrk for `seconds`; `reloads` calls of `action` at a fixed rate in
    between (none for the control run)."""
    result = {}
    t = threading.Thread(target=lambda: result.update(B.wrk(port, "/", 64, seconds)))
    t.start()
    time.sleep(0.5)  # let wrk connect
    count = 0
    if action:
        start, period = time.time(), (seconds - 1.0) / reloads
        while count < reloads:
            action(count)
            count += 1
            time.sleep(max(0.0, start + count * period - time.time()))
    t.join()
    return count, result


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--reloads", type=int, default=20, help="upgrades or reloads per run, spread over it")
    ap.add_argument("--out", type=Path, default=B.ROOT / "bench" / "results" / "upgrade.md")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-upgrade-bench-"))
    (workdir / "backend.conf").write_text(B.backend_conf(workdir))
    B.Proc("backend", ["nginx", "-c", str(workdir / "backend.conf"), "-e", str(workdir / "backend-error.log")], workdir)
    B.wait_port(B.BACKEND_PORT)
    admin = B.PORTS["switchyard"]["admin"]
    rows = {}
    try:
        for run in range(args.runs):
            # The control run and the run with reloads alternate in order
            # from run to run, so a drift of the machine hits both alike.
            def pair(port, action):
                if run % 2 == 0:
                    _, control = under_load(port, args.seconds, args.reloads, None)
                    count, loaded = under_load(port, args.seconds, args.reloads, action)
                else:
                    count, loaded = under_load(port, args.seconds, args.reloads, action)
                    _, control = under_load(port, args.seconds, args.reloads, None)
                return count, loaded, control

            sy = B.start_switchyard(workdir, 1)
            count, loaded, control = pair(B.PORTS["switchyard"]["http"], lambda i: upgrade(admin))
            last = switchyard_pid(admin)
            rows.setdefault("Switchyard binary upgrade (POST /upgrade)", []).append((count, loaded, control))
            sy.stop()
            if last != sy.p.pid:
                B.os.kill(last, signal.SIGTERM)
                for _ in range(100):
                    try:
                        B.os.kill(last, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.1)
            hp = B.start_haproxy(workdir, 1, master_worker=True, expose_fd=True)
            count, loaded, control = pair(B.PORTS["haproxy"]["http"], lambda i: hp.signal(signal.SIGUSR2))
            rows.setdefault("HAProxy -W reload (expose-fd listeners)", []).append((count, loaded, control))
            hp.stop()
            ng = B.start_nginx(workdir, 1)
            count, loaded, control = pair(B.PORTS["nginx"]["http"], lambda i: ng.signal(signal.SIGHUP))
            rows.setdefault("nginx -s reload", []).append((count, loaded, control))
            ng.stop()
            for name, runs in rows.items():
                count, loaded, control = runs[-1]
                failed = loaded.get("errors", 0) + loaded.get("non2xx", 0)
                B.log(f"run {run + 1}: {name:42} {count:3} reloads  {loaded.get('requests', 0):8} requests  "
                      f"{failed:5} failed  {loaded.get('rps', 0):8.0f} req/s vs control {control.get('rps', 0):8.0f}")
    finally:
        for p in reversed(B.STARTED):
            p.stop()
    lines = ["# Binary upgrade and reload under load", "", *B.versions(), "",
             f"Command: `python3 bench/upgrade_bench.py --runs {args.runs} --seconds {args.seconds} --reloads {args.reloads}`", "",
             f"One worker each, 64 keep-alive connections (wrk), {args.seconds} s per run, {args.reloads} upgrades or "
             "reloads at a fixed rate; the control is the same run without any.", "",
             "| proxy | reloads per run | failed requests, each run | req/s with reloads / control, each run | median req/s with reloads / median control |",
             "|---|---:|---|---|---:|"]
    for name, runs in rows.items():
        failed = ", ".join(str(l.get("errors", 0) + l.get("non2xx", 0)) for _, l, _ in runs)
        ratios = ", ".join(f"{l.get('rps', 0) / c['rps']:.2f}" if c.get("rps") else "-" for _, l, c in runs)
        loaded_rps = statistics.median(l.get("rps", 0) for _, l, _ in runs)
        control_rps = statistics.median(c.get("rps", 0) for _, _, c in runs)
        ratio = loaded_rps / control_rps if control_rps else float("nan")
        counts = "/".join(str(c) for c, _, _ in runs)
        lines.append(f"| {name} | {counts} | {failed} | {ratios} | {ratio:.2f} ({loaded_rps:.0f} / {control_rps:.0f}) |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
