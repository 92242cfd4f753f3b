#!/usr/bin/env bash
# The whole test suite, on a fresh machine of this kind: installs what the
# tests need when it is missing (Prometheus and promtool from Debian; the
# Helm and Kubernetes checkers into a virtualenv), then runs every test.
# Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing ${need_apt[*]} (Debian packages) …"
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# The chart: lint (strict) and render offline for both values files,
# validate every manifest; the check runs the built binary on the chart's
# config file, so build first.
venv=target/chart-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import helm_python, kubernetes_validate, yaml" 2>/dev/null; then
    echo "installing the chart checkers into $venv …"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0" pyyaml
fi
cargo build --locked
"$venv/bin/python" scripts/chart_check.py 2> >(grep -v "found symbolic link" >&2)

promtool check rules monitoring/velro-authz.rules.yaml
(cd monitoring && promtool test rules velro-authz.rules.test.yaml)

cargo test --locked
