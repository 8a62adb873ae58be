#!/usr/bin/env bash
# Checks of the deployment files; no Docker engine, cluster or network needed.
#
#   deploy/check.sh            # from anywhere in the repository
#   PYTHON=.venv/bin/python deploy/check.sh
#
# Runs, through pytest (tests/test_deploy_tools.py, tests/test_deploy.py, tests/test_dockerfiles.py,
# tests/test_k8s.py):
#   hadolint              both Dockerfiles, with .hadolint.yaml
#   kubernetes-validate   every manifest in deploy/k8s and what kustomize renders from them,
#                         strictly, against the Kubernetes releases docs/deploy.md names
#                         (kustomize is `kubectl kustomize` when kubectl is installed)
#   yamllint              every YAML file, with .yamllint
# and the project's own checks of what those tools cannot know (settings, probes, drain).
# All of them come with the test extra: pip install -e '.[test]' (or `make setup-test`).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_deploy_tools.py tests/test_deploy.py \
  tests/test_dockerfiles.py \
  tests/test_k8s.py
