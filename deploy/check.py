"""Offline checks of deploy/kubernetes, run by scripts/deploy-check.sh.

    python deploy/check.py --kubectl PATH [--root deploy/kubernetes] [--kube-version 1.29 ...]

1. Every kustomization builds (`kubectl kustomize`, offline), every file a
   kustomization names exists, and every manifest file under the root is
   named by a kustomization.
2. Every object of every build validates: core kinds against the schemas
   bundled with `kubernetes-validate`, strictly (unknown fields refused), for
   each Kubernetes version asked; custom kinds against the schemas in
   <root>/schemas (`<group>-<version>-<Kind>.json`) with `jsonschema`. A kind
   with neither is an error.
3. In the builds of whole installations (those with a Namespace), references
   hold: workload selectors match their pod templates; Services, PDBs,
   NetworkPolicies and ServiceMonitors select something; autoscalers,
   ConfigMaps, Secrets (and their keys), RuntimeClasses, ServiceAccounts and
   named probe ports exist; and every pod of the sandbox tier
   (`bulkhead.dev/role: sandbox`) has gVisor and an egress NetworkPolicy.

With --dockerfile PATH, also checks the Dockerfile's COPY sources against
the build context and its .dockerignore. With --bulkhead BIN, also loads
every container's configuration with the binary. With --self-test, also
breaks copies of the tree in known ways (MUTATIONS) and requires each to be
refused. Exits 1 listing every problem, 0 when there is none.
"""

import argparse
import json
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

KUSTOMIZATION = "kustomization.yaml"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def kustomization_dirs(root):
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if os.path.relpath(dirpath, root).split(os.sep)[0] == "schemas":
            continue
        if KUSTOMIZATION in filenames:
            found.append(dirpath)
    return found


