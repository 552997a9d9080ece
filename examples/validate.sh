#!/usr/bin/env bash
# Validates the deployment examples with real tools, not by eye:
#
#   kubernetes/*.yaml   kubernetes-validate (PyPI; it bundles the official
#                       JSON schemas, so it works offline once installed),
#                       --strict (unknown fields fail), against Kubernetes
#                       1.30 (the oldest with the preStop `sleep` action on
#                       by default) and 1.37;
#   nomad/*.hcl         parsed by python-hcl2 (PyPI), then the job's shape:
#                       Consul service, checks, shutdown_delay, leader,
#                       kill_signal, kill_timeout, the template's config;
#   systemd/*           systemd-analyze verify (Debian's systemd; any
#                       warning fails), then Type=notify, NotifyAccess,
#                       KillMode, timeouts, socket addresses;
#   prometheus/         promtool (Debian's prometheus package): check
#                       config on prometheus.yml (which loads the rules),
#                       check rules, test rules on the unit tests (every
#                       alert tested firing and not firing); every metric
#                       and label the rules use is one Switchyard exports;
#   grafana/*.json      JSON (python3 -m json.tool), the dashboard's shape
#                       (datasource variable, instance/listener/backend
#                       variables, layout), every query's PromQL parsed by
#                       promtool and its metrics and labels checked against
#                       the ones src/metrics.rs defines;
#   every platform      the drain arithmetic, from the Switchyard config
#                       each one embeds (parsed with tomllib): preStop +
#                       [shutdown] grace < terminationGracePeriodSeconds,
#                       grace < kill_timeout, grace < TimeoutStopSec, each
#                       with 5 s of margin; drain_timeout <= grace;
#   every config        `switchyard check`, when a built binary is found
#                       (target/{release,debug}/switchyard, the newer one;
#                       SWITCHYARD_BIN=/path to choose, SWITCHYARD_BIN=none
#                       to skip).
#
#   bash examples/validate.sh           # the examples beside this script
#   bash examples/validate.sh DIR       # a copy of them elsewhere
#
# The first run makes target/examples-venv (pinned versions) and installs
# Debian's systemd if systemd-analyze is missing (as root, with apt-get);
# promtool is the one on PATH (PROMTOOL=/path to choose), else it is taken
# out of Debian's prometheus package into target/examples-tools (apt-get
# download and dpkg-deb: nothing installed, no service started, no root
# needed). Later runs reuse all three. Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
dir="$(cd "${1:-$here}" && pwd)"
venv="$root/target/examples-venv"
requirements="kubernetes-validate==1.37.0 python-hcl2==8.1.4"
started=$(date +%s)

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "validate.sh: needs Python 3.11 or later (tomllib)" >&2
    exit 1
}

# The Python tools, installed once; the stamp says with which pins.
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.requirements" 2>/dev/null)" != "$requirements" ]]; then
    echo "== installing $requirements into ${venv#"$root"/}"
    rm -rf "$venv"
    # Debian splits venv (ensurepip) into its own package.
    if ! python3 -c 'import ensurepip' 2>/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    python3 -m venv "$venv"
    # shellcheck disable=SC2086 # one word per requirement
    "$venv/bin/pip" install --quiet --disable-pip-version-check $requirements
    echo "$requirements" >"$venv/.requirements"
fi

if ! command -v systemd-analyze >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "== installing Debian's systemd (for systemd-analyze)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
    else
        echo "validate.sh: systemd-analyze is missing: install the systemd package" >&2
        exit 1
    fi
fi

# promtool: PROMTOOL, the one on PATH (Debian's prometheus package installs
# it; .ci/run does), or the one extracted earlier. Else it is extracted from
# Debian's package without installing that: the package would also start a
# Prometheus server where services may start.
promtool="${PROMTOOL:-$(command -v promtool || true)}"
if [[ -z $promtool ]]; then
    promtool="$root/target/examples-tools/promtool"
    if [[ ! -x $promtool ]]; then
        if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
            echo "validate.sh: promtool is missing: install Debian's prometheus package, or set PROMTOOL=/path" >&2
            exit 1
        fi
        echo "== extracting promtool from Debian's prometheus package into ${promtool#"$root"/}"
        deb=$(mktemp -d)
        # As root, apt-get warns that its _apt user cannot write here.
        if ! (cd "$deb" && apt-get download -qq prometheus 2>/dev/null); then
            if [[ $(id -u) == 0 ]]; then apt-get update -qq; fi
            (cd "$deb" && apt-get download -qq prometheus 2>&1 | grep -v unsandboxed >&2) || true
        fi
        if ! compgen -G "$deb/prometheus_*.deb" >/dev/null; then
            echo "validate.sh: could not download Debian's prometheus package (for promtool)" >&2
            rm -rf "$deb"
            exit 1
        fi
        dpkg-deb -x "$deb"/prometheus_*.deb "$deb/tree"
        mkdir -p "$(dirname "$promtool")"
        install -m 0755 "$deb/tree/usr/bin/promtool" "$promtool"
        rm -rf "$deb"
    fi
fi

# The project's own validator, if there is a binary to run.
switchyard="${SWITCHYARD_BIN:-}"
if [[ -z $switchyard ]]; then
    for candidate in "$root/target/release/switchyard" "$root/target/debug/switchyard"; do
        if [[ -x $candidate && (-z $switchyard || $candidate -nt $switchyard) ]]; then
            switchyard=$candidate
        fi
    done
