# veilfed client node: Flower SuperNode + the veilfed ClientApp (`veilfed node start`).
# CPU-only torch; build from the repository root:
#   docker build -f deploy/docker/node.Dockerfile -t veilfed-node:latest .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1

# tini reaps Flower's SuperExec/ClientApp children and forwards SIGTERM to veilfed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/veilfed
COPY pyproject.toml setup.py ./
COPY platform ./platform
COPY clients ./clients
COPY coordinator ./coordinator
RUN pip install .

RUN useradd --uid 10001 --create-home veilfed \
 && mkdir -p /state \
 && chown veilfed /state
USER veilfed
WORKDIR /state

# The SuperNode only dials out to the SuperLink; 9094 is its local Runtime API (ClientApp link),
# bound to 127.0.0.1 inside the container, never published.
ENTRYPOINT ["tini", "--", "veilfed", "node", "start"]
