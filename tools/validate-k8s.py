#!/usr/bin/env python3
"""Validates k8s/ offline: each kustomization rendered as kustomize renders it, every object
against the Kubernetes API's own schemas (kubernetes-validate, strict: unknown fields are
errors), and what wasmnode needs of them: least-privilege RBAC, the downward API and the
Secret, probes on the port the topology serves, a grace period that covers the handoff,
the recommended app.kubernetes.io labels with selectors on name and instance only, and a
discovery that asks about the headless Service by its rendered name. Then an overlay with
a namePrefix (and one with a nameSuffix) of each variant, checked the same way: every
name changes consistently, the Service the topology's discovery looks up included.

    python3 tools/validate-k8s.py [--version 1.33.0] [--dump-topologies DIR]

The renderer is a small kustomize in Python: resources (files and directories), namePrefix,
nameSuffix, labels, images and configurations (nameReference), with kustomize's name
references for the kinds k8s/ uses; a kustomization with any other field is a failure.
When kubectl is on PATH, `kubectl kustomize` renders each one too and must agree.

--dump-topologies writes each ConfigMap's topology.toml to DIR/<variant>/topology.toml so
that a test can run `wasmnode check` on it inside the image. Prints one line per finding
and `manifests: N passed, N failed`; exits 1 when anything failed.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import kubernetes_validate
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
K8S = os.path.join(ROOT, "k8s")
NOT_KUBERNETES = {"swarm-stack.yml"}  # a Docker stack file lives beside the manifests
VERSION = re.search(r'^version = "(.*)"', open(os.path.join(ROOT, "Cargo.toml")).read(), re.M).group(1)

# The recommended labels (kubernetes.io/docs/concepts/overview/working-with-objects/common-labels).
RECOMMENDED = [f"app.kubernetes.io/{k}" for k in ("name", "instance", "version", "component", "part-of", "managed-by")]
SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance"}

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


# --- A small kustomize -------------------------------------------------------------------

POD_TEMPLATE = {"Deployment": "spec/template", "StatefulSet": "spec/template", "DaemonSet": "spec/template",
                "ReplicaSet": "spec/template", "Job": "spec/template"}
CONTAINERS = ("containers", "initContainers")

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "namePrefix", "nameSuffix", "labels", "images", "configurations"}


def builtin_name_references():
    """kustomize's nameReference entries for the kinds k8s/ uses: (kind, referrer kind, path)."""
    refs = []
    for wl, tpl in POD_TEMPLATE.items():
        pod = f"{tpl}/spec"
        for cs in CONTAINERS:
            refs += [
                ("ConfigMap", wl, f"{pod}/{cs}/env/valueFrom/configMapKeyRef/name"),
                ("ConfigMap", wl, f"{pod}/{cs}/envFrom/configMapRef/name"),
                ("Secret", wl, f"{pod}/{cs}/env/valueFrom/secretKeyRef/name"),
                ("Secret", wl, f"{pod}/{cs}/envFrom/secretRef/name"),
            ]
        refs += [
            ("ConfigMap", wl, f"{pod}/volumes/configMap/name"),
            ("ConfigMap", wl, f"{pod}/volumes/projected/sources/configMap/name"),
            ("Secret", wl, f"{pod}/volumes/secret/secretName"),
            ("Secret", wl, f"{pod}/volumes/projected/sources/secret/name"),
            ("Secret", wl, f"{pod}/imagePullSecrets/name"),
            ("ServiceAccount", wl, f"{pod}/serviceAccountName"),
        ]
    refs += [
        ("Service", "StatefulSet", "spec/serviceName"),
        ("ServiceAccount", "RoleBinding", "subjects/name"),
        ("ServiceAccount", "ClusterRoleBinding", "subjects/name"),
        ("Role", "RoleBinding", "roleRef/name"),
        ("ClusterRole", "RoleBinding", "roleRef/name"),
        ("ClusterRole", "ClusterRoleBinding", "roleRef/name"),
    ]
    return refs


