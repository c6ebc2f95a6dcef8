#!/usr/bin/env python3
"""Validates k8s/ offline: every manifest against the Kubernetes API's own schemas
(kubernetes-validate, strict: unknown fields are errors), every kustomization's file list,
and what wasmnode needs of them: least-privilege RBAC, the downward API and the Secret,
probes on the port the topology serves, and a grace period that covers the handoff.

    python3 tools/validate-k8s.py [--version 1.33.0] [--dump-topologies DIR]

--dump-topologies writes each ConfigMap's topology.toml to DIR/<variant>/topology.toml so
that a test can run `wasmnode check` on it inside the image. Prints one line per finding
and `manifests: N passed, N failed`; exits 1 when anything failed.
"""

import argparse
import os
import re
import sys
import tomllib

import kubernetes_validate
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
K8S = os.path.join(ROOT, "k8s")
NOT_KUBERNETES = {"swarm-stack.yml"}  # a Docker stack file lives beside the manifests

passed = 0
failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok    {what}")
    else:
        failed += 1
        print(f"FAIL  {what}")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def variant(dirpath, version, dump):
    name = os.path.relpath(dirpath, K8S)
    name = "deployment" if name == "." else name
    kust_path = os.path.join(dirpath, "kustomization.yaml")
    check(os.path.isfile(kust_path), f"{name}: has a kustomization.yaml")
    kust = load_all(kust_path)[0]
    check(kust.get("kind") == "Kustomization", f"{name}: kustomization.yaml is a Kustomization")
    listed = kust.get("resources", [])
    on_disk = sorted(
        f for f in os.listdir(dirpath)
        if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml" and f not in NOT_KUBERNETES
    )
    check(sorted(listed) == on_disk, f"{name}: the kustomization lists every manifest ({', '.join(on_disk)})")

    objs = []
    for r in listed:
        path = os.path.join(dirpath, r)
        if not os.path.isfile(path):
            check(False, f"{name}: resource {r} exists")
            continue
        for doc in load_all(path):
            kind, meta = doc.get("kind"), doc.get("metadata", {}).get("name")
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                check(True, f"{name}: {r} {kind}/{meta} matches the {version} schema (strict)")
            except kubernetes_validate.ValidationError as e:
                path_ = ".".join(str(p) for p in e.path)
                check(False, f"{name}: {r} {kind}/{meta}: {path_}: {e.message}")
            objs.append(doc)

    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    check(len(workloads) == 1, f"{name}: one workload (Deployment or StatefulSet)")
    if not workloads:
        return
    wl = workloads[0]
    pod = wl["spec"]["template"]["spec"]
    labels = wl["spec"]["template"]["metadata"]["labels"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}

    def field_ref(var):
        return env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")

    check(field_ref("NAMESPACE") == "metadata.namespace", f"{name}: NAMESPACE from the downward API")
    if wl["kind"] == "Deployment":
        check(field_ref("POD_IP") == "status.podIP", f"{name}: POD_IP from the downward API")
    else:
        check(field_ref("POD_NAME") == "metadata.name", f"{name}: POD_NAME from the downward API")
    secret = env.get("WASMNODE_COOKIE", {}).get("valueFrom", {}).get("secretKeyRef", {})
    check(bool(secret.get("name")) and bool(secret.get("key")), f"{name}: WASMNODE_COOKIE from a Secret ({secret.get('name')})")

    # The topology: mounted from the ConfigMap at the path the container runs.
    cms = by_kind.get("ConfigMap", [])
    check(len(cms) == 1 and "topology.toml" in cms[0].get("data", {}), f"{name}: a ConfigMap holds topology.toml")
    if not cms:
        return
    cm = cms[0]
    topo = tomllib.loads(cm["data"]["topology.toml"])
    vol = next((v for v in pod.get("volumes", []) if v.get("configMap", {}).get("name") == cm["metadata"]["name"]), None)
    mount = next((m for m in c.get("volumeMounts", []) if vol and m["name"] == vol["name"]), None)
    args = c.get("args", [])
    config_arg = args[args.index("--config") + 1] if "--config" in args else None
    check(mount is not None and config_arg == os.path.join(mount["mountPath"], "topology.toml"),
          f"{name}: runs --config {config_arg}, the mounted ConfigMap")
    if dump:
        os.makedirs(os.path.join(dump, name), exist_ok=True)
        with open(os.path.join(dump, name, "topology.toml"), "w") as f:
            f.write(cm["data"]["topology.toml"])

    # The gateway: beyond loopback only with a token, from a Secret; its own port declared.
    http = topo.get("http", {})
    if http.get("gateway"):
        token_var = http.get("token_env")
        token = env.get(token_var or "", {}).get("valueFrom", {}).get("secretKeyRef", {})
        check(bool(token_var) and bool(token.get("name")), f"{name}: the gateway's token ({token_var}) from a Secret ({token.get('name')})")
        gw = http.get("gateway_listen", http.get("listen", ":0"))
        gw_port = int(gw.rsplit(":", 1)[1])
        check(gw_port in {p["containerPort"] for p in c.get("ports", [])}, f"{name}: the gateway's port {gw_port} is a container port")

    # [node.tls]: the three files from one mounted Secret, read-only.
    tls = topo["node"].get("tls")
    if tls:
        dirs = {os.path.dirname(tls.get(k, "")) for k in ("cert", "key", "ca")}
        tls_mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] in dirs), None)
        tls_vol = next((v for v in pod.get("volumes", []) if tls_mount and v["name"] == tls_mount["name"]), None)
        check(len(dirs) == 1 and tls_mount is not None and tls_mount.get("readOnly") is True
              and tls_vol is not None and bool(tls_vol.get("secret", {}).get("secretName")),
              f"{name}: [node.tls] cert, key and ca from a Secret mounted read-only at {sorted(dirs)}")

    # Probes: /readyz and /healthz on the port the topology's [http] listens on.
    http_port = int(topo.get("http", {}).get("listen", ":0").rsplit(":", 1)[1])
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        g = c.get(probe, {}).get("httpGet", {})
        port = ports.get(g.get("port"), g.get("port"))
        check(g.get("path") == path and port == http_port, f"{name}: {probe} GET {path} on port {port} ([http] listens on {http_port})")
    dist_port = int(topo["node"].get("listen", "0.0.0.0:4370").rsplit(":", 1)[1])
    check(ports.get("dist") == dist_port, f"{name}: the dist port {ports.get('dist')} is the node's listen port {dist_port}")

    # The grace period covers the preStop pause and the handoff deadline.
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    handoff_s = topo["node"].get("handoff_deadline_ms", 25000) / 1000
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace >= pre_stop + handoff_s + 2,
          f"{name}: terminationGracePeriodSeconds {grace} >= preStop {pre_stop} s + handoff {handoff_s:g} s + 2 s")

    # Non-root, as the image is built.
    sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 10001, f"{name}: runs as uid 10001, not root")

    # The headless Service selects the pods and is the one discovery asks about.
    headless = [s for s in by_kind.get("Service", []) if s["spec"].get("clusterIP") == "None"]
    check(len(headless) == 1, f"{name}: one headless Service")
    if headless:
        h = headless[0]
        check(all(labels.get(k) == v for k, v in h["spec"]["selector"].items()), f"{name}: the headless Service selects the pods")
        text = cm["data"]["topology.toml"]
        check(h["metadata"]["name"] in text, f"{name}: the topology names the headless Service {h['metadata']['name']}")
        if wl["kind"] == "StatefulSet":
            check(wl["spec"].get("serviceName") == h["metadata"]["name"], f"{name}: serviceName is the headless Service")

    # A drain evicts one pod at a time, and the pods spread over machines and zones.
    pdbs = by_kind.get("PodDisruptionBudget", [])
    check(any(p["spec"].get("maxUnavailable") == 1 and all(labels.get(k) == v for k, v in p["spec"]["selector"].get("matchLabels", {}).items()) for p in pdbs),
          f"{name}: a PodDisruptionBudget with maxUnavailable 1 selects the pods")
    spread = {t.get("topologyKey") for t in pod.get("topologySpreadConstraints", [])
              if all(labels.get(k) == v for k, v in t.get("labelSelector", {}).get("matchLabels", {}).items())}
    check({"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= spread, f"{name}: the pods spread over hostname and zone")

    # RBAC: the ServiceAccount the pods use, and no more rights than discovery needs.
    sa = pod.get("serviceAccountName")
    check(any(s["metadata"]["name"] == sa for s in by_kind.get("ServiceAccount", [])), f"{name}: ServiceAccount {sa} is defined")
    check(not by_kind.get("ClusterRole") and not by_kind.get("ClusterRoleBinding"), f"{name}: no cluster-wide RBAC")
    strategy_uses_api = "strategy_kubernetes" in cm["data"]["topology.toml"]
    roles = by_kind.get("Role", [])
    if strategy_uses_api:
        allowed = {("discovery.k8s.io", "endpointslices"), ("", "pods")}
        granted = set()
        for role in roles:
            for rule in role.get("rules", []):
                check(sorted(rule.get("verbs", [])) == ["get", "list", "watch"],
                      f"{name}: Role {role['metadata']['name']} grants only get/list/watch ({rule.get('verbs')})")
                for g in rule.get("apiGroups", []):
                    for r in rule.get("resources", []):
                        granted.add((g, r))
        check(granted == allowed, f"{name}: the Role covers exactly endpointslices (discovery.k8s.io) and pods: {sorted(granted)}")
        bound = [b for b in by_kind.get("RoleBinding", [])
                 if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa for s in b.get("subjects", []))
                 and any(b["roleRef"]["name"] == r["metadata"]["name"] for r in roles)]
        check(len(bound) == 1, f"{name}: a RoleBinding gives the Role to ServiceAccount {sa}")
    else:
        check(not roles, f"{name}: no Role (its strategy reads nothing from the API)")
        check(pod.get("automountServiceAccountToken") is False, f"{name}: no API token mounted")

    # The image the manifests run is the one `./dev image` tags.
    version = re.search(r'^version = "(.*)"', open(os.path.join(ROOT, "Cargo.toml")).read(), re.M).group(1)
    check(c["image"] == f"wasmnode:{version}", f"{name}: image {c['image']} is the one ./dev image builds (wasmnode:{version})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default="1.33.0", help="the Kubernetes version whose schemas apply")
    ap.add_argument("--dump-topologies", metavar="DIR")
    a = ap.parse_args()
    variants = [K8S] + sorted(
        os.path.join(K8S, d) for d in os.listdir(K8S) if os.path.isfile(os.path.join(K8S, d, "kustomization.yaml"))
    )
    for v in variants:
        variant(v, a.version, a.dump_topologies)
    print(f"manifests: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
