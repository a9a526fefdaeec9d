#!/usr/bin/env python3
"""Renders deploy/helm/tokenfab with Helm's own engine and checks the manifests against the
real server.

Helm comes from the PyPI package helm-python-sdk (Helm v4's Go SDK behind a C ABI): the chart is
linted and rendered exactly as `helm lint` / `helm template` would. The rendered Deployment's
container is then run as the kubelet would run it (its args with $(VAR) expanded from its env),
with three changes for a test machine: the model path points at the local file, the HTTP port
and the replay socket bind 127.0.0.1 on free ports. Checks:
- lint passes; a grace period shorter than the drain is refused at render time;
- probes hit the paths the server answers (startup/liveness /health, readiness /ready) on the
  container port that `--port` opens; the Service targets that port;
- the PodMonitor scrapes a path that serves the metrics the HPA and the gateway values
  (deploy/gateway/*.yaml) name;
- the --kv-events-config JSON has vLLM's KVEventsConfig keys and the server accepts it;
- SIGTERM drains and exits 0 within terminationGracePeriodSeconds, after the preStop sleep.

Usage: check-chart.py --binary target/debug/tokenfab --model models/X.gguf
Exit 0 and `N passed, 0 failed` when every check holds. Needs helm-python-sdk and PyYAML.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import helm_python as helm
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "deploy/helm/tokenfab")
VLLM_KV_EVENTS_KEYS = {"enable_kv_cache_events", "publisher", "endpoint", "replay_endpoint",
                       "buffer_steps", "hwm", "max_queue_size", "topic"}

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}", file=sys.stderr)


def render(values: dict) -> dict[str, list[dict]]:
    """Kind -> rendered objects."""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="tokenfab", namespace="serving")
    objs: dict[str, list[dict]] = {}
    for name, text in out.items():
        if name.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objs.setdefault(doc["kind"], []).append(doc)
    return objs


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in container args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)


def run_container(objs, args) -> None:
    dep = objs["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    http = ports["http"]
    env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
    # The downward API's status.podIP on this machine.
    env = {k: ("127.0.0.1" if k == "POD_IP" else v) for k, v in env.items()}
    port = free_port()
    cargs = []
    for a in c["args"]:
        a = expand(a, env)
        if a.startswith("--model=/models/"):
            a = "--model=" + args.model
        elif a == "--host=0.0.0.0":
            a = "--host=127.0.0.1"
        elif a == f"--port={http}":
            a = f"--port={port}"
        elif a.startswith("--kv-events-config="):
            cfg = json.loads(a.split("=", 1)[1])
            check(set(cfg) <= VLLM_KV_EVENTS_KEYS, f"kv events keys {set(cfg)} are vLLM's")
            check(cfg["topic"] == "kv@127.0.0.1@smollm2-135m-instruct",
                  f"topic kv@<pod ip>@<model>: {cfg['topic']}")
            check(cfg["replay_endpoint"] == f"tcp://*:{ports['kv-replay']}",
                  "the replay socket binds the kv-replay container port")
            cfg["replay_endpoint"] = "tcp://127.0.0.1:0"
            a = "--kv-events-config=" + json.dumps(cfg)
        cargs.append(a)
    check(f"--port={port}" in cargs, "--port is the container port named http")
    penv = dict(os.environ, **env)
    penv.pop("TOKENFAB_API_KEY", None)
    proc = subprocess.Popen([args.binary, *cargs], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=penv)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        for h in probes.values():
            check(h["port"] == "http", "probes use the http port")
        while get(base + probes["startupProbe"]["path"])[0] != 200 and time.time() < deadline:
            check(proc.poll() is None, "the server runs with the rendered args")
            if proc.poll() is not None:
                print(proc.stderr.read(), file=sys.stderr)
                return
            time.sleep(0.2)
        for name, h in probes.items():
            code, _ = get(base + h["path"])
            check(code == 200, f"{name} {h['path']} answers 200")
        if "PodMonitor" in objs:
            ep = objs["PodMonitor"][0]["spec"]["podMetricsEndpoints"][0]
            check(ep["port"] == "http", "the PodMonitor scrapes the http port")
            code, text = get(base + ep["path"])
            check(code == 200, f"the PodMonitor path {ep['path']} answers 200")
            names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                     if line and not line.startswith("#")}
            if "HorizontalPodAutoscaler" in objs:
                m = objs["HorizontalPodAutoscaler"][0]["spec"]["metrics"][0]["pods"]["metric"]
                # prometheus-adapter exposes tokenfab:x as tokenfab_x (docs/deploy.md).
                source = m["name"].replace("tokenfab_", "tokenfab:", 1)
                check(source in names, f"the HPA's metric {m['name']} comes from {source}")
            for f in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                      "vllm:kv_cache_usage_perc", "vllm:cache_config_info"):
                check(f in names, f"the gateway reads {f}")
        # Drain: what the kubelet does at deletion, preStop then SIGTERM within the grace period.
        grace = pod["terminationGracePeriodSeconds"]
        pre = c["lifecycle"]["preStop"]["exec"]["command"]
        check(pre[0] == "/bin/sleep" and int(pre[1]) < grace, "preStop sleeps within the grace")
        start = time.time()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(grace - int(pre[1]))
        check(rc == 0, f"SIGTERM: exit {rc} after {time.time() - start:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args()

    lint = helm.lint(CHART)
    check(not lint["errors"] and all(m["severity"] < 3 for m in lint["messages"]),
          f"helm lint: {lint}")

    base = render({})
    dep = base["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    check(pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0,
          "the pod runs as non-root")
    check([i["name"] for i in pod.get("initContainers", [])] == ["fetch-model"],
          "without a claim, an init container fetches the model")
    check(base["Service"][0]["spec"]["ports"][0]["targetPort"] == "http",
          "the Service targets the http port")
    check("PodMonitor" not in base and "HorizontalPodAutoscaler" not in base,
          "PodMonitor and HPA are off by default")
    check(dep["spec"]["replicas"] == 1, "one replica by default")
    run_container(base, args)

    fleet = render({"kvEvents": {"enabled": True,
                                 "endpoint": "tcp://tokenfab-pool-epp.serving.svc:5557"},
                    "podMonitor": {"enabled": True}, "autoscaling": {"enabled": True},
                    "model": {"persistentVolumeClaim": "models"}})
    fpod = fleet["Deployment"][0]["spec"]["template"]["spec"]
    check("replicas" not in fleet["Deployment"][0]["spec"], "the HPA owns the replica count")
    check("initContainers" not in fpod, "a claim replaces the fetch init container")
    check(fpod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models", "the claim")
    hpa = fleet["HorizontalPodAutoscaler"][0]["spec"]
    check(hpa["scaleTargetRef"]["name"] == fleet["Deployment"][0]["metadata"]["name"],
          "the HPA scales the Deployment")
    run_container(fleet, args)

    try:
        render({"terminationGracePeriodSeconds": 10})
        check(False, "a grace period shorter than the drain is refused")
    except helm.HelmError as e:
        check("terminationGracePeriodSeconds" in str(e), f"refusal names the field: {e}")

    for f in ("inferencepool-values.yaml", "llm-d-precise-prefix-values.yaml"):
        with open(os.path.join(ROOT, "deploy/gateway", f)) as fh:
            v = yaml.safe_load(fh)
        pool = v["inferencePool"]
        check(pool["targetPorts"][0]["number"] == c["ports"][0]["containerPort"],
              f"{f}: the pool targets tokenfab's port")
        sel = pool["modelServers"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        check(all(labels.get(k) == x for k, x in sel.items()), f"{f}: the pool selects the pods")
        if "pluginsCustomConfig" in v["inferenceExtension"]:
            (cfg,) = v["inferenceExtension"]["pluginsCustomConfig"].values()
            plugins = {p["type"]: p for p in yaml.safe_load(cfg)["plugins"]}
            tp = plugins["precise-prefix-cache-scorer"]["parameters"]["tokenProcessorConfig"]
            check(f"--block-size={tp['blockSize']}" in c["args"],
                  f"{f}: blockSize equals tokenfab's --block-size")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
