#!/usr/bin/env bash
# Bring what the app serves, exactly as dvc.lock pins it, from the DVC remote (.dvc/config), without
# the data or the feature cache: run in the project folder, before `docker build --target pulled`
# (CI does: .github/workflows/ci-cd.yml) or before serving a fresh clone with gunicorn.
#
#   deploy/dvc/pull-model.sh [extra dvc pull options, e.g. --remote storage]
#
# Pulled: the chest-CT model with its class map, drift and OOD references (training), its card
# (evaluation), its registration record (register), and each enabled tabular task's model and record.
set -euo pipefail

if [[ $# -eq 0 ]] && ! dvc remote default >/dev/null 2>&1; then
  echo "pull-model.sh: no default DVC remote: add one (dvc remote add --default storage s3://<bucket>/<path>) and commit .dvc/config, see docs/deploy.md" >&2
  exit 1
fi

stages=(training evaluation register)
# The tabular stages exist only while params.yaml enables a task (dvc.yaml's foreach).
if dvc stage list --name-only | grep -q '^tabular_register@'; then
  stages+=(tabular_training tabular_register)
fi
if ! dvc pull "$@" "${stages[@]}"; then
  echo "pull-model.sh: the remote lacks what dvc.lock pins (or cannot be read): run \`dvc push\` where \`dvc repro\` ran, and check the remote's credentials" >&2
  exit 1
fi

# A checkout dates every file now, in no set order, and serving takes a registration record older
# than its model for a stale one ("unregistered"). dvc.lock vouches that they belong together.
find artifacts -path '*/register/registration.json' -exec touch {} +
