#!/usr/bin/env python3
"""Lints and renders helm/velro-authz for each values file, validates every
rendered manifest against the Kubernetes schemas, and checks what a platform
team relies on (the plan's autoscaling numbers, the PDB, restricted pod
security, one migration per release, drain timings, the config checksum).

Runs offline: helm-python-sdk (no helm binary) and kubernetes-validate, from
the venv scripts/test.sh makes. The Prometheus operator's objects have no
bundled schema: their rules go through promtool instead, and the config file
in the ConfigMap through `velro-authz config` (the binary in $VELRO_BIN or
target/debug).
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "velro-authz"
KUBE_VERSION = "1.30.0"
VALUES_FILES = ["values.yaml", "values-production.yaml"]


class Failed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failed(what)


def render(values):
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(values)
    rendered = chart.render(values, name="velro-authz", namespace="velro", is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def lint(values):
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [
        {"severity": 3, "path": "", "error": e} for e in report["errors"]
    ]
    check(not problems, f"helm lint --strict: {problems}")


def validate(path, doc):
    api = doc.get("apiVersion", "")
    if api.startswith("monitoring.coreos.com/"):
        check(api == "monitoring.coreos.com/v1", f"{path}: {api}")
        return
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise Failed(f"{path} ({doc['kind']}): {e.message} at {list(e.path)}") from e


def by_kind(docs):
    kinds = {}
    for _, doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def promtool_check(rule):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(rule["spec"], f)
    try:
        out = subprocess.run(
            ["promtool", "check", "rules", f.name], capture_output=True, text=True
        )
        check(out.returncode == 0, f"promtool check rules (PrometheusRule): {out.stdout}{out.stderr}")
    finally:
        os.unlink(f.name)


def velro_binary():
    path = os.environ.get("VELRO_BIN") or str(ROOT / "target" / "debug" / "velro-authz")
    check(os.access(path, os.X_OK), f"no velro-authz binary at {path}: run cargo build first")
    return path


def config_parses(config_map):
    text = config_map["data"]["velro-authz.toml"]
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        out = subprocess.run(
            [velro_binary(), "config", "--config", f.name], capture_output=True, text=True
        )
        check(out.returncode == 0, f"the chart's config file is refused: {out.stderr}")
    finally:
        os.unlink(f.name)


def check_common(docs, values_file):
    kinds = by_kind(docs)
    (deployment,) = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    psc, csc = pod["securityContext"], container["securityContext"]
    check(psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault",
          f"{values_file}: pod securityContext {psc}")
    check(csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
          and csc["capabilities"]["drop"] == ["ALL"], f"{values_file}: container securityContext {csc}")
    check(pod["automountServiceAccountToken"] is False, "no API token in the pods")
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    check(writable == {"/var/lib/velro-authz", "/tmp"}, f"writable mounts: {writable}")
    check("checksum/config" in deployment["spec"]["template"]["metadata"]["annotations"],
          "config checksum annotation")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check(probe in container, f"{values_file}: {probe}")
    drain = int(env["VELRO_DRAIN_DELAY"].rstrip("s"))
    timeout = int(env["VELRO_REQUEST_TIMEOUT"].rstrip("s"))
    readiness = container["readinessProbe"]
    check(readiness["periodSeconds"] * readiness["failureThreshold"] < drain or drain == 0,
          "readiness must fail within the drain delay")
    check(pod["terminationGracePeriodSeconds"] > drain + timeout, "grace period covers the drain")
    zones = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    check(zones == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, f"spread {zones}")
    # One migration per release, never per pod.
    check(env["VELRO_MIGRATE_ON_START"] == "false", "pods must not migrate")
    (job,) = kinds["Job"]
    hooks = job["metadata"]["annotations"]["helm.sh/hook"]
    check(set(hooks.split(",")) == {"pre-install", "pre-upgrade"}, f"migration hook {hooks}")
    check(job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"], "job migrates")
    secrets = {e["name"] for e in container["env"] if "valueFrom" in e}
    check({"VELRO_DATABASE_URL", "VELRO_ADMIN_TOKEN"} <= secrets, "secrets from the Secret")
    config_parses(kinds["ConfigMap"][0])
    return kinds, deployment


def check_default(docs):
    kinds, deployment = check_common(docs, "values.yaml")
    (hpa,) = kinds["HorizontalPodAutoscaler"]
    spec = hpa["spec"]
    check((spec["minReplicas"], spec["maxReplicas"]) == (2, 20), f"HPA bounds {spec}")
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in spec["metrics"]}
    check(targets == {"cpu": 60, "memory": 70}, f"HPA targets {targets}")
    check(spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300, "scale-down delay")
    check("replicas" not in deployment["spec"], "the HPA owns the replica count")
    check(len(kinds["PodDisruptionBudget"]) == 1, "a PDB")
    check("ServiceMonitor" not in kinds and "PrometheusRule" not in kinds, "operator objects are opt-in")


def check_production(docs):
    kinds, deployment = check_common(docs, "values-production.yaml")
    (rule,) = kinds["PrometheusRule"]
    promtool_check(rule)
    source = yaml.safe_load((ROOT / "monitoring" / "velro-authz.rules.yaml").read_text())
    check(rule["spec"] == source, "the PrometheusRule is monitoring/velro-authz.rules.yaml")
    (monitor,) = kinds["ServiceMonitor"]
    (service,) = kinds["Service"]
    ports = {p["name"] for p in service["spec"]["ports"]}
    check(monitor["spec"]["endpoints"][0]["port"] in ports, "ServiceMonitor scrapes a Service port")
    dashboards = [c for c in kinds["ConfigMap"] if c["metadata"]["labels"].get("grafana_dashboard")]
    check(len(dashboards) == 1, "dashboard ConfigMap")
    check("@sha256:" in deployment["spec"]["template"]["spec"]["containers"][0]["image"], "by digest")


def check_refusals():
    """What the chart must refuse: a secret in values, a grace period
    shorter than the drain."""
    chart = helm.Chart.load(str(CHART))
    try:
        chart.validate_schema({"env": {"VELRO_DATABASE_URL": "postgres://u:pw@db/velro"}})
    except helm.HelmValuesError:
        pass
    else:
        raise Failed("the schema let a database URL into values")
    try:
        chart.render({"terminationGracePeriodSeconds": 8}, name="velro-authz", namespace="velro")
    except helm.HelmError as e:
        check("terminationGracePeriodSeconds" in str(e), f"refusal names the setting: {e}")
    else:
        raise Failed("a grace period shorter than drain + timeout rendered")
    base = render({})
    changed = render({"config": "[audit]\nspill_path = \"/var/lib/velro-authz/other.spill\"\n"})
    annotation = lambda docs: by_kind(docs)["Deployment"][0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    check(annotation(base) != annotation(changed), "a config change rolls the pods")


def main():
    for values_file in VALUES_FILES:
        values = yaml.safe_load((CHART / values_file).read_text()) if values_file != "values.yaml" else {}
        lint(values)
        docs = render(values)
        for path, doc in docs:
            validate(path, doc)
        if values_file == "values.yaml":
            check_default(docs)
        else:
            check_production(docs)
        kinds = sorted({doc["kind"] for _, doc in docs})
        print(f"chart: {values_file}: lint clean, {len(docs)} manifests valid for Kubernetes {KUBE_VERSION}: {', '.join(kinds)}")
    check_refusals()
    print("chart: refusals hold (secret in values, short grace period); a config change rolls the pods")


if __name__ == "__main__":
    try:
        main()
    except (Failed, helm.HelmError) as e:
        print(f"chart check FAILED: {e}", file=sys.stderr)
        sys.exit(1)
