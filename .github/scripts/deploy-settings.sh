#!/usr/bin/env bash
# Does this run of ci-cd.yml ship, and what? Read from the repository variables (Settings ->
# Secrets and variables -> Actions -> Variables); written to $GITHUB_OUTPUT (ship, target) and said
# in the job summary. Asking to ship with a variable missing fails, naming it: nothing is skipped
# silently. docs/deploy.md has the setup.
#
#   DEPLOY          unset: test only (a fresh fork, green without AWS); aws: ship pushes to main
#   MODEL_SOURCE    dvc (default): the image bakes the model dvc.lock pins, pulled from the DVC remote
#                   registry: no model in the image; the EC2 host's app.env names the MLflow server
#   AWS_ROLE_ARN, AWS_REGION, AWS_ACCOUNT_ID, ECR_REPOSITORY: all required with DEPLOY=aws
set -euo pipefail

summary=${GITHUB_STEP_SUMMARY:-/dev/null}
output=${GITHUB_OUTPUT:-/dev/null}

say() { printf '%s\n' "$*" | tee -a "$summary"; }
fail() {
  printf '::error::%s\n' "$*"
  printf '**Deploy misconfigured:** %s\n' "$*" >>"$summary"
  exit 1
}

ship=false
target=none
case ${DEPLOY:-} in
  "")
    say "Deploy is off: the repository variable DEPLOY is not set, so this run only tests. Set DEPLOY=aws to ship pushes to main (docs/deploy.md)."
    ;;
  aws)
    missing=()
    for name in AWS_ROLE_ARN AWS_REGION AWS_ACCOUNT_ID ECR_REPOSITORY; do
      [[ -n ${!name:-} ]] || missing+=("$name")
    done
    ((${#missing[@]} == 0)) || fail "DEPLOY=aws needs the repository variables ${missing[*]}: set them, or unset DEPLOY to only test"
    case ${MODEL_SOURCE:-dvc} in
      dvc) target=pulled ;;
      registry) target=registry ;;
      *) fail "MODEL_SOURCE is '${MODEL_SOURCE}': set it to dvc (the model dvc.lock pins) or registry (MLflow), or unset it" ;;
    esac
    if [[ ${GITHUB_EVENT_NAME:-} != pull_request && ${GITHUB_REF:-} == refs/heads/main ]]; then
      ship=true
      say "Deploy is on: image target $target to ${AWS_ACCOUNT_ID}.dkr.ecr.${AWS_REGION}.amazonaws.com/${ECR_REPOSITORY}, then EC2."
    else
      say "Deploy is configured (target $target) but only pushes to main ship: this run only tests."
    fi
    ;;
  *)
    fail "DEPLOY is '${DEPLOY}': set it to aws to ship pushes to main, or unset it to only test"
    ;;
esac
printf 'ship=%s\ntarget=%s\n' "$ship" "$target" >>"$output"
