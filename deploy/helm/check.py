#!/usr/bin/env python3
"""Checks of the Helm chart's output that kubernetes-validate cannot make, run by scripts/test.

  check.py manifests RENDERED.yaml
      Writes RENDERED.k8s.yaml (every object but the Prometheus Operator's, for
      `kubernetes-validate --strict`) and RENDERED.toml (the pgsteer.toml of the ConfigMap), and
      checks what spans objects: Services target container ports and never the peer port, every
      file pgsteer.toml names is under a volume mount, the peer settings agree with the pod,
      the Role only reads pods, and the ServiceMonitor has the shape and selector it needs.

  check.py config PGSTEER_BINARY FILE.toml...
      Runs `pgsteer check` on each file, against pgsteer's real configuration loader: the files
      it names are created in a temporary root (a probe password, a userlist, a self-signed
      certificate from openssl), and its Kubernetes discovery lists pods from a stub API server
      that answers an empty PodList. A pgsteer that does not know the peer settings yet (they
      are being added beside the chart) gets the file without them, and this says so.

Needs PyYAML (a dependency of kubernetes-validate) for `manifests`; `config` needs openssl.
"""

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib

# Fields of the Prometheus Operator's monitoring.coreos.com/v1 ServiceMonitor that this chart
# may write (a subset of the API's: ServiceMonitorSpec, Endpoint, RelabelConfig). A CRD's schema
# is not in kubernetes-validate, so this is the strict check for it.
SERVICE_MONITOR_SPEC = {"jobLabel", "selector", "namespaceSelector", "endpoints", "targetLabels",
                        "podTargetLabels", "sampleLimit"}
SERVICE_MONITOR_ENDPOINT = {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings",
                            "metricRelabelings", "honorLabels"}