def walk(node, parts, fn, create=False):
    """Calls fn(mapping, key) for each field at the path; sequences on the way are entered."""
    if isinstance(node, list):
        for item in node:
            walk(item, parts, fn, create)
        return
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    if not rest:
        fn(node, head)
        return
    if head not in node and create:
        node[head] = {}
    if head in node:
        walk(node[head], rest, fn, create)


def shown(path):
    rel = os.path.relpath(path, ROOT)
    return "the overlay" if rel.startswith("..") else rel


class Res:
    def __init__(self, doc, origin):
        self.doc, self.origin = doc, origin

    @property
    def kind(self):
        return self.doc.get("kind")

    @property
    def name(self):
        return self.doc.get("metadata", {}).get("name")


def render(dirpath, problems):
    """The objects `kustomize build dirpath` gives (for the fields the renderer knows) and
    the name references in effect; problems collects what it cannot render."""
    kust = load_all(os.path.join(dirpath, "kustomization.yaml"))[0]
    for field in sorted(set(kust) - KUSTOMIZATION_FIELDS):
        problems.append(f"{shown(dirpath)}/kustomization.yaml: `{field}` is not something tools/validate-k8s.py renders")
    refs = builtin_name_references()
    for cfg in kust.get("configurations", []):
        for entry in load_all(os.path.join(dirpath, cfg))[0].get("nameReference", []):
            for fs in entry.get("fieldSpecs", []):
                refs.append((entry["kind"], fs["kind"], fs["path"]))
    out = []
    for r in kust.get("resources", []):
        path = os.path.normpath(os.path.join(dirpath, r))
        if os.path.isdir(path):
            sub, sub_refs = render(path, problems)
            out += sub
            refs += [x for x in sub_refs if x not in refs]
        elif os.path.isfile(path):
            out += [Res(d, os.path.relpath(path, K8S)) for d in load_all(path)]
        else:
            problems.append(f"{shown(dirpath)}: resource {r} does not exist")

    # namePrefix / nameSuffix, then every reference to a renamed object follows it.
    prefix, suffix = kust.get("namePrefix", ""), kust.get("nameSuffix", "")
    if prefix or suffix:
        renamed = {}
        for o in out:
            old = o.name
            o.doc["metadata"]["name"] = f"{prefix}{old}{suffix}"
            renamed[(o.kind, old)] = o.doc["metadata"]["name"]
        for kind, referrer, path in refs:
            for o in out:
                if o.kind != referrer:
                    continue

                def fix(m, k, kind=kind, o=o, path=path):
                    if not isinstance(m.get(k), str) or (kind, m[k]) not in renamed:
                        return
                    if path == "subjects/name" and m.get("kind") != kind:
                        return
                    if path == "roleRef/name" and o.doc.get("roleRef", {}).get("kind") != kind:
                        return
                    m[k] = renamed[(kind, m[k])]

                walk(o.doc, path.split("/"), fix)

    # labels: metadata always; pod templates with includeTemplates; selectors (and the
    # templates) with includeSelectors, where kustomize puts common labels.
    for entry in kust.get("labels", []):
        pairs = {k: str(v) for k, v in entry.get("pairs", {}).items()}

        def add(m, k, pairs=pairs):
            if m.get(k) is None:
                m[k] = {}
            m[k].update(pairs)

        for o in out:
            walk(o.doc, ["metadata", "labels"], add, create=True)
            tpl = POD_TEMPLATE.get(o.kind)
            if tpl and (entry.get("includeTemplates") or entry.get("includeSelectors")):
                walk(o.doc, f"{tpl}/metadata/labels".split("/"), add, create=True)
            if entry.get("includeSelectors"):
                if o.kind == "Service":
                    walk(o.doc, ["spec", "selector"], add)
                if tpl or o.kind == "PodDisruptionBudget":
                    walk(o.doc, ["spec", "selector", "matchLabels"], add, create=True)
                if tpl:
                    walk(o.doc, f"{tpl}/spec/topologySpreadConstraints/labelSelector/matchLabels".split("/"), add)

    # images: name (without tag) -> newName, newTag, digest.
    for img in kust.get("images", []):
        for o in out:
            tpl = POD_TEMPLATE.get(o.kind)
            if not tpl:
                continue

            def retag(m, k, img=img):
                ref = m.get(k, "")
                base = ref.split("@")[0]
                name = base.rsplit(":", 1)[0] if ":" in base.rsplit("/", 1)[-1] else base
                if name != img["name"]:
                    return
                tag = ref[len(name):]
                name = img.get("newName", name)
                if "digest" in img:
                    tag = "@" + img["digest"]
                elif "newTag" in img:
                    tag = ":" + str(img["newTag"])
                m[k] = name + tag

            for cs in CONTAINERS:
                walk(o.doc, f"{tpl}/spec/{cs}/image".split("/"), retag)
    return out, refs