elif [[ $switchyard == none ]]; then
    switchyard=""
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

status=0
"$venv/bin/python" - "$dir" "$work" "$switchyard" "$promtool" "$root/src/metrics.rs" <<'PY' || status=$?
import importlib.metadata as metadata
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import hcl2
import yaml
from hcl2.utils import SerializationOptions

EXAMPLES, WORK, SWITCHYARD = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
PROMTOOL, METRICS_RS = sys.argv[4], Path(sys.argv[5])
VENV_BIN = Path(sys.executable).parent
K8S_VERSIONS = ["1.30.0", "1.37.0"]
# Wanted between the end of a drain (grace) and the platform's SIGKILL.
MARGIN = 5.0
# [admin] bind when a config does not set it.
DEFAULT_ADMIN = "127.0.0.1:9900"

counts = {"passed": 0, "failed": 0}
configs = []  # (origin, file) of every Switchyard config met, for `switchyard check`


def check(ok, what, why=""):
    counts["passed" if ok else "failed"] += 1
    print(f"  ok    {what}" if ok else f"  FAIL  {what}")
    if not ok and why:
        print(textwrap.indent(str(why).rstrip(), "        "))
    return ok


def note(what):
    print(f"  note  {what}")


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)


def secs(x):
    return f"{x:g} s"


UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "secs": 1,
         "m": 60, "min": 60, "mins": 60, "h": 3600, "hr": 3600, "d": 86400}