RELABEL_CONFIG = {"action", "modulus", "regex", "replacement", "separator", "sourceLabels",
                  "targetLabel"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                   "lowercase", "uppercase", "keepequal", "dropequal"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")

failures = []


def fail(what, message):
    failures.append(f"{what}: {message}")


def by_kind(objects, kind):
    return [o for o in objects if o.get("kind") == kind]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_service_monitor(sm, services, namespace_of):
    what = f"ServiceMonitor {sm['metadata']['name']}"
    if sm.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(what, f"apiVersion {sm.get('apiVersion')!r}")
    extra = set(sm) - {"apiVersion", "kind", "metadata", "spec"}
    if extra:
        fail(what, f"unknown fields {sorted(extra)}")
    spec = sm.get("spec", {})
    for key in set(spec) - SERVICE_MONITOR_SPEC:
        fail(what, f"spec.{key} is not a ServiceMonitor field this chart knows")
    selector = spec.get("selector", {}).get("matchLabels")
    if not selector or set(spec.get("selector", {})) - {"matchLabels", "matchExpressions"}:
        fail(what, "spec.selector needs matchLabels")
        return
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        fail(what, "spec.endpoints is empty")
    for i, ep in enumerate(endpoints):
        for key in set(ep) - SERVICE_MONITOR_ENDPOINT:
            fail(what, f"endpoints[{i}].{key} is not an Endpoint field this chart knows")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not DURATION.match(str(ep[key])):
                fail(what, f"endpoints[{i}].{key} {ep[key]!r} is not a Prometheus duration")
        for j, rl in enumerate(ep.get("relabelings", [])):
            for key in set(rl) - RELABEL_CONFIG:
                fail(what, f"endpoints[{i}].relabelings[{j}].{key} is not a RelabelConfig field")
            if rl.get("action", "replace") not in RELABEL_ACTIONS:
                fail(what, f"endpoints[{i}].relabelings[{j}].action {rl['action']!r}")
        # The port is a Service port *name*: some selected Service in the namespace must have it.
        scraped = [s for s in services
                   if matches(selector, s["metadata"].get("labels", {}))
                   and namespace_of(s) == namespace_of(sm)
                   and any(p.get("name") == ep.get("port") for p in s["spec"]["ports"])]
        if not scraped:
            fail(what, f"no Service it selects has a port named {ep.get('port')!r}")


def mount_of(path, mounts):
    """The volume mount a file path is under, or None."""
    best = None
    for m in mounts:
        root = m["mountPath"].rstrip("/") + "/"
        if path.startswith(root) and (best is None or len(root) > len(best["mountPath"])):
            best = m
    return best


def file_settings(table, prefix=""):
    """(setting, path) for every *_file key of the configuration."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from file_settings(value, f"{prefix}{key}.")
        elif key.endswith("_file") and isinstance(value, str):
            yield f"{prefix}{key}", value


def check_files_are_mounted(config, pod):
    container = pod["containers"][0]
    mounts = container.get("volumeMounts", [])
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for setting, path in file_settings(config):
        mount = mount_of(path, mounts)
        if mount is None:
            fail("pgsteer.toml", f"{setting} = {path!r} is under no volume mount")
            continue
        name = path[len(mount["mountPath"].rstrip("/")) + 1:]
        volume = volumes.get(mount["name"], {})
        # Where a volume lists its items (a projected volume: each source), the file must be one.
        sources = volume.get("projected", {}).get("sources") or [volume]
        refs = [s.get("secret") or s.get("configMap") for s in sources]
        if all(r and r.get("items") for r in refs):
            if name not in [i["path"] for r in refs for i in r["items"]]:
                fail("pgsteer.toml", f"{setting}: volume {mount['name']} has no item {name!r}")


def check_manifests(path):
    import yaml

    with open(path) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    release_ns = "default"

    def namespace_of(o):
        return o["metadata"].get("namespace", release_ns)

    crds = [o for o in objects if o.get("apiVersion", "").startswith("monitoring.coreos.com/")]
    with open(re.sub(r"\.yaml$", "", path) + ".k8s.yaml", "w") as f:
        yaml.safe_dump_all([o for o in objects if o not in crds], f, sort_keys=False)

    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    (configmap,) = by_kind(objects, "ConfigMap")
    text = configmap["data"]["pgsteer.toml"]
    with open(re.sub(r"\.yaml$", "", path) + ".toml", "w") as f:
        f.write(text)
    config = tomllib.loads(text)

    services = by_kind(objects, "Service")
    for s in services:
        what = f"Service {s['metadata']['name']}"
        if not matches(s["spec"]["selector"], pod_labels):
            fail(what, "selects no pgsteer pod")
        for p in s["spec"]["ports"]:
            if p["targetPort"] not in ports:
                fail(what, f"targetPort {p['targetPort']!r} is no container port")
            if p["targetPort"] == "peer" or p["port"] == ports.get("peer"):
                fail(what, "exposes the peer port, which only peers may reach")
    if not {"rw", "ro"} <= {p["targetPort"] for s in services for p in s["spec"]["ports"]}:
        fail("Services", "rw and ro need a Service each")

    listen = config["listen"]
    for name in ("rw", "ro", "admin"):
        if int(listen[name].rsplit(":", 1)[1]) != ports.get(name):
            fail("pgsteer.toml", f"listen.{name} {listen[name]} is not the {name} container port")
    for extra in listen.get("extra", []):
        if int(extra["address"].rsplit(":", 1)[1]) != ports.get(extra["name"]):
            fail("pgsteer.toml", f"listen.extra {extra['name']}: no container port of that name")

    peers = config.get("peers")
    if ("peer" in listen) != (peers is not None) or (peers is not None) != ("peer" in ports):
        fail("peers", "listen.peer, [peers] and the peer container port come together")
    if peers is not None:
        port = int(listen["peer"].rsplit(":", 1)[1])
        if not port == ports.get("peer") == peers["kubernetes"]["port"]:
            fail("peers", "listen.peer, peers.kubernetes.port and the container port differ")
        selector = dict(kv.split("=", 1) for kv in peers["kubernetes"]["selector"].split(","))
        if not matches(selector, pod_labels):
            fail("peers", f"peers.kubernetes.selector {selector} does not select pgsteer's pods")
        env = {e["name"]: e for e in container.get("env", [])}
        if env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") \
                != "metadata.name":
            fail("peers", "POD_NAME (the peer id) must come from metadata.name")
        if (peers["tls"] == "mutual") != ("ca_file" in peers):
            fail("peers", "ca_file goes with tls = mutual")

    check_files_are_mounted(config, pod)

    for role in by_kind(objects, "Role"):
        if role["rules"] != [{"apiGroups": [""], "resources": ["pods"],
                              "verbs": ["get", "list", "watch"]}]:
            fail(f"Role {role['metadata']['name']}", "may only get, list and watch pods")
    for policy in by_kind(objects, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            if any(p.get("port") == "peer" for p in rule.get("ports", [])):
                sources = rule.get("from") or [{}]
                if any(not matches(s.get("podSelector", {}).get("matchLabels", {"": None}),
                                   pod_labels) or "namespaceSelector" in s for s in sources):
                    fail(f"NetworkPolicy {policy['metadata']['name']}",
                         "admits the peer port from others than pgsteer's pods")

    for sm in by_kind(objects, "ServiceMonitor"):
        check_service_monitor(sm, services, namespace_of)
    unknown = [o["kind"] for o in crds if o["kind"] != "ServiceMonitor"]
    if unknown:
        fail(path, f"objects of custom kinds nothing checks: {unknown}")


class EmptyPodList(http.server.BaseHTTPRequestHandler):
    """The Kubernetes API as far as `pgsteer check` asks it: no pods."""

    def do_GET(self):  # noqa: N802 (the http.server naming)
        body = json.dumps({"apiVersion": "v1", "kind": "PodList",
                           "metadata": {"resourceVersion": "1"}, "items": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def without_peers(text):
    """The configuration without the peer settings: listen.peer and the [peers...] tables."""
    out, skipping = [], False
    for line in text.splitlines():
        header = re.match(r"^\s*\[+\s*([A-Za-z0-9_.-]+)\s*\]+", line)
        if header:
            skipping = header.group(1).split(".")[0] == "peers"
        if skipping or re.match(r"^\s*peer\s*=", line):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def make_files(config, root):
    """Creates every file the configuration names, under root."""
    cert = os.path.join(root, "cert.pem")
    key = os.path.join(root, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=pgsteer",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    for setting, path in file_settings(config):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if setting.startswith("tls.") or setting.endswith("ca_file"):
            shutil.copy(key if setting.endswith("key_file") else cert, path)
        elif setting == "auth.auth_file":
            with open(path, "w") as f:
                f.write('"app" "md5c2f5e0ff2b8bb7d5c1e89e1a6d2e5b4a"\n')
        else:
            with open(path, "w") as f:
                f.write("not-a-real-secret\n")


def check_config(binary, files):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EmptyPodList)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGSTEER_")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env["POD_NAME"] = "pgsteer-0"  # as the Deployment sets it (the peer id)
    with tempfile.TemporaryDirectory() as root:
        kubeconfig = os.path.join(root, "kubeconfig")
        with open(kubeconfig, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "stub",
                       "clusters": [{"name": "stub", "cluster": {
                           "server": f"http://127.0.0.1:{server.server_port}"}}],
                       "users": [{"name": "stub", "user": {}}],
                       "contexts": [{"name": "stub", "context": {
                           "cluster": "stub", "user": "stub", "namespace": "default"}}]}, f)
        env["KUBECONFIG"] = kubeconfig
        for i, path in enumerate(files):
            with open(path) as f:
                text = f.read()
            # The absolute paths in the file point into the pod: move them under a root here.
            text = re.sub(r'"(/etc/pgsteer[^"]*)"', lambda m: f'"{root}/{i}{m.group(1)}"', text)
            make_files(tomllib.loads(text), root)
            attempts = [(text, None)]
            if "peers" in tomllib.loads(text):
                attempts.append((without_peers(text), "without [peers] and listen.peer: this "
                                 "pgsteer does not know the peer settings yet"))
            for attempt, note in attempts:
                candidate = os.path.join(root, f"{i}.toml")
                with open(candidate, "w") as f:
                    f.write(attempt)
                run = subprocess.run([binary, "check", "--config", candidate], env=env,
                                     capture_output=True, text=True, timeout=30)
                unknown_peers = re.search(r"unknown field `peers?`", run.stderr)
                if run.returncode == 0:
                    print(f"  {os.path.basename(path)}: pgsteer check passed"
                          + (f" ({note})" if note else ""))
                    break
                if note is None and unknown_peers:
                    continue
                fail(os.path.basename(path), f"pgsteer check exited {run.returncode}: {run.stderr.strip()}")
                break
    server.shutdown()


def main(argv):
    if len(argv) >= 2 and argv[0] == "manifests":
        for path in argv[1:]:
            check_manifests(path)
    elif len(argv) >= 3 and argv[0] == "config":
        check_config(argv[1], argv[2:])
    else:
        sys.exit(__doc__)
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