def kubectl_render(dirpath):
    """`kubectl kustomize dirpath`, or None without kubectl; (error, None) when it fails."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    try:
        p = subprocess.run([kubectl, "kustomize", dirpath], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{kubectl}: {e}", None
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or ["(no output)"])[-1], None
    return None, [d for d in yaml.safe_load_all(p.stdout) if d is not None]


def agree_with_kubectl(name, dirpath, objs):
    got = kubectl_render(dirpath)
    if got is None:
        print(f"skip  {name}: kubectl is not installed: the rendering is not compared with `kubectl kustomize`")
        return
    err, docs = got
    if err:
        check(False, f"{name}: `kubectl kustomize` fails: {err}")
        return

    def key(d):
        return (d.get("kind"), d.get("metadata", {}).get("name"))

    mine = sorted((o.doc for o in objs), key=key)
    theirs = sorted(docs, key=key)
    diff = next((f"{key(a)} differs" for a, b in zip(mine, theirs) if a != b), None)
    if len(mine) != len(theirs):
        diff = f"{len(mine)} objects here, {len(theirs)} from kubectl: {sorted(map(key, theirs))}"
    check(diff is None, f"{name}: the rendering is what `kubectl kustomize` gives" + (f" ({diff})" if diff else ""))


# --- What wasmnode needs of a rendering ----------------------------------------------------

def expand(s, env):
    """config.rs's `${VAR}` / `${VAR:-default}` expansion; None when a variable is missing."""
    def one(m):
        var, _, default = m.group(1).partition(":-")
        value = env.get(var) or (default if ":-" in m.group(1) else None)
        if value is None:
            raise KeyError(var)
        return value
    try:
        return re.sub(r"\$\{([^}]*)\}", one, s)
    except KeyError:
        return None