def seconds(value):
    """'20s', '1m30s', '1min 30s', '500ms' or a plain number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = re.sub(r"\s+", "", str(value))
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([a-zµ]+)", text)
    if not parts or "".join(n + u for n, u in parts) != text or any(u not in UNITS for _, u in parts):
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * UNITS[u] for n, u in parts)


def split_bind(bind):
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", str(bind))
    if not m:
        raise ValueError(f"not ip:port: {bind!r}")
    return (m.group(1) or m.group(3)), int(m.group(2) or m.group(4))


def loopback(host):
    return host in ("localhost", "::1") or host.startswith("127.")


def same_address(a, b):
    (ha, pa), (hb, pb) = split_bind(a), split_bind(b)
    try:
        return pa == pb and ipaddress.ip_address(ha) == ipaddress.ip_address(hb)
    except ValueError:
        return pa == pb and ha == hb


def config_path(args, default=None):
    """The file after -c/--config in a `switchyard run` command line."""
    args = [str(a) for a in args]
    for i, a in enumerate(args):
        if a in ("-c", "--config") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return default


class Config:
    """A Switchyard config, as the drain rules need it."""

    def __init__(self, text, origin):
        self.origin = origin
        data = tomllib.loads(text)
        self.grace = seconds(data.get("shutdown", {}).get("grace", "30s"))
        self.admin = data.get("admin", {}).get("bind", DEFAULT_ADMIN)
        self.admin_host, self.admin_port = split_bind(self.admin)
        self.listeners = data.get("listeners", [])
        # Ports others reach Switchyard on (loopback listeners are local).
        self.public_ports = {split_bind(l["bind"])[1] for l in self.listeners
                             if not loopback(split_bind(l["bind"])[0])}


def load_config(text, origin):
    """Parses and checks a config; None when it is unusable."""
    try:
        cfg = Config(text, origin)
    except (tomllib.TOMLDecodeError, ValueError, KeyError, TypeError) as e:
        check(False, f"{origin}: Switchyard config parses", e)
        return None
    check(True, f"{origin}: Switchyard config parses (tomllib); grace {secs(cfg.grace)}, admin {cfg.admin}")
    for l in cfg.listeners:
        if "drain_timeout" in l:
            dt = seconds(l["drain_timeout"])
            check(dt <= cfg.grace, f"{origin}: listener {l.get('name')} drain_timeout {secs(dt)} <= grace {secs(cfg.grace)}",
                  "past the grace everything is closed anyway")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", origin).removesuffix(".toml")
    path = WORK / "configs" / f"{len(configs):02d}-{slug}.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    configs.append((origin, path))
    return cfg


# ---------------------------------------------------------------- Kubernetes

def prestop_seconds(container):
    """What preStop sleeps: the sleep action, or exec of sleep N; None if not that."""
    hook = (container.get("lifecycle") or {}).get("preStop")
    if not hook:
        return None
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    words = (hook.get("exec") or {}).get("command") or []
    if len(words) == 3 and Path(words[0]).name in ("sh", "bash") and words[1] == "-c":
        words = words[2].split()
    if len(words) == 2 and Path(words[0]).name == "sleep":
        return seconds(words[1])
    return None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def k8s_config(pod, container, path, namespace, configmaps):
    """The text of the config file at `path`, from a mounted ConfigMap."""
    mounts = [m for m in container.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts:
        return None, f"no volumeMount holds {path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)
    if not volume or "configMap" not in volume:
        return None, f"volume {mount['name']} is not a ConfigMap"
    name = volume["configMap"]["name"]
    relative = mount.get("subPath") or path[len(mount["mountPath"].rstrip("/")) + 1:]
    key = relative
    for item in volume["configMap"].get("items", []):
        if item["path"] == relative:
            key = item["key"]
    cm = configmaps.get((namespace, name))
    if cm is None or key not in (cm.get("data") or {}):
        return None, f"ConfigMap {name} with key {key} is not in these files"
    return cm["data"][key], f"ConfigMap {name}, key {key}"


def kubernetes():
    print("\n== Kubernetes manifests (kubernetes/)")
    files = sorted([*(EXAMPLES / "kubernetes").glob("*.yaml"), *(EXAMPLES / "kubernetes").glob("*.yml")])
    if not check(bool(files), "manifests found"):
        return
    names = [f.relative_to(EXAMPLES) for f in files]
    for version in K8S_VERSIONS:
        r = run([VENV_BIN / "kubernetes-validate", "--strict", "--quiet", "-k", version, *files])
        check(r.returncode == 0 and "ERROR" not in r.stdout + r.stderr,
              f"kubernetes-validate --strict -k {version}: {', '.join(map(str, names))}", r.stdout + r.stderr)

    docs = []
    for f in files:
        try:
            docs += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
        except yaml.YAMLError as e:
            check(False, f"{f.name}: parses as YAML", e)
    ns = lambda d: (d.get("metadata") or {}).get("namespace", "default")
    configmaps = {(ns(d), d["metadata"]["name"]): d for _, d in docs if d.get("kind") == "ConfigMap"}
    workloads = [(f, d) for f, d in docs if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")]
    for f in files:
        check(any(fname == f.name and any("switchyard" in c.get("image", "")
                                          for c in d["spec"]["template"]["spec"].get("containers", []))
                  for fname, d in workloads),
              f"{f.name}: a workload runs Switchyard")

    for fname, w in workloads:
        where = f"{fname}: {w['kind']} {w['metadata']['name']}"
        spec, template = w["spec"], w["spec"]["template"]
        labels = (template.get("metadata") or {}).get("labels") or {}
        pod = template["spec"]
        containers = pod.get("containers", [])
        proxies = [c for c in containers if "switchyard" in c.get("image", "")]
        if not proxies:
            continue
        check(selects((spec.get("selector") or {}).get("matchLabels"), labels),
              f"{where}: selector matches the pod template's labels")
        grace_period = pod.get("terminationGracePeriodSeconds", 30)
        listener_ports = set()
        for c in proxies:
            at = f"{where}, container {c['name']}"
            args = c.get("args") or []
            # The image's CMD runs /etc/switchyard/switchyard.toml.
            path = config_path(args, None if args else "/etc/switchyard/switchyard.toml")
            text, origin = k8s_config(pod, c, path or "", ns(w), configmaps) if path else (None, "no -c FILE")
            if not check(text is not None, f"{at}: its config ({path}) is in a ConfigMap of these files", origin):
                continue
            cfg = load_config(text, f"{fname}: {origin}")
            if cfg is None:
                continue
            listener_ports |= cfg.public_ports

            pre = prestop_seconds(c)
            check(pre is not None and pre >= 1,
                  f"{at}: preStop sleeps {secs(pre or 0)}, so endpoints drop the pod before SIGTERM",
                  "add lifecycle.preStop.sleep.seconds (or exec: [sleep, N])")
            pre = pre or 0
            need = pre + cfg.grace + MARGIN
            check(need <= grace_period,
                  f"{at}: preStop {secs(pre)} + grace {secs(cfg.grace)} + margin {secs(MARGIN)} = {secs(need)}"
                  f" <= terminationGracePeriodSeconds {grace_period}",
                  "the kubelet would SIGKILL Switchyard before its drain ends")

            probe = c.get("readinessProbe")
            if check(probe is not None, f"{at}: has a readinessProbe"):
                if "httpGet" in probe:
                    get = probe["httpGet"]
                    port = port_number(c, get.get("port"))
                    check(get.get("path") == "/healthz" and port == cfg.admin_port,
                          f"{at}: readinessProbe is GET /healthz on the admin port {cfg.admin_port}",
                          f"it is GET {get.get('path')} on port {port}")
                    check(not loopback(cfg.admin_host),
                          f"{at}: admin binds {cfg.admin}: the kubelet's httpGet probe can reach it",
                          "the kubelet connects to the pod IP: bind 0.0.0.0, or probe with exec")
                elif "exec" in probe:
                    check(True, f"{at}: readinessProbe runs in the container (exec), admin on {cfg.admin}")
                else:
                    check(False, f"{at}: readinessProbe is httpGet /healthz (or exec)",
                          "a tcpSocket probe does not see the drain")

            declared = {p["containerPort"] for p in c.get("ports", [])}
            for port in sorted(cfg.public_ports | {cfg.admin_port}):
                check(port in declared, f"{at}: port {port} is declared (containerPort)")

            # Sidecar: the other containers must outlive Switchyard's drain.
            for other in containers:
                if other in proxies:
                    continue
                theirs = prestop_seconds(other) or 0
                check(theirs >= pre + cfg.grace,
                      f"{where}, container {other['name']}: preStop {secs(theirs)} >= {secs(pre)} + grace "
                      f"{secs(cfg.grace)}: it serves until Switchyard's drain is over",
                      "it would get SIGTERM while Switchyard still forwards requests to it")
                check(theirs < grace_period,
                      f"{where}, container {other['name']}: {secs(grace_period - theirs)} left after its own SIGTERM")

        services = [(f, d) for f, d in docs if d.get("kind") == "Service" and ns(d) == ns(w)
                    and selects((d.get("spec") or {}).get("selector"), labels)]
        check(bool(services), f"{where}: a Service selects its pods (what preStop waits for)")
        policies = [d for _, d in docs if d.get("kind") == "NetworkPolicy" and ns(d) == ns(w)
                    and "Ingress" in d["spec"].get("policyTypes", ["Ingress"])
                    and (selects(d["spec"]["podSelector"].get("matchLabels"), labels)
                         or not d["spec"]["podSelector"])]
        for f, svc in services:
            for p in svc["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                numbers = {port_number(c, target) for c in proxies}
                port = next((n for n in numbers if n), None)
                check(port in listener_ports,
                      f"{f}: Service {svc['metadata']['name']} port {p['port']} -> {target} is a Switchyard listener")
                for pol in policies:
                    rules = pol["spec"].get("ingress", [])
                    check(any("ports" not in r or any(q.get("port") in (port, target) for q in r["ports"])
                              for r in rules),
                          f"{fname}: NetworkPolicy {pol['metadata']['name']} lets clients reach port {port}")
        replicas = spec.get("replicas", 1)
        for f, pdb in docs:
            if pdb.get("kind") != "PodDisruptionBudget" or ns(pdb) != ns(w):
                continue
            if not selects(pdb["spec"].get("selector", {}).get("matchLabels"), labels):
                continue
            if isinstance(pdb["spec"].get("minAvailable"), int):
                check(pdb["spec"]["minAvailable"] < replicas,
                      f"{f}: PodDisruptionBudget {pdb['metadata']['name']} minAvailable "
                      f"{pdb['spec']['minAvailable']} < replicas {replicas}: evictions proceed one at a time",
                      "a budget no eviction can meet blocks node drains")


# ---------------------------------------------------------------- Nomad

HCL_OPTIONS = SerializationOptions(with_comments=False, explicit_blocks=False,
                                   preserve_heredocs=True, strip_string_quotes=True)


def labelled(body, key):
    """[(label, block)] of a labelled block type (job, group, task, port)."""
    return [(label, block) for item in (body or {}).get(key, []) for label, block in item.items()]


def first(blocks):
    return blocks[0] if isinstance(blocks, list) and blocks else {}


def heredoc(value):
    """The text of an HCL heredoc (<<EOT, or <<-EOT with its indent removed)."""
    m = re.fullmatch(r"<<(-?)([A-Za-z_]\w*)\n(.*?)\n?[ \t]*\2", value, re.S)
    if not m:
        return value
    body = m.group(3) + "\n"
    return textwrap.dedent(body) if m.group(1) else body


def task_path(path):
    """A path in a Nomad task as a template destination names it (local/x)."""
    for var, folder in (("NOMAD_TASK_DIR", "local"), ("NOMAD_SECRETS_DIR", "secrets"), ("NOMAD_ALLOC_DIR", "alloc")):
        path = path.replace("${" + var + "}", folder)
    return path.lstrip("/").removeprefix("./")


def nomad():
    print("\n== Nomad jobs (nomad/)")
    files = sorted((EXAMPLES / "nomad").glob("*.hcl"))
    if not check(bool(files), "job files found"):
        return
    for f in files:
        try:
            data = hcl2.loads(f.read_text(), serialization_options=HCL_OPTIONS)
        except Exception as e:  # the parser raises several kinds
            check(False, f"{f.name}: parses as HCL2 (python-hcl2)", e)
            continue
        check(True, f"{f.name}: parses as HCL2 (python-hcl2)")
        found = False
        for jname, job in labelled(data, "job"):
            check(job.get("type", "service") == "service", f"{f.name}: job {jname} is a service job")
            for gname, group in labelled(job, "group"):
                tasks = labelled(group, "task")
                proxies = [(n, t) for n, t in tasks
                           if "switchyard" in str(first(t.get("config")).get("image", ""))]
                if proxies:
                    found = True
                    nomad_group(f"{f.name}: group {gname}", group, tasks, proxies)
        check(found, f"{f.name}: a group runs Switchyard")


def nomad_group(where, group, tasks, proxies):
    ports = {label: block.get("to", block.get("static")) for label, block in labelled(first(group.get("network")), "port")}
    services = group.get("service", [])
    check(bool(services), f"{where}: registers a service (group level)")
    for svc in services:
        name = svc.get("name")
        check(svc.get("provider", "consul") == "consul", f"{where}: service {name} is registered in Consul")
        check(svc.get("port") in ports, f"{where}: service {name} port {svc.get('port')!r} is a network port")
        checks = svc.get("check", [])
        check(bool(checks), f"{where}: service {name} has health checks")
        for c in checks:
            check((c.get("port") or svc.get("port")) in ports,
                  f"{where}: check {c.get('name')!r} port {c.get('port') or svc.get('port')!r} is a network port")
    delay = seconds(group.get("shutdown_delay", 0))
    check(delay >= 1, f"{where}: shutdown_delay {secs(delay)}: Consul drops the service before any task is signalled",
          'set shutdown_delay = "5s" in the group')

    for tname, task in proxies:
        at = f"{where}, task {tname}"
        args = first(task.get("config")).get("args", [])
        path = config_path(args, None if args else "/etc/switchyard/switchyard.toml")
        template = next((t for t in task.get("template", [])
                         if path and task_path(t.get("destination", "")) == task_path(path)), None)
        if not check(template is not None and "data" in template,
                     f"{at}: its config ({path}) is rendered by a template stanza"):
            continue
        text = heredoc(template["data"]).replace("$${", "${").replace("%%{", "%{")
        # Nomad renders {{ ... }}; a stand-in value is enough to parse the TOML.
        text = re.sub(r"\{\{.*?\}\}", "rendered", text, flags=re.S)
        cfg = load_config(text, f"{where.split(':')[0]}: template {template['destination']}")
        if cfg is None:
            continue

        signal = task.get("kill_signal")
        check(signal in ("SIGTERM", "SIGINT"), f"{at}: kill_signal {signal} makes Switchyard drain",
              'set kill_signal = "SIGTERM"')
        kill_timeout = seconds(task.get("kill_timeout", "5s"))
        check(kill_timeout >= cfg.grace + MARGIN,
              f"{at}: kill_timeout {secs(kill_timeout)} >= grace {secs(cfg.grace)} + margin {secs(MARGIN)}",
              "Nomad would SIGKILL Switchyard before its drain ends")
        if kill_timeout > 30:
            note(f"{at}: kill_timeout over 30s needs the clients' max_kill_timeout raised")
        others = [n for n, t in tasks if n != tname and not first(t.get("lifecycle")).get("sidecar")]
        if others:
            check(task.get("leader") is True,
                  f"{at}: leader = true: it stops first, {', '.join(others)} only after its drain",
                  "without it Nomad signals every task at once")

        for svc in services:
            check(ports.get(svc.get("port")) in cfg.public_ports,
                  f"{at}: service {svc.get('name')} points at a Switchyard listener (port {ports.get(svc.get('port'))})")
            for c in svc.get("check", []):
                if ports.get(c.get("port") or svc.get("port")) == cfg.admin_port:
                    check(c.get("path") == "/healthz" and not loopback(cfg.admin_host),
                          f"{at}: check {c.get('name')!r} gets /healthz from admin {cfg.admin} through the port mapping",
                          "the agent comes from outside the namespace: bind the admin API to 0.0.0.0")
        check(any(ports.get(c.get("port") or s.get("port")) == cfg.admin_port and c.get("path") == "/healthz"
                  for s in services for c in s.get("check", [])),
              f"{at}: a Consul check watches /healthz (503 while draining)")


# ---------------------------------------------------------------- systemd

def parse_unit(text):
    sections, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def systemd():
    print("\n== systemd units (systemd/)")
    folder = EXAMPLES / "systemd"
    units = sorted([*folder.glob("*.service"), *folder.glob("*.socket")])
    if not check(bool(units), "unit files found"):
        return
    # `verify` fails on an ExecStart= binary that is not installed here. It
    # checks copies in which each missing Exec*= program is replaced by a
    # stand-in script under the same name; everything else is unchanged.
    copies, stubs = WORK / "units", WORK / "bin"
    copies.mkdir()
    stubs.mkdir()
    for unit in units:
        lines = []
        for line in unit.read_text().splitlines():
            m = re.match(r"^(Exec\w+=)([-@:+!]*)(/\S+)(.*)$", line)
            if m and not Path(m.group(3)).exists():
                stub = stubs / Path(m.group(3)).name
                stub.write_text("#!/bin/sh\nexit 0\n")
                stub.chmod(0o755)
                line = f"{m.group(1)}{m.group(2)}{stub}{m.group(4)}"
            lines.append(line)
        (copies / unit.name).write_text("\n".join(lines) + "\n")
    r = run(["systemd-analyze", "verify", "--man=no", *[u.name for u in units]], cwd=copies)
    output = (r.stdout + r.stderr).strip()
    # verify exits 0 on an unknown key or a bad value (it only warns), so
    # any output counts as a failure.
    check(r.returncode == 0 and not output,
          f"systemd-analyze verify {' '.join(u.name for u in units)}: no errors, no warnings", output)

    for unit in folder.glob("*.service"):
        at = unit.name
        service = parse_unit(unit.read_text()).get("Service", {})
        get = lambda key, default=None: service.get(key, [default])[-1]
        check(get("Type") == "notify", f"{at}: Type=notify: started once it serves (READY=1)")
        check(get("NotifyAccess") == "all",
              f"{at}: NotifyAccess=all: the upgraded process may send MAINPID= and READY=1")
        kill_mode = get("KillMode", "control-group")
        check(kill_mode in ("control-group", "mixed"),
              f"{at}: KillMode={kill_mode}: the old process draining after a reload stays in the unit")
        if kill_mode == "mixed":
            note(f"{at}: with KillMode=mixed a stop SIGKILLs an old process still draining once the new one exits")
        check(get("KillSignal", "SIGTERM") in ("SIGTERM", "SIGINT"), f"{at}: KillSignal makes Switchyard drain")
        start = shlex.split(get("ExecStart", ""))
        path = config_path(start)
        if not check("run" in start and path is not None, f"{at}: ExecStart= is `switchyard run -c FILE`"):
            continue
        local = folder / Path(path).name
        if not check(local.exists(), f"{at}: its config {path} is here as {local.name}"):
            continue
        cfg = load_config(local.read_text(), f"systemd/{local.name}")
        if cfg is None:
            continue
        stop = seconds(get("TimeoutStopSec", get("TimeoutSec", "90s")))
        check(stop >= cfg.grace + MARGIN,
              f"{at}: TimeoutStopSec {secs(stop)} >= grace {secs(cfg.grace)} + margin {secs(MARGIN)}",
              "systemd would SIGKILL Switchyard before its drain ends")
        reload = shlex.split(get("ExecReload", ""))
        check("upgrade" in reload and config_path(reload) == path,
              f"{at}: ExecReload= is `switchyard upgrade -c {path}`: reload = in-place upgrade")
        upgrade_timeout = seconds(next((start[i + 1] for i, a in enumerate(start[:-1]) if a == "--upgrade-timeout"), "60s"))
        start_timeout = seconds(get("TimeoutStartSec", get("TimeoutSec", "90s")))
        check(start_timeout > upgrade_timeout,
              f"{at}: TimeoutStartSec {secs(start_timeout)} > --upgrade-timeout {secs(upgrade_timeout)}:"
              " ExecReload may wait for the new process that long")

        for socket in folder.glob("*.socket"):
            sock = parse_unit(socket.read_text()).get("Socket", {})
            if sock.get("Service", [socket.stem + ".service"])[-1] != unit.name:
                continue
            for listen in sock.get("ListenStream", []):
                ok = re.fullmatch(r"(\[[^\]]+\]|[^:]+):\d+", listen) and any(
                    same_address(listen, l["bind"]) for l in cfg.listeners)
                check(bool(ok), f"{socket.name}: ListenStream={listen} is the bind of a listener in {local.name}",
                      "a listener takes systemd's socket only when its bind is that address")


# ---------------------------------------------------------------- Prometheus and Grafana

# Labels Prometheus adds to every scraped series.
SCRAPE_LABELS = {"job", "instance"}
# Grafana's own variables, and what stands in for them when promtool parses a query.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600",
                    "__interval_ms": "60000"}
SELECTOR = re.compile(r'\b(switchyard_\w+|up)\b(?:\s*\{([^}]*)\})?')
GROUPING = re.compile(r'\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)')
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
COUNTER = re.compile(r'_(total|bucket|sum|count)$')


def exported_metrics():
    """{series name: labels} of every metric src/metrics.rs defines: each
    "switchyard_..." string, with the first &[labels] after it and before
    its constructor's `?;` (none for an unlabelled gauge); a histogram is
    its _bucket (with le), _sum and _count."""
    print("\n== metrics Switchyard exports (src/metrics.rs)")
    if not check(METRICS_RS.is_file(), f"{METRICS_RS} found"):
        return {}
    text = METRICS_RS.read_text()
    names = list(re.finditer(r'"(switchyard_\w+)"', text))
    metrics = {}
    for i, m in enumerate(names):
        end = names[i + 1].start() if i + 1 < len(names) else len(text)
        chunk = text[m.end():end].split("?;")[0]
        labels = re.search(r"&\[([^\]]*)\]", chunk)
        metrics.setdefault(m.group(1), set(re.findall(r'"(\w+)"', labels.group(1))) if labels else set())
    for name in re.findall(r'HistogramOpts::new\(\s*"(switchyard_\w+)"', text):
        labels = metrics.pop(name, set())
        metrics.update({name + "_bucket": labels | {"le"}, name + "_sum": labels, name + "_count": labels})
    check(metrics.get("switchyard_http_requests_total") == {"listener", "backend", "class"}
          and metrics.get("switchyard_config_version") == set()
          and metrics.get("switchyard_endpoint_up") == {"backend", "endpoint"}
          and "le" in metrics.get("switchyard_http_request_duration_seconds_bucket", ()),
          f"{len(metrics)} series names with their labels read (spot checks: http_requests_total,"
          " config_version, endpoint_up, the duration histogram)", sorted(metrics))
    return metrics


def promql_problems(expr, metrics):
    """What is wrong with the metrics and labels `expr` uses: metrics
    Switchyard does not export, labels they do not have (in selectors, by,
    on, ...), rate() of a gauge. Returns (problems, labels the expression's
    metrics have, metric names used)."""
    problems, used = [], {}
    for m in SELECTOR.finditer(expr):
        name = m.group(1)
        if name == "up":
            labels = set()
        elif name not in metrics:
            problems.append(f"{name}: not a metric Switchyard exports")
            continue
        else:
            labels = metrics[name]
        used[name] = labels
        for label, _, _ in MATCHER.findall(m.group(2) or ""):
            if label not in labels | SCRAPE_LABELS:
                problems.append(f"{name}{{{label}...}}: {name} has no label {label} (it has {', '.join(sorted(labels)) or 'none'})")
    known = set().union(SCRAPE_LABELS, *used.values())
    for group in GROUPING.findall(expr):
        for label in re.findall(r"\w+", group):
            if label not in known:
                problems.append(f"({group}): no metric of this query has the label {label}")
    for m in re.finditer(r'\b(rate|irate|increase)\(\s*(switchyard_\w+)', expr):
        if not COUNTER.search(m.group(2)):
            problems.append(f"{m.group(1)}() of {m.group(2)}, which is not a counter")
    if not used:
        problems.append("uses no Switchyard metric")
    return problems, known, set(used)


def promtool_parses(named_exprs, what):
    """Parses expressions with promtool, as recording rules of a scratch file."""
    rules = [{"record": f"check:{i}", "expr": expr} for i, (_, expr) in enumerate(named_exprs)]
    path = WORK / f"{what}-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": what, "rules": rules}]}, sort_keys=False))
    r = run([PROMTOOL, "check", "rules", path])
    out = r.stdout + r.stderr
    # Errors name the rule by its index: show which query that is.
    out = re.sub(r"rule (\d+)", lambda m: f"rule {m.group(1)} ({named_exprs[int(m.group(1)) - 1][0]})"
                 if 0 < int(m.group(1)) <= len(named_exprs) else m.group(0), out)
    check(r.returncode == 0, f"promtool check rules: all {len(named_exprs)} {what} queries parse as PromQL", out)


def prometheus(metrics):
    print("\n== Prometheus config, alerting rules and their tests (prometheus/)")
    folder = EXAMPLES / "prometheus"
    config, rules_file, tests_file = (folder / n for n in
                                      ("prometheus.yml", "switchyard-alerts.yml", "switchyard-alerts.test.yml"))
    if not all(check(f.is_file(), f"prometheus/{f.name} found") for f in (config, rules_file, tests_file)):
        return

    r = run([PROMTOOL, "check", "config", config])
    check(r.returncode == 0, "promtool check config prometheus.yml (with the rule files it loads)", r.stdout + r.stderr)
    cfg = yaml.safe_load(config.read_text())
    loaded = [(folder / f).resolve() for f in cfg.get("rule_files", [])]
    check(rules_file.resolve() in loaded, "prometheus.yml loads switchyard-alerts.yml (relative to itself)")
    r = run([PROMTOOL, "check", "rules", rules_file])
    check(r.returncode == 0, "promtool check rules switchyard-alerts.yml", r.stdout + r.stderr)

    groups = yaml.safe_load(rules_file.read_text())["groups"]
    alerts = [rule for g in groups for rule in g["rules"] if "alert" in rule]
    down = next((a for a in alerts if re.search(r'\bup\{', a["expr"])), None)
    job = re.search(r'job="([^"]+)"', down["expr"]).group(1) if down else None
    check(down is not None, f"an alert watches the scrape itself (up{{job=\"{job}\"}})")
    jobs = [j for j in cfg.get("scrape_configs", []) if j.get("job_name") == job]
    check(len(jobs) == 1 and jobs[0].get("metrics_path", "/metrics") == "/metrics"
          and any(DEFAULT_ADMIN in sc.get("targets", []) for sc in jobs[0].get("static_configs", [])),
          f"prometheus.yml: job {job} scrapes /metrics at the default admin address {DEFAULT_ADMIN}")

    for a in alerts:
        at = f"alert {a['alert']}"
        problems, known, _ = promql_problems(a["expr"], metrics)
        for text in a.get("annotations", {}).values():
            problems += [f"annotation uses $labels.{l}, which no metric of the query has"
                         for l in re.findall(r"\$labels\.(\w+)", text) if l not in known]
        check(not problems, f"{at}: metrics and labels Switchyard exports", "\n".join(problems))
        check("for" in a and a.get("labels", {}).get("severity") in ("critical", "warning", "info")
              and {"summary", "description"} <= set(a.get("annotations", {})),
              f"{at}: for {a.get('for')}, severity {a.get('labels', {}).get('severity')}, summary and description")

    r = run([PROMTOOL, "test", "rules", tests_file])
    check(r.returncode == 0, "promtool test rules switchyard-alerts.test.yml", r.stdout + r.stderr)
    fired, silent = set(), set()
    for test in yaml.safe_load(tests_file.read_text()).get("tests", []):
        for t in test.get("alert_rule_test", []):
            (fired if t.get("exp_alerts") else silent).add(t["alertname"])
    names = [a["alert"] for a in alerts]
    check(all(n in fired for n in names), f"every alert ({len(names)}) is tested firing",
          "not tested firing: " + ", ".join(n for n in names if n not in fired))
    check(all(n in silent for n in names), f"every alert ({len(names)}) is tested not firing",
          "not tested silent: " + ", ".join(n for n in names if n not in silent))


def grafana(metrics):
    print("\n== Grafana dashboards (grafana/)")
    files = sorted((EXAMPLES / "grafana").glob("*.json"))
    if not check(bool(files), "dashboards found"):
        return
    for f in files:
        r = run([sys.executable, "-m", "json.tool", f])
        if not check(r.returncode == 0, f"{f.name}: python3 -m json.tool", r.stderr):
            continue
        grafana_dashboard(f.name, json.loads(f.read_text()), metrics)


def grafana_dashboard(at, dash, metrics):
    schema = dash.get("schemaVersion", 0)
    check(schema >= 36, f"{at}: schemaVersion {schema} (Grafana 9 and later)")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("DS_PROMETHEUS", {})
    check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
          f"{at}: a Prometheus datasource variable, DS_PROMETHEUS")
    for name, label in (("instance", "instance"), ("listener", "listener"), ("backend", "backend")):
        v = variables.get(name, {})
        query = v.get("definition") or v.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        m = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?\s*,\s*(\w+)\)", query or "")
        check(bool(m) and m.group(3) == label and label in metrics.get(m.group(1), ()) | SCRAPE_LABELS
              and v.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}",
              f"{at}: variable {name}: {query}")
    for name, v in variables.items():
        if v.get("type") == "query" and name not in ("instance", "listener", "backend"):
            query = v.get("definition") or v.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            m = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?\s*,\s*(\w+)\)", query or "")
            check(bool(m) and m.group(3) in metrics.get(m.group(1), set()) | SCRAPE_LABELS,
                  f"{at}: variable {name}: {query}")

    def flat(items):
        for p in items:
            yield p
            yield from flat(p.get("panels", []))

    panels = list(flat(dash.get("panels", [])))
    ids = [p.get("id") for p in panels]
    check(len(ids) == len(set(ids)) and None not in ids, f"{at}: {len(panels)} panels, each with its own id")
    boxes = []
    for p in panels:
        g = p.get("gridPos", {})
        ok = all(isinstance(g.get(k), int) for k in "xywh") and g["x"] >= 0 and g["x"] + g["w"] <= 24
        if not ok:
            check(False, f"{at}: panel {p.get('title')!r} has a gridPos within 24 columns", g)
        elif p.get("type") != "row" or not p.get("collapsed"):
            boxes.append((p.get("title"), g))
    overlaps = [f"{a} / {b}" for i, (a, g) in enumerate(boxes) for b, h in boxes[i + 1:]
                if g["x"] < h["x"] + h["w"] and h["x"] < g["x"] + g["w"] and g["y"] < h["y"] + h["h"] and h["y"] < g["y"] + g["h"]]
    check(not overlaps, f"{at}: no two panels overlap", "\n".join(overlaps))

    queries, shown = [], set()
    for p in panels:
        if p.get("type") == "row":
            continue
        title = p.get("title")
        targets = p.get("targets", [])
        sources = [p.get("datasource")] + [t.get("datasource") for t in targets]
        problems = [] if targets else ["no query"]
        if any((s or {}).get("uid") != "${DS_PROMETHEUS}" for s in sources):
            problems.append("a datasource other than ${DS_PROMETHEUS}")
        for t in targets:
            expr = t.get("expr", "")
            found, known, used = promql_problems(expr, metrics)
            problems += found
            shown |= used
            for var in re.findall(r"\$\{?(\w+)", expr):
                if var not in variables and var not in GRAFANA_BUILTINS:
                    problems.append(f"${var}: no such variable")
            for label, op, value in MATCHER.findall(expr):
                if re.search(r"\$\{?(?!__)\w", value) and op not in ("=~", "!~"):
                    problems.append(f'{label}{op}"{value}": a multi-value variable needs =~')
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                if label not in known:
                    problems.append(f"legend {{{{{label}}}}}: no metric of the query has that label")
            text = re.sub(r"\$\{?(\w+)\}?", lambda m: GRAFANA_BUILTINS.get(m.group(1), ".*"), expr)
            queries.append((f"{title} {t.get('refId')}", text))
        check(not problems, f"{at}: {title}: {len(targets)} quer{'y' if len(targets) == 1 else 'ies'}"
              " over Switchyard's metrics and labels", "\n".join(problems))
    promtool_parses(queries, "grafana")
    def family(name):
        """A histogram's name for its _bucket, _sum and _count series."""
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        return base if base != name and base + "_bucket" in metrics else name

    families = {family(n) for n in metrics}
    missing = sorted(families - {family(n) for n in shown})
    if missing:
        note(f"{at}: metrics no panel shows: {', '.join(missing)}")
    else:
        check(True, f"{at}: every metric Switchyard exports ({len(families)}) is on a panel")


