#!/usr/bin/env bash
# Blue-green deploy of one image on a single Docker host: the EC2 self-hosted runner runs it
# (.github/workflows/ci-cd.yml), and a person can too:
#
#   deploy/ec2/deploy.sh <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<commit sha>
#
# Port 8080 belongs to a small nginx container (the proxy) that forwards to the current app
# container. A deploy starts the new image under a new name, waits until its /ready answers 200,
# points the proxy at it (nginx reloads gracefully: no request is dropped), checks through the proxy
# that the new container answers, and only then stops the old one. If the new container never
# becomes ready, it is removed, the old one keeps serving and the script exits 1. Afterwards it
# keeps the newest KEEP_IMAGES images of the repository and deletes the older ones.
#
# Settings, from the environment:
#   APP_NAME       container names and labels (cancer-classifier)
#   PUBLIC_PORT    the host port the proxy publishes (8080)
#   APP_ENV_FILE   environment file for the app, if it exists (/etc/cancer-classifier/app.env):
#                  MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD, WEB_CONCURRENCY
#   READY_TIMEOUT  seconds the new container has to become ready (600)
#   KEEP_IMAGES    images of the repository kept on the host (3)
#   PROXY_IMAGE    the proxy's image (nginx:1.28-alpine)
set -euo pipefail

image=${1:?usage: deploy.sh IMAGE (repository:tag)}
app=${APP_NAME:-cancer-classifier}
public_port=${PUBLIC_PORT:-8080}
env_file=${APP_ENV_FILE:-/etc/$app/app.env}
ready_timeout=${READY_TIMEOUT:-600}
keep_images=${KEEP_IMAGES:-3}
proxy_image=${PROXY_IMAGE:-nginx:1.28-alpine}
poll_seconds=${POLL_SECONDS:-3}
network=$app
proxy=$app-proxy
proxy_conf=/etc/nginx/conf.d/default.conf