def check_rendering(name, objs, version, dump=None, expect_service=None):
    """Every check on one rendered variant; expect_service: the headless Service's name the
    discovery must ask about (an overlay's prefixed or suffixed name)."""
    for o in objs:
        doc = o.doc
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            check(True, f"{name}: {o.origin} {o.kind}/{o.name} matches the {version} schema (strict)")
        except kubernetes_validate.ValidationError as e:
            path_ = ".".join(str(p) for p in e.path)
            check(False, f"{name}: {o.origin} {o.kind}/{o.name}: {path_}: {e.message}")

    by_kind = {}
    for o in objs:
        by_kind.setdefault(o.kind, []).append(o.doc)

    # The recommended labels on every object: the same values throughout (one instance),
    # name wasmnode, the version Cargo.toml says, managed by kustomize.
    missing, values = [], {k: set() for k in RECOMMENDED}
    for o in objs:
        labels = o.doc.get("metadata", {}).get("labels") or {}
        if [k for k in RECOMMENDED if not labels.get(k)]:
            missing.append(f"{o.kind}/{o.name} lacks {', '.join(k for k in RECOMMENDED if not labels.get(k))}")
        for k in RECOMMENDED:
            values[k].add(labels.get(k))
    check(not missing, f"{name}: every object has the labels {', '.join(RECOMMENDED)}" + (f" ({'; '.join(missing)})" if missing else ""))
    want = {"app.kubernetes.io/name": "wasmnode", "app.kubernetes.io/version": VERSION, "app.kubernetes.io/managed-by": "kustomize"}
    check(all(len(v) == 1 for v in values.values()) and all(values[k] == {v} for k, v in want.items()),
          f"{name}: every object has the same values: " + ", ".join(f"{k.split('/')[1]}={'|'.join(sorted(map(str, v)))}" for k, v in values.items())
          + f" (name wasmnode, version {VERSION} from Cargo.toml, managed-by kustomize)")

    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    check(len(workloads) == 1, f"{name}: one workload (Deployment or StatefulSet)")
    if not workloads:
        return
    wl = workloads[0]
    pod = wl["spec"]["template"]["spec"]
    labels = wl["spec"]["template"]["metadata"]["labels"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    missing = [k for k in RECOMMENDED if not labels.get(k)]
    check(not missing and all(labels.get(k) == wl["metadata"]["labels"].get(k) for k in RECOMMENDED),
          f"{name}: the pod template has the workload's recommended labels" + (f" (missing {', '.join(missing)})" if missing else ""))

    # Selectors on name and instance only: the labels that never change on an upgrade.
    def selects_pods(sel, what):
        check(set(sel) == SELECTOR_KEYS and all(labels.get(k) == v for k, v in sel.items()),
              f"{name}: {what} selects the pods by app.kubernetes.io/name and /instance only ({', '.join(f'{k}={v}' for k, v in sel.items())})")

    selects_pods(wl["spec"]["selector"].get("matchLabels", {}), f"{wl['kind']}/{wl['metadata']['name']}")
    for s in by_kind.get("Service", []):
        selects_pods(s["spec"].get("selector", {}), f"Service/{s['metadata']['name']}")
    for p in by_kind.get("PodDisruptionBudget", []):
        selects_pods(p["spec"]["selector"].get("matchLabels", {}), f"PodDisruptionBudget/{p['metadata']['name']}")
    for t in pod.get("topologySpreadConstraints", []):
        selects_pods(t.get("labelSelector", {}).get("matchLabels", {}), f"the spread over {t.get('topologyKey')}")

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
          f"{name}: runs --config {config_arg}, the mounted ConfigMap {cm['metadata']['name']}")
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

    # The headless Service selects the pods and is the one discovery asks about, as the
    # pod sees its topology: ${VAR} expanded from the container's env (values set in the
    # manifest; the downward API's as a pod of this workload would have them).
    headless = [s for s in by_kind.get("Service", []) if s["spec"].get("clusterIP") == "None"]
    check(len(headless) == 1, f"{name}: one headless Service")
    if headless:
        h = headless[0]["metadata"]["name"]
        if expect_service is not None:
            check(h == expect_service, f"{name}: the headless Service is {h} (expected {expect_service})")
        pod_name = f"{wl['metadata']['name']}-0"
        pod_env = {k: e["value"] for k, e in env.items() if "value" in e}
        pod_env.update({"POD_IP": "10.0.0.1", "POD_NAME": pod_name, "NAMESPACE": "default"})
        asks = []
        for tname, t in topo.get("topology", {}).items():
            cfg = t.get("config", {})
            strategy = os.path.basename(t.get("strategy", ""))
            if strategy == "strategy_kubernetes.wasm":
                asks.append((f"topology.{tname}.config.kubernetes_service_name", expand(cfg.get("kubernetes_service_name", ""), pod_env)))
            elif strategy == "strategy_dns_srv.wasm":
                asks.append((f"topology.{tname}.config.service", expand(cfg.get("service", ""), pod_env)))
            elif strategy == "strategy_dns_poll.wasm":
                q = expand(cfg.get("query", ""), pod_env)
                asks.append((f"topology.{tname}.config.query", q and q.split(".")[0]))
        check(bool(asks), f"{name}: the topology discovers through the headless Service (kubernetes, dns_srv or dns_poll)")
        for key, svc in asks:
            check(svc == h, f"{name}: {key} is {svc} in the pod: the headless Service {h}")
        if wl["kind"] == "StatefulSet":
            check(wl["spec"].get("serviceName") == h, f"{name}: serviceName is the headless Service {h}")
            node = expand(topo["node"].get("name", ""), pod_env)
            want = f"{pod_name}.{h}.default.svc.cluster.local"
            check(node is not None and node.split("@", 1)[-1] == want, f"{name}: pod {pod_name} is node {node} ({want}: its name under the headless Service)")

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
    check(c["image"] == f"wasmnode:{VERSION}", f"{name}: image {c['image']} is the one ./dev image builds (wasmnode:{VERSION})")


