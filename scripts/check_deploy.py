"""The checks behind scripts/check-deploy (see there)."""
import argparse
import copy
import fnmatch
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests promise to work on (preStop's sleep
# action is on by default from 1.30).
KUBERNETES = "1.31.0"
CORE_GROUPS = ("v1", "apps/v1", "policy/v1", "autoscaling/v2")

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def load_kustomization(path):
    """Render a kustomization: its resources (files or bases, recursively),
    then its `images` and JSON 6902 `patches`. Only what ours use."""
    k = yaml.safe_load(path.read_text())
    docs = []
    for res in k.get("resources", []):
        target = (path.parent / res).resolve()
        if target.is_dir():
            docs += load_kustomization(target / "kustomization.yaml")
        else:
            docs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    for image in k.get("images", []):
        for d in docs:
            for c in pod_spec(d).get("containers", []) if pod_spec(d) else []:
                if c["image"] == image["name"] or c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image.get('newTag', 'latest')}"
    for patch in k.get("patches", []):
        t = patch["target"]
        hits = [d for d in docs if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]]
        check(hits, f"{path}: patch target {t} matches nothing")
        for d in hits:
            for op in yaml.safe_load(patch["patch"]):
                apply_op(d, op, f"{path}: {op}")
    return docs


def apply_op(doc, op, what):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node = doc
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.get(p)
        if node is None:
            check(False, f"{what}: path does not exist")
            return
    last = parts[-1]
    if op["op"] == "remove":
        check(last in node if isinstance(node, dict) else int(last) < len(node), f"{what}: nothing to remove")
        if isinstance(node, dict):
            node.pop(last, None)
        else:
            node.pop(int(last))
    elif op["op"] in ("add", "replace"):
        if isinstance(node, list):
            node.append(op["value"]) if last == "-" else node.insert(int(last), op["value"])
        else:
            node[last] = op["value"]


def pod_spec(d):
    return d.get("spec", {}).get("template", {}).get("spec") if d.get("kind") == "Deployment" else None


