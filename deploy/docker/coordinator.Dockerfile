# veilfed coordinator: Flower SuperLink + the veilfed ServerApp (`veilfed coordinator start`).
# CPU-only torch; build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t veilfed-coordinator:latest .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1

# tini reaps Flower's SuperExec/ServerApp children and forwards SIGTERM to veilfed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

# CPU wheels of torch first (the default index would pull CUDA wheels), then veilfed.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/veilfed
COPY pyproject.toml setup.py ./
COPY platform ./platform
COPY clients ./clients
COPY coordinator ./coordinator
RUN pip install .
COPY experiments/*.toml ./experiments/

RUN useradd --uid 10001 --create-home veilfed \
 && mkdir -p /state /mlflow \
 && chown veilfed /state /mlflow
USER veilfed
WORKDIR /state

# One HTTPS port for the Fleet, Control and Runtime APIs (TLS, node authentication).
EXPOSE 9092
ENTRYPOINT ["tini", "--", "veilfed", "coordinator", "start"]
CMD ["--address", "0.0.0.0:9092", "--certs", "/certs", "--auth-keys", "/certs/auth-keys", \
     "--config", "/opt/veilfed/experiments/federated.toml", "--state", "/state", "--serve"]