def variant(dirpath, version, dump):
    name = os.path.relpath(dirpath, K8S)
    name = "deployment" if name == "." else name
    kust_path = os.path.join(dirpath, "kustomization.yaml")
    check(os.path.isfile(kust_path), f"{name}: has a kustomization.yaml")
    kust = load_all(kust_path)[0]
    check(kust.get("kind") == "Kustomization", f"{name}: kustomization.yaml is a Kustomization")
    listed = kust.get("resources", [])
    configs = kust.get("configurations", [])
    on_disk = sorted(
        f for f in os.listdir(dirpath)
        if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml" and f not in NOT_KUBERNETES and f not in configs
    )
    check(sorted(listed) == on_disk, f"{name}: the kustomization lists every manifest ({', '.join(on_disk)})")
    for cfg in configs:
        check(os.path.isfile(os.path.join(dirpath, cfg)), f"{name}: the transformer configuration {cfg} exists")

    problems = []
    objs, _ = render(dirpath, problems)
    for p in problems:
        check(False, f"{name}: {p}")
    agree_with_kubectl(name, dirpath, objs)
    check_rendering(name, objs, version, dump)
    headless = next((o.name for o in objs if o.kind == "Service" and o.doc["spec"].get("clusterIP") == "None"), None)

    # Overlays: a prefix (a second installation beside this one, with its own instance
    # label, selectors included) and a suffix. Every name follows, the topology's too.
    instance = next((o.doc["metadata"]["labels"].get("app.kubernetes.io/instance") for o in objs), "myapp")
    overlays = [
        ("namePrefix staging-", {"namePrefix": "staging-",
                                  "labels": [{"pairs": {"app.kubernetes.io/instance": f"staging-{instance}"}, "includeSelectors": True}]},
         f"staging-{headless}"),
        ("nameSuffix -blue", {"nameSuffix": "-blue"}, f"{headless}-blue"),
    ]
    for what, fields, expect in overlays:
        with tempfile.TemporaryDirectory(prefix="wasmnode-overlay-") as tmp:
            kust = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                    "resources": [os.path.relpath(dirpath, tmp)], **fields}
            with open(os.path.join(tmp, "kustomization.yaml"), "w") as f:
                yaml.safe_dump(kust, f, sort_keys=False)
            oname = f"{name}+{what}"
            problems = []
            objs, _ = render(tmp, problems)
            for p in problems:
                check(False, f"{oname}: {p}")
            agree_with_kubectl(oname, tmp, objs)
            check_rendering(oname, objs, version, expect_service=expect)


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

    # The image those manifests run says which version it is (OCI labels, Dockerfile).
    dockerfile = open(os.path.join(ROOT, "Dockerfile")).read()
    arg = re.search(r"^ARG VERSION=(\S+)", dockerfile, re.M)
    check(arg is not None and arg.group(1) == VERSION, f"Dockerfile: ARG VERSION defaults to {arg and arg.group(1)} (Cargo.toml: {VERSION})")
    for label in ("version", "source", "licenses", "title", "description"):
        check(f"org.opencontainers.image.{label}=" in dockerfile, f"Dockerfile: the image carries org.opencontainers.image.{label}")
    print(f"manifests: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