# ---------------------------------------------------------------- switchyard check

def switchyard_check():
    print("\n== switchyard check")
    if not SWITCHYARD:
        note("no switchyard binary found (build one, or set SWITCHYARD_BIN): skipped")
        return
    note(f"binary {SWITCHYARD}")
    for origin, path in configs:
        r = run([SWITCHYARD, "check", "-c", path])
        check(r.returncode == 0, f"{origin}: switchyard check", r.stdout + r.stderr)


systemd_version = run(["systemd-analyze", "--version"]).stdout.splitlines()[0]
promtool_version = run([PROMTOOL, "--version"]).stdout.split("(")[0].replace(", version", "").strip()
print(f"validators: kubernetes-validate {metadata.version('kubernetes-validate')}"
      f" (schemas {', '.join(K8S_VERSIONS)}), python-hcl2 {metadata.version('python-hcl2')},"
      f" PyYAML {metadata.version('PyYAML')}, Python {sys.version.split()[0]} tomllib, {systemd_version},"
      f" {promtool_version} ({PROMTOOL})")
print(f"examples:   {EXAMPLES}")
kubernetes()
nomad()
systemd()
metrics = exported_metrics()
prometheus(metrics)
grafana(metrics)
switchyard_check()
print(f"\n{counts['passed']} passed, {counts['failed']} failed")
sys.exit(1 if counts["failed"] else 0)
PY

echo "($(($(date +%s) - started)) s)"
exit "$status"