def manifest_files(root):
    """YAML files under root that should be named by a kustomization."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if os.path.relpath(dirpath, root).split(os.sep)[0] == "schemas":
            continue
        for name in filenames:
            if name.endswith((".yaml", ".yml")) and name != KUSTOMIZATION:
                out.add(os.path.normpath(os.path.join(dirpath, name)))
    return out


def referenced_paths(kdir, problems):
    """Files and directories a kustomization names, as normalised paths."""
    with open(os.path.join(kdir, KUSTOMIZATION)) as f:
        k = yaml.safe_load(f) or {}
    named = []
    for key in ("resources", "components", "patchesStrategicMerge", "crds"):
        named += [p for p in k.get(key) or [] if isinstance(p, str)]
    for patch in (k.get("patches") or []) + (k.get("patchesJson6902") or []):
        if isinstance(patch, dict) and patch.get("path"):
            named.append(patch["path"])
    for gen in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
        for entry in (gen.get("files") or []) + (gen.get("envs") or []):
            named.append(entry.split("=", 1)[-1])
    out = set()
    for rel in named:
        if "://" in rel:
            problems.append(f"{kdir}/{KUSTOMIZATION}: remote resource {rel} (builds must work offline)")
            continue
        path = os.path.normpath(os.path.join(kdir, rel))
        if not os.path.exists(path):
            problems.append(f"{kdir}/{KUSTOMIZATION}: names {rel}, which does not exist")
        out.add(path)
    return out


def build(kubectl, kdir, problems):
    run = subprocess.run([kubectl, "kustomize", kdir], capture_output=True, text=True)
    if run.returncode != 0:
        problems.append(f"{kdir}: kustomize build failed: {run.stderr.strip()}")
        return []
    try:
        docs = [d for d in yaml.safe_load_all(run.stdout) if d is not None]
    except yaml.YAMLError as e:
        problems.append(f"{kdir}: the build is not YAML: {e}")
        return []
    for d in docs:
        if not isinstance(d, dict) or not d.get("kind") or not d.get("apiVersion"):
            problems.append(f"{kdir}: an object without apiVersion/kind: {str(d)[:120]}")
    return [d for d in docs if isinstance(d, dict) and d.get("kind") and d.get("apiVersion")]


def name_of(doc):
    return f"{doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}"


def load_crd_schemas(root):
    schemas = {}
    sdir = os.path.join(root, "schemas")
    if os.path.isdir(sdir):
        for name in sorted(os.listdir(sdir)):
            if not name.endswith(".json"):
                continue
            group, version, kind = name[: -len(".json")].rsplit("-", 2)
            with open(os.path.join(sdir, name)) as f:
                schema = json.load(f)
            jsonschema.Draft202012Validator.check_schema(schema)
            schemas[(f"{group}/{version}", kind)] = schema
    return schemas


def validate_object(doc, where, versions, crds, problems):
    key = (doc["apiVersion"], doc["kind"])
    if key in crds:
        validator = jsonschema.Draft202012Validator(crds[key])
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            path = "/".join(str(p) for p in err.absolute_path) or "(root)"
            problems.append(f"{where}: {name_of(doc)}: {path}: {err.message}")
        return "schemas/" + "-".join([doc["apiVersion"].replace("/", "-"), doc["kind"]]) + ".json"
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(
                f"{where}: {name_of(doc)}: no schema for {doc['apiVersion']} {doc['kind']} "
                f"(Kubernetes {version}, nor in schemas/)"
            )
            return None
        except kubernetes_validate.ValidationError as err:
            path = "/".join(str(p) for p in err.absolute_path) or "(root)"
            problems.append(f"{where}: {name_of(doc)} (Kubernetes {version}): {path}: {err.message}")
    return "kubernetes-validate " + ", ".join(versions)


def pod_spec(doc):
    spec = doc.get("spec") or {}
    if doc["kind"] in WORKLOADS:
        return ((spec.get("template") or {}).get("spec")) or {}
    return None


def pod_labels(doc):
    return ((((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels")) or {}


def selects(selector, labels):
    """matchLabels/matchExpressions against a label set."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_references(docs, where, problems):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    templates = [pod_labels(d) for d in workloads]

    def err(doc, msg):
        problems.append(f"{where}: {name_of(doc)}: {msg}")

    for d in workloads:
        sel = (d.get("spec") or {}).get("selector")
        if d["kind"] != "Job" and (not sel or not selects(sel, pod_labels(d))):
            err(d, "spec.selector does not match the pod template's labels")
        spec = pod_spec(d)
        rc = spec.get("runtimeClassName")
        if rc and rc not in by_kind.get("RuntimeClass", {}):
            err(d, f"runtimeClassName {rc} is not defined")
        sa = spec.get("serviceAccountName")
        if sa and sa not in by_kind.get("ServiceAccount", {}):
            err(d, f"serviceAccountName {sa} is not defined")
        for vol in spec.get("volumes") or []:
            cm = (vol.get("configMap") or {}).get("name")
            if cm and cm not in by_kind.get("ConfigMap", {}):
                err(d, f"volume {vol['name']}: ConfigMap {cm} is not defined")
        secrets = by_kind.get("Secret", {})
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if not ref or not secrets or ref.get("optional"):
                    continue
                secret = secrets.get(ref["name"])
                if secret is None:
                    err(d, f"env {env['name']}: Secret {ref['name']} is not defined")
                elif ref["key"] not in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}:
                    err(d, f"env {env['name']}: Secret {ref['name']} has no key {ref['key']}")
            port_names = {p.get("name") for p in c.get("ports") or [] if p.get("name")}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    err(d, f"container {c['name']}: {probe} names port {port}, which it does not declare")

    for d in by_kind.get("Service", {}).values():
        sel = (d.get("spec") or {}).get("selector") or {}
        matched = [w for w in workloads if selects({"matchLabels": sel}, pod_labels(w))]
        if not matched:
            err(d, "selects no pod template")
        for port in (d.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and not any(
                target == p.get("name")
                for w in matched
                for c in pod_spec(w).get("containers") or []
                for p in c.get("ports") or []
            ):
                err(d, f"targetPort {target} is no named port of the pods it selects")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for d in by_kind.get(kind, {}).values():
            spec = d.get("spec") or {}
            sel = spec.get("selector") if kind == "PodDisruptionBudget" else spec.get("podSelector")
            if sel and not any(selects(sel, t) for t in templates):
                err(d, "selects no pod template")
    for d in by_kind.get("ServiceMonitor", {}).values():
        sel = (d.get("spec") or {}).get("selector") or {}
        services = [s for s in by_kind.get("Service", {}).values()
                    if selects(sel, (s.get("metadata") or {}).get("labels") or {})]
        if not services:
            err(d, "selects no Service")
        for ep in (d.get("spec") or {}).get("endpoints") or []:
            if ep.get("port") and not any(
                ep["port"] == p.get("name") for s in services for p in (s.get("spec") or {}).get("ports") or []
            ):
                err(d, f"endpoint port {ep['port']} is no named port of the Services it selects")
    # Bulkhead's own invariants: pods that run tenants' code (the sandbox
    # tier) run under gVisor and behind an egress allow-list.
    egress_policies = [
        d for d in by_kind.get("NetworkPolicy", {}).values()
        if "Egress" in ((d.get("spec") or {}).get("policyTypes") or [])
    ]
    for d in by_kind.get("NetworkPolicy", {}).values():
        for t in (d.get("spec") or {}).get("policyTypes") or []:
            if t not in ("Ingress", "Egress"):
                err(d, f"policyTypes has {t!r}; only Ingress and Egress exist")
    for d in workloads:
        if pod_labels(d).get("bulkhead.dev/role") != "sandbox":
            continue
        if pod_spec(d).get("runtimeClassName") != "gvisor":
            err(d, "runs tenants' code (bulkhead.dev/role: sandbox) without runtimeClassName: gvisor")
        if not any(selects((p.get("spec") or {}).get("podSelector") or {}, pod_labels(d))
                   for p in egress_policies):
            err(d, "runs tenants' code (bulkhead.dev/role: sandbox) but no Egress NetworkPolicy selects it")
    if not any(pod_labels(d).get("bulkhead.dev/role") == "sandbox" for d in workloads):
        problems.append(f"{where}: no workload of the sandbox tier (bulkhead.dev/role: sandbox)")

    for kind in ("ScaledObject", "HorizontalPodAutoscaler"):
        for d in by_kind.get(kind, {}).values():
            ref = (d.get("spec") or {}).get("scaleTargetRef") or {}
            target_kind = ref.get("kind", "Deployment")
            if ref.get("name") not in by_kind.get(target_kind, {}):
                err(d, f"scaleTargetRef {target_kind}/{ref.get('name')} is not defined")
            target = by_kind.get(target_kind, {}).get(ref.get("name"))
            if target is not None and "replicas" in (target.get("spec") or {}):
                err(d, f"{target_kind}/{ref['name']} sets spec.replicas, which every apply would reset")


def check(root, kubectl, versions, quiet=False):
    """All the checks of one tree; returns the problems found."""
    problems = []
    crds = load_crd_schemas(root)
    kdirs = kustomization_dirs(root)
    if not kdirs:
        problems.append(f"{root}: no kustomization found")
    named = set()
    for kdir in kdirs:
        named |= referenced_paths(kdir, problems)
    for path in sorted(manifest_files(root) - named):
        problems.append(f"{path}: not named by any kustomization (add it to one, or remove it)")

    objects = 0
    checked_by = {}
    for kdir in kdirs:
        docs = build(kubectl, kdir, problems)
        where = os.path.relpath(kdir, root)
        for doc in docs:
            objects += 1
            how = validate_object(doc, where, versions, crds, problems)
            if how:
                checked_by.setdefault(how, set()).add(doc["kind"])
        if any(d["kind"] == "Namespace" for d in docs):
            check_references(docs, where, problems)
        if not quiet:
            print(f"deploy-check: {where}: {len(docs)} objects")
    if not quiet:
        for how, kinds in sorted(checked_by.items()):
            print(f"deploy-check: {how}: {', '.join(sorted(kinds))}")
        if not problems:
            print(f"deploy-check: {len(kdirs)} kustomizations, {objects} objects: all valid")
    return problems


# Deliberately broken copies of the tree, each of which the checks must
# refuse with a message containing the expected words: proof that a
# passing check means something. (file, text to replace, replacement or
# None to delete the file, expected words.)
MUTATIONS = [
    ("base/api.yaml", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSecond: 30",
     "terminationGracePeriodSecond"),
    ("base/api.yaml", "containerPort: 8080", 'containerPort: "8080"', "is not of type 'integer'"),
    ("sandbox/networkpolicy.yaml", "policyTypes:\n    - Egress", "policyTypes:\n    - Outbound",
     "only Ingress and Egress exist"),
    ("sandbox/worker.yaml", "        bulkhead.dev/egress: restricted\n", "",
     "no Egress NetworkPolicy selects it"),
    ("sandbox/worker.yaml", "      runtimeClassName: gvisor\n", "", "without runtimeClassName: gvisor"),
    ("sandbox/runtimeclass.yaml", "handler: runsc", "handler: [runsc]", "is not of type 'string'"),
    ("autoscaling/keda/scaledobject.yaml", 'threshold: "16"', "threshold: 16", "is not of type 'string'"),
    ("autoscaling/keda/scaledobject.yaml", "minReplicaCount: 1", "minReplicas: 1", "minReplicas"),
    ("monitoring/servicemonitor.yaml", "path: /metrics", "paths: /metrics", "paths"),
    ("base/service.yaml", "app.kubernetes.io/component: api\n  ports:",
     "app.kubernetes.io/component: apis\n  ports:", "selects no pod template"),
    ("sandbox/worker.yaml", "key: database-url", "key: database_url", "has no key database_url"),
    ("base/pdb.yaml", None, None, "names pdb.yaml, which does not exist"),
    ("base/stray.yaml", "", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stray\n",
     "not named by any kustomization"),
]


def self_test(root, kubectl, versions):
    """Runs every mutation on a copy of root; returns the failures."""
    import shutil
    import tempfile

    failures = []
    for path, old, new, expected in MUTATIONS:
        with tempfile.TemporaryDirectory() as tmp:
            copy = os.path.join(tmp, "kubernetes")
            shutil.copytree(root, copy)
            target = os.path.join(copy, path)
            if old is None:
                os.remove(target)
            elif old == "":
                with open(target, "w") as f:
                    f.write(new)
            else:
                with open(target) as f:
                    text = f.read()
                if text.count(old) != 1:
                    failures.append(f"{path}: the mutation's text occurs {text.count(old)} times, not once")
                    continue
                with open(target, "w") as f:
                    f.write(text.replace(old, new))
            problems = check(copy, kubectl, versions, quiet=True)
            label = f"{path}: " + ("deleted" if old is None else "added" if old == "" else f"{old!r} -> {new!r}")
            if any(expected in p for p in problems):
                hit = next(p for p in problems if expected in p)
                print(f"deploy-check: self-test: refused as expected: {label} -> {hit.replace(copy + '/', '')}")
            else:
                failures.append(f"{label}: not refused with {expected!r} (got: {problems or 'no problem'})")
    return failures


def config_check(root, kubectl, bulkhead):
    """Loads the configuration every container of the example installation
    would get — the rendered ConfigMap's bulkhead.toml, the container's
    literal environment, well-formed stand-ins for its secrets — with the
    real binary: `bulkhead --config … migrate` against an unreachable
    database must fail on the database, not on the configuration."""
    import base64
    import secrets as rand
    import tempfile

    problems = []
    kdir = os.path.join(root, "overlays", "example")
    docs = build(kubectl, kdir, problems)
    configmaps = [d for d in docs if d["kind"] == "ConfigMap" and "bulkhead.toml" in (d.get("data") or {})]
    if len(configmaps) != 1:
        return problems + [f"{kdir}: expected one ConfigMap with bulkhead.toml, found {len(configmaps)}"]
    stand_ins = {
        "database-url": "postgres://bulkhead@127.0.0.1:1/unreachable",
        "redis-url": "redis://127.0.0.1:1/0",
        "master-key": base64.b64encode(rand.token_bytes(32)).decode(),
        "operator-key": "bh_op_" + rand.token_hex(6) + "_"
        + base64.urlsafe_b64encode(rand.token_bytes(32)).decode().rstrip("="),
    }
    with tempfile.TemporaryDirectory() as tmp:
        toml = os.path.join(tmp, "bulkhead.toml")
        with open(toml, "w") as f:
            f.write(configmaps[0]["data"]["bulkhead.toml"])
        for d in docs:
            spec = pod_spec(d)
            if spec is None:
                continue
            for c in spec.get("containers") or []:
                args = list(c.get("args") or [])
                if "--config" not in args or args[-1] not in ("serve", "worker", "migrate"):
                    problems.append(f"{name_of(d)}: container {c['name']}: args {args} are not --config FILE serve|worker|migrate")
                    continue
                args[args.index("--config") + 1] = toml
                args[-1] = "migrate"
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
                for e in c.get("env") or []:
                    if "value" in e:
                        env[e["name"]] = e["value"]
                    else:
                        key = ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("key")
                        if key in stand_ins:
                            env[e["name"]] = stand_ins[key]
                run = subprocess.run([bulkhead] + args, env=env, capture_output=True, text=True, timeout=60)
                if run.returncode != 0 and "Error: database" not in run.stderr:
                    problems.append(f"{name_of(d)}: container {c['name']}: its configuration is refused: "
                                    f"{run.stderr.strip()[:400]}")
                else:
                    print(f"deploy-check: configuration of {name_of(d)}/{c['name']} loads")
    return problems


def dockerfile_check(dockerfile, context):
    """Every COPY source of the Dockerfile (outside --from stages) exists in
    the build context and is not left out by its .dockerignore."""
    import fnmatch

    problems = []
    ignore = []
    ignore_file = os.path.join(context, ".dockerignore")
    if os.path.exists(ignore_file):
        with open(ignore_file) as f:
            ignore = [ln.strip().rstrip("/") for ln in f if ln.strip() and not ln.startswith("#")]

    def ignored(rel):
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(pre, pat) or fnmatch.fnmatch(pre, pat.removeprefix("**/"))
                   for pat in ignore for pre in prefixes)

    with open(dockerfile) as f:
        lines = f.read().replace("\\\n", " ").splitlines()
    for ln in lines:
        words = ln.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]) or len(args) < 2:
            continue
        for src in args[:-1]:
            rel = os.path.normpath(src)
            if rel == ".":
                continue
            if not os.path.exists(os.path.join(context, rel)):
                problems.append(f"{dockerfile}: COPY {src}: not in the build context")
            elif ignored(rel):
                problems.append(f"{dockerfile}: COPY {src}: excluded by .dockerignore")
    if not problems:
        print(f"deploy-check: {dockerfile}: every COPY source is in the build context")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "kubernetes"))
    ap.add_argument("--kubectl", required=True)
    ap.add_argument("--kube-version", action="append", dest="versions")
    ap.add_argument("--bulkhead", metavar="BIN",
                    help="also load every container's configuration with this bulkhead binary")
    ap.add_argument("--dockerfile", metavar="PATH",
                    help="also check that the Dockerfile's COPY sources are in the build context (its parent's parent)")
    ap.add_argument("--self-test", action="store_true",
                    help="also check that deliberately broken copies of the tree are refused")
    args = ap.parse_args()
    root = os.path.normpath(args.root)
    versions = args.versions or ["1.29.0", "1.37.0"]

    problems = check(root, args.kubectl, versions)
    if args.dockerfile:
        context = os.path.dirname(os.path.dirname(os.path.abspath(args.dockerfile)))
        problems += dockerfile_check(args.dockerfile, context)
    if args.bulkhead and not problems:
        problems = config_check(root, args.kubectl, args.bulkhead)
    if args.self_test and not problems:
        problems = [f"self-test: {f}" for f in self_test(root, args.kubectl, versions)]
        if not problems:
            print(f"deploy-check: self-test: all {len(MUTATIONS)} broken copies refused")
    if problems:
        for p in problems:
            print(f"deploy-check: FAIL {p}", file=sys.stderr)
        print(f"deploy-check: {len(problems)} problem(s) in {root}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
