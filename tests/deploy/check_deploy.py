#!/usr/bin/env python3
"""Checks of the deployment files (deploy/): run by test_deploy with the source and build dirs.

usage: check_deploy.py SOURCE_DIR VOXQ_BINARY

- voxq-worker.service: restarts on failure, stops with SIGTERM and a timeout longer than the
  worker's drain (the default VOXQ_DRAIN_S read from `voxq help worker`, and the value in
  voxq.env.example) plus its 15 s requeue grace, reads an environment file, runs as its own user;
  `systemd-analyze verify` clean (on a copy whose ExecStart names the built binary) when
  systemd-analyze is installed.
- deploy/k8s/*.yaml: every document parses (PyYAML); the worker Deployment has /healthz probes
  on the metrics port, terminationGracePeriodSeconds above the drain, the store volume mounted
  where VOXQ_STORE points; the ScaledObject targets that Deployment, has a redis trigger on the
  list voxq:jobs, and counts jobs in flight (voxq_jobs_held); Redis persists (appendonly + a
  volume).
- deploy/gce: scripts pass `sh -n`, ops-agent.yaml parses and scrapes the metrics port the
  startup script configures.
Prints one line per check and "N passed, N failed"; exits 1 on any failure.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

SRC, VOXQ = sys.argv[1], sys.argv[2]
DEPLOY = os.path.join(SRC, "deploy")
REQUEUE_GRACE_S = 15  # the worker exits at most this long after the drain deadline
results = []


def check(name, ok, detail=""):
    results.append(ok)
    why = (": " + detail) if detail and not ok else ""
    print("%s %s%s" % ("ok  " if ok else "FAIL", name, why))


def default_drain_s():
    out = subprocess.run([VOXQ, "help", "worker"], capture_output=True, text=True).stdout
    m = re.search(r"VOXQ_DRAIN_S\s+\[(\d+)\]", out)
    return int(m.group(1)) if m else None


def unit_settings(path):
    """Section -> list of (key, value); systemd allows repeated keys."""
    sections, current = {}, None
    with open(path, encoding="utf-8") as fp:
        for raw in fp:
            line = raw.strip()
            if not line or line.startswith("#") or line.startswith(";"):
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), [])
            elif "=" in line and current is not None:
                k, v = line.split("=", 1)
                current.append((k.strip(), v.strip()))
    return sections


def env_file(path):
    env = {}
    with open(path, encoding="utf-8") as fp:
        for line in fp:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


def check_unit(drain_s):
    path = os.path.join(DEPLOY, "voxq-worker.service")
    svc = dict(unit_settings(path).get("Service", []))
    env = env_file(os.path.join(DEPLOY, "voxq.env.example"))
    drain = max(drain_s or 0, int(env.get("VOXQ_DRAIN_S", "0")))
    check("unit: Restart=on-failure", svc.get("Restart") == "on-failure", svc.get("Restart"))
    check("unit: stops with SIGTERM", svc.get("KillSignal", "SIGTERM") == "SIGTERM")
    stop = svc.get("TimeoutStopSec", "")
    check("unit: TimeoutStopSec above drain %d s + %d s" % (drain, REQUEUE_GRACE_S),
          stop.isdigit() and int(stop) > drain + REQUEUE_GRACE_S, stop)
    check("unit: EnvironmentFile", bool(svc.get("EnvironmentFile")))
    user = svc.get("User", "")
    check("unit: runs as its own user", user not in ("", "root", "0"), user)
    check("unit: ExecStart runs `voxq worker`",
          svc.get("ExecStart", "").endswith("voxq worker"), svc.get("ExecStart"))
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        print("note: systemd-analyze not installed; unit checked structurally only")
        return
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "voxq-worker.service")
        with open(path, encoding="utf-8") as fp:
            text = fp.read().replace("/usr/local/bin/voxq", os.path.abspath(VOXQ))
        with open(copy, "w", encoding="utf-8") as fp:
            fp.write(text)
        r = subprocess.run([analyze, "verify", copy], capture_output=True, text=True)
        noise = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
        check("unit: systemd-analyze verify clean", r.returncode == 0 and not noise,
              " | ".join(noise))


def load_k8s():
    docs = []
    for f in sorted(glob.glob(os.path.join(DEPLOY, "k8s", "*.yaml"))):
        try:
            with open(f, encoding="utf-8") as fp:
                docs += [(os.path.basename(f), d) for d in yaml.safe_load_all(fp) if d]
            check("k8s: %s parses" % os.path.basename(f), True)
        except yaml.YAMLError as e:
            check("k8s: %s parses" % os.path.basename(f), False, str(e))
    return docs


def check_k8s(drain_default):
    docs = load_k8s()
    for name, d in docs:
        check("k8s: %s: %s has apiVersion, kind, metadata.name" % (name, d.get("kind")),
              all(k in d for k in ("apiVersion", "kind")) and "name" in d.get("metadata", {}))
    by_kind = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    cms = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    deps = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "voxq-worker"]
    check("k8s: Deployment voxq-worker", len(deps) == 1)
    if not deps:
        return
    dep = deps[0]
    pod = dep["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    env = {}
    for ref in worker.get("envFrom", []):
        env.update(cms.get(ref.get("configMapRef", {}).get("name"), {}))
    for e in worker.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    drain = int(env.get("VOXQ_DRAIN_S", drain_default or 0))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check("k8s: terminationGracePeriodSeconds %s above drain %d s + %d s" %
          (grace, drain, REQUEUE_GRACE_S), grace > drain + REQUEUE_GRACE_S)
    ports = {p.get("name"): p["containerPort"] for p in worker.get("ports", [])}
    metrics_port = int(env.get("VOXQ_METRICS_ADDR", ":0").rsplit(":", 1)[1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = worker.get(probe, {}).get("httpGet", {})
        port = get.get("port")
        port = ports.get(port, port)
        check("k8s: %s GET /healthz on the metrics port %d" % (probe, metrics_port),
              get.get("path") == "/healthz" and port == metrics_port, str(get))
    mounts = {m["name"]: m["mountPath"] for m in worker.get("volumeMounts", [])}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
              for v in pod.get("volumes", [])}
    store_vol = [n for n, p in mounts.items() if p == env.get("VOXQ_STORE")]
    check("k8s: the store (VOXQ_STORE=%s) is a mounted persistent volume" % env.get("VOXQ_STORE"),
          len(store_vol) == 1 and bool(claims.get(store_vol[0])))
    pvcs = {p["metadata"]["name"] for p in by_kind.get("PersistentVolumeClaim", [])}
    check("k8s: the store's claim is defined", bool(store_vol) and claims.get(store_vol[0]) in pvcs)
    sos = by_kind.get("ScaledObject", [])
    check("k8s: one ScaledObject", len(sos) == 1)
    if sos:
        so = sos[0]
        check("k8s: ScaledObject targets the Deployment",
              so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"])
        triggers = so["spec"].get("triggers", [])
        prefix = env.get("VOXQ_QUEUE_PREFIX", "voxq:")
        lists = [t["metadata"].get("listName") for t in triggers if t["type"] == "redis"]
        check("k8s: ScaledObject redis trigger on %sjobs" % prefix, prefix + "jobs" in lists,
              str(lists))
        queries = " ".join(t["metadata"].get("query", "") for t in triggers)
        check("k8s: ScaledObject counts jobs in flight (voxq_jobs_held)",
              "voxq_jobs_held" in queries)
    redis = [s for s in by_kind.get("StatefulSet", []) if s["metadata"]["name"] == "redis"]
    if redis:
        c = redis[0]["spec"]["template"]["spec"]["containers"][0]
        args = " ".join(c.get("args", []))
        check("k8s: Redis persists (appendonly on a volume)",
              "--appendonly yes" in args and bool(redis[0]["spec"].get("volumeClaimTemplates")))
        check("k8s: VOXQ_REDIS_URL names the Redis service",
              "redis.voxq.svc" in env.get("VOXQ_REDIS_URL", ""))


def check_gce():
    for f in sorted(glob.glob(os.path.join(DEPLOY, "gce", "*.sh")) +
                    [os.path.join(DEPLOY, "prepare-snapshot.sh")]):
        r = subprocess.run(["sh", "-n", f], capture_output=True, text=True)
        check("sh -n %s" % os.path.relpath(f, SRC), r.returncode == 0, r.stderr.strip())
    with open(os.path.join(DEPLOY, "gce", "ops-agent.yaml"), encoding="utf-8") as fp:
        agent = yaml.safe_load(fp)
    targets = [t for sc in agent["metrics"]["receivers"]["voxq"]["config"]["scrape_configs"]
               for s in sc["static_configs"] for t in s["targets"]]
    with open(os.path.join(DEPLOY, "gce", "startup.sh"), encoding="utf-8") as fp:
        m = re.search(r"VOXQ_METRICS_ADDR=[\d.]+:(\d+)", fp.read())
    check("gce: the Ops Agent scrapes the worker's metrics port",
          bool(m) and any(t.endswith(":" + m.group(1)) for t in targets), str(targets))


def main():
    drain = default_drain_s()
    check("voxq help worker states the VOXQ_DRAIN_S default", drain is not None)
    check_unit(drain)
    check_k8s(drain)
    check_gce()
    failed = results.count(False)
    print("%d passed, %d failed" % (len(results) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