log() { printf '%s deploy: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ $image != *:* || ${image##*:} == */* ]]; then
  log "give the image with its tag (repository:tag), got $image"
  exit 2
fi
tag=${image##*:}
repository=${image%:*}

# One deploy at a time on this host (the workflow's concurrency group does the same for CI).
exec 9>"${LOCK_FILE:-/tmp/$app-deploy.lock}"
flock --nonblock 9 || { log "another deploy is running"; exit 1; }

# The proxy's nginx configuration: port 8080 -> the given app container. nginx reads each request's
# headers and whole body before it opens a connection to gunicorn (proxy_request_buffering on, the
# default), within client_header_timeout / client_body_timeout: a slow client costs nginx a
# connection, not a gunicorn thread. The container's name goes into X-Served-By only for requests
# from inside the proxy container (the check below), never to outside clients.
proxy_config() {
  cat <<EOF
# Written by deploy/ec2/deploy.sh: port $public_port of the host -> $1
map \$remote_addr \$served_by {
    127.0.0.1 $1;
    default "";
}
server {
    listen 8080;
    server_tokens off;
    client_max_body_size 12m;  # the app's own limit is serving.max_upload_mb (10 MB)
    client_header_timeout 10s;
    client_body_timeout 20s;
    send_timeout 30s;
    # Docker's DNS, asked per request: nginx starts even before the app container after a reboot.
    resolver 127.0.0.11 valid=10s ipv6=off;
    location / {
        set \$backend http://$1:8080;
        proxy_pass \$backend;
        proxy_set_header Host \$host;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto \$scheme;
        proxy_request_buffering on;
        proxy_read_timeout 130s;  # gunicorn's timeout is 120 s (Grad-CAM on a slow CPU)
        add_header X-Served-By \$served_by always;  # an empty value sends no header
    }
}
EOF
}

# Point the proxy at a container (or put back a saved configuration) and reload nginx.
switch_proxy() {
  printf '%s\n' "$1" | docker exec --interactive "$proxy" sh -c "cat > $proxy_conf"
  docker exec "$proxy" nginx -t -q
  docker exec "$proxy" nginx -s reload
}

# Does port 8080 (seen from inside the proxy) answer /ready from the given container?
served_by() {
  local headers
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    if headers=$(docker exec "$proxy" wget -S -q -O /dev/null "http://127.0.0.1:8080/ready" 2>&1) \
      && grep -qiE "^ *X-Served-By: $1\s*$" <<<"$headers"; then
      return 0
    fi
    sleep 1
  done
  return 1
}

# Until the proxy serves the new container, any failure removes it: the old one is untouched.
new=""
switched=false
cleanup() {
  if [[ -n $new && $switched == false ]]; then
    docker rm --force --volumes "$new" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

log "pulling $image"
docker pull --quiet "$image" >/dev/null
docker network inspect "$network" >/dev/null 2>&1 || docker network create "$network" >/dev/null

# Every container of an earlier deploy, running or not: all of them go once the new one serves.
mapfile -t old < <(docker ps --all --filter "label=deploy.app=$app" --filter "label=deploy.role=app" --format '{{.Names}}')

# A new name on every deploy, even of the same commit: never a clash with the container serving now.
new="$app-${tag:0:12}-$(date -u +%Y%m%d%H%M%S)-$$"
run_options=(--detach --name "$new" --network "$network" --restart unless-stopped
  --label "deploy.app=$app" --label "deploy.role=app" --label "deploy.image=$image"
  --log-opt max-size=20m --log-opt max-file=5)
if [[ -r $env_file ]]; then
  run_options+=(--env-file "$env_file")
else
  log "no $env_file: the container gets no MLflow settings and serves only a model baked into the image"
fi
log "starting $new"
docker run "${run_options[@]}" "$image" >/dev/null

deadline=$((SECONDS + ready_timeout))
until docker exec "$new" probe /ready >/dev/null 2>&1; do
  if [[ $(docker inspect --format '{{.State.Running}}' "$new" 2>/dev/null) != true ]] || ((SECONDS >= deadline)); then
    log "$new did not become ready within ${ready_timeout}s; the current container keeps serving. Its last log lines:"
    docker logs --tail 40 "$new" >&2 || true
    exit 1
  fi
  sleep "$poll_seconds"
done
log "$new is ready"

previous_config=""
if docker container inspect "$proxy" >/dev/null 2>&1; then
  previous_config=$(docker exec "$proxy" cat "$proxy_conf" 2>/dev/null || true)
  [[ $(docker inspect --format '{{.State.Running}}' "$proxy") == true ]] || docker start "$proxy" >/dev/null
else
  log "starting the proxy $proxy on port $public_port"
  docker run --detach --name "$proxy" --network "$network" --restart unless-stopped \
    --publish "$public_port:8080" --label "deploy.app=$app" --label "deploy.role=proxy" "$proxy_image" >/dev/null
fi

switch_proxy "$(proxy_config "$new")"
if ! served_by "$new"; then
  log "port $public_port does not answer from $new after the switch: switching back"
  if [[ -n $previous_config ]]; then
    switch_proxy "$previous_config" || log "could not restore the previous proxy configuration"
  fi
  exit 1
fi
switched=true
log "port $public_port now serves $new ($image)"

for container in "${old[@]}"; do
  log "removing $container"
  docker stop --time 40 "$container" >/dev/null || true  # gunicorn finishes requests in flight (30 s)
  docker rm --force --volumes "$container" >/dev/null || true  # and its anonymous volumes (/tmp...)
done

# Keep the newest images of the repository (a quick way back) and the one now serving.
docker image ls "$repository" --format '{{.Repository}}:{{.Tag}}' | tail -n "+$((keep_images + 1))" |
  while read -r reference; do
    if [[ $reference != "$image" ]]; then
      log "deleting the old image $reference"
      docker image rm "$reference" >/dev/null || true
    fi
  done
docker image prune --force >/dev/null
log "done"