def validate_schemas(docs, label):
    core = [d for d in docs if d["apiVersion"] in CORE_GROUPS]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(core, f)
    p = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", KUBERNETES, f.name],
                       capture_output=True, text=True)
    check(p.returncode == 0, f"{label}: schema: {p.stdout}{p.stderr}")
    return len(core)


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def cross_check(docs, label, bin_path):
    by = {}
    for d in docs:
        by.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deploy = by["Deployment"]["switchyard"]
    spec = pod_spec(deploy)
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    check(matches(deploy["spec"]["selector"]["matchLabels"], pod_labels), f"{label}: Deployment selector")
    c = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    svc = by["Service"]["switchyard"]
    check(matches(svc["spec"]["selector"], pod_labels), f"{label}: Service selector")
    check(all(p["targetPort"] in ports for p in svc["spec"]["ports"]), f"{label}: Service targetPort")
    check(c["readinessProbe"]["httpGet"]["path"] == "/ready", f"{label}: readiness on /ready")
    check(c["livenessProbe"]["httpGet"]["path"] == "/health", f"{label}: liveness on /health")
    check("preStop" in c.get("lifecycle", {}), f"{label}: preStop for the drain")
    check(spec["terminationGracePeriodSeconds"] > 30, f"{label}: the grace covers shutdown_grace_s (30)")
    check(spec["securityContext"].get("runAsNonRoot") is True, f"{label}: non-root")
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in c["volumeMounts"]:
        check(m["name"] in volumes, f"{label}: volume {m['name']}")
    for v in volumes.values():
        if "configMap" in v:
            check(v["configMap"]["name"] in by.get("ConfigMap", {}), f"{label}: ConfigMap {v['configMap']['name']}")
    for ref in c.get("envFrom", []):
        check(ref["secretRef"]["name"] in by.get("Secret", {}), f"{label}: Secret {ref['secretRef']['name']}")
    secret = by["Secret"]["switchyard"]["stringData"]
    check(secret["SWITCHYARD_AUDIT_DB"].startswith("postgres://"), f"{label}: the fleet shares a Postgres store")
    # The container's arguments are ones the binary takes.
    help_text = subprocess.run([bin_path, "serve", "--help"], capture_output=True, text=True).stdout
    for arg in c["args"]:
        if arg.startswith("--"):
            check(arg in help_text, f"{label}: `switchyard serve` has no {arg}")
    config_path = c["args"][c["args"].index("--config") + 1]
    mount = next(m for m in c["volumeMounts"] if config_path.startswith(m["mountPath"]))
    cm = by["ConfigMap"][volumes[mount["name"]]["configMap"]["name"]]
    key = config_path[len(mount["mountPath"]):].lstrip("/")
    check(key in cm["data"], f"{label}: {config_path} is not in the ConfigMap")
    # The catalog is one switchyard accepts (schema, routing profiles).
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "models.toml").write_text(cm["data"][key])
        (Path(tmp) / "none.jsonl").write_text("")
        p = subprocess.run([bin_path, "route", "--config", f"{tmp}/models.toml", "--input", f"{tmp}/none.jsonl"],
                           capture_output=True, text=True, env={"RUST_BACKTRACE": "0", "PATH": "/usr/bin:/bin"})
        check(p.returncode == 0, f"{label}: the ConfigMap's catalog: {p.stderr.strip()}")
    # Autoscaling on the queue, and the endpoint picker's pool.
    so = by["ScaledObject"]["switchyard"]
    check(so["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"], f"{label}: KEDA target")
    check(any("vllm:num_requests_waiting" in t["metadata"]["query"] for t in so["spec"]["triggers"]),
          f"{label}: KEDA scales on vllm:num_requests_waiting")
    pool = by["InferencePool"]["switchyard"]
    check(matches(pool["spec"]["selector"]["matchLabels"], pod_labels), f"{label}: InferencePool selector")
    check({p["number"] for p in pool["spec"]["targetPorts"]} <= set(ports.values()), f"{label}: InferencePool port")
    check(pool["spec"]["endpointPickerRef"]["name"], f"{label}: InferencePool endpoint picker")
    route = by["HTTPRoute"]["switchyard"]
    refs = [b for r in route["spec"]["rules"] for b in r["backendRefs"]]
    check(any(b["kind"] == "InferencePool" and b["name"] == "switchyard" for b in refs), f"{label}: HTTPRoute → pool")
    return spec


def dockerignored(path, patterns):
    rel = str(path)
    return any(fnmatch.fnmatch(rel, p.rstrip("/")) or fnmatch.fnmatch(rel, p.rstrip("/") + "/*")
               or rel.startswith(p.rstrip("/").lstrip("*/") + "/") for p in patterns)


def check_dockerfiles():
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    for big in ("target", "models"):
        check(dockerignored(Path(big), patterns), f".dockerignore: {big}/ would be sent to the daemon")
    for name in ("Dockerfile", "Dockerfile.cuda"):
        lines = (ROOT / name).read_text().splitlines()
        for line in lines:
            words = line.split()
            if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
                for src in words[1:-1]:
                    if src == ".":
                        continue
                    check((ROOT / src).exists(), f"{name}: COPY {src} does not exist")
                    check(not dockerignored(Path(src), patterns), f"{name}: COPY {src} is excluded by .dockerignore")
        if name == "Dockerfile":
            check(any(l.startswith("USER ") and "root" not in l and l.split()[1].split(":")[0] != "0" for l in lines),
                  f"{name}: runs as a non-root user")
            check(any(l.strip().startswith("CMD curl -fsS http://127.0.0.1:8080/health") for l in lines),
                  f"{name}: HEALTHCHECK on /health")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    counted = 0
    for label, path in [("base", K8S / "kustomization.yaml"), ("cpu", K8S / "cpu" / "kustomization.yaml")]:
        docs = load_kustomization(path)
        counted += validate_schemas(docs, label)
        spec = cross_check(docs, label, args.bin)
        gpu = spec["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
        check((gpu is not None) == (label == "base"), f"{label}: GPU request only on the GPU base")
    check_dockerfiles()
    if failures:
        print("deploy checks failed:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(f"deploy checks passed: {counted} Kubernetes objects against the {KUBERNETES} schemas, "
          "cross-references, the ConfigMap's catalog, the Dockerfiles' context")


if __name__ == "__main__":
    main()
