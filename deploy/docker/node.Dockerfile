# veilfed client node: Flower SuperNode + the veilfed ClientApp (`veilfed node start`).
# Build from the repository root (Docker or podman):
#   docker build -f deploy/docker/node.Dockerfile -t veilfed-node:latest .
# Where no registry is reachable, build the base offline and wheels on the host first
# (deploy/README.md, "Images"):
#   deploy/base-image.sh && deploy/wheelhouse.sh
#   podman build --build-arg BASE_IMAGE=localhost/veilfed-base:bookworm \
#     -f deploy/docker/node.Dockerfile -t veilfed-node:latest .
# Everything up to the last stage's user is the same as coordinator.Dockerfile, so both images
# share those layers. No key is copied in: keys, shards and certificates are mounted at run time.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Torch's CPU wheels (the default index would pull CUDA ones); ignored when deploy/wheels/ holds
# wheels, which are then the only source (offline build; bind-mounted, so no layer keeps them).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
# Dependencies first, from the project metadata alone (veilfed's folders and readme empty), so
# that a change of veilfed's code or docs rebuilds only its own small layer. opencv-python
# (scenedetect's dependency) links X11 and OpenGL libraries a server image lacks; its headless
# build is the same cv2 without them.
COPY pyproject.toml setup.py /src/
RUN --mount=type=bind,source=deploy/wheels,target=/wheels \
    set -e; \
    touch /src/README.md; \
    if ls /wheels/*.whl >/dev/null 2>&1; then from="--no-index --find-links /wheels"; \
    else from="--extra-index-url $TORCH_INDEX"; fi; \
    mkdir -p /src/platform /src/clients /src/coordinator; \
    /opt/venv/bin/pip install $from /src; \
    /opt/venv/bin/pip uninstall -y veilfed opencv-python; \
    cv=$(ls /wheels 2>/dev/null | sed -n 's/^opencv_python-\([^-]*\)-.*/\1/p' | head -1); \
    /opt/venv/bin/pip install $from --no-deps "opencv-python-headless${cv:+==$cv}"
COPY README.md /src/
COPY platform /src/platform
COPY clients /src/clients
COPY coordinator /src/coordinator
RUN --mount=type=bind,source=deploy/wheels,target=/wheels \
    if ls /wheels/*.whl >/dev/null 2>&1; then from="--no-index --find-links /wheels"; fi; \
    /opt/venv/bin/pip wheel --no-deps $from --wheel-dir /dist /src

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1
# tini reaps Flower's SuperExec and app children and forwards SIGTERM (the offline base has it).
RUN command -v tini >/dev/null \
 || (apt-get update && apt-get install -y --no-install-recommends tini \
     && rm -rf /var/lib/apt/lists/*)
COPY --from=build /opt/venv /opt/venv
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    /opt/venv/bin/pip install --no-deps --no-index /dist/*.whl
RUN useradd --uid 10001 --create-home veilfed \
 && mkdir -p /state /data /mlflow \
 && chown veilfed /state /data /mlflow
COPY experiments/*.toml /opt/veilfed/experiments/
USER veilfed
WORKDIR /state

# The SuperNode only dials out to the SuperLink; 9094 is its local Runtime API (ClientApp link),
# bound to 127.0.0.1 inside the container, never published.
ENTRYPOINT ["tini", "-g", "--", "veilfed", "node", "start"]
