#!/usr/bin/env bash
# Builds veilfed-node:latest and veilfed-coordinator:latest with podman on a host that reaches no
# container registry: the offline Debian base (deploy/base-image.sh, once) and a wheelhouse of
# every dependency (deploy/wheelhouse.sh, once; delete deploy/wheels/*.whl to refresh it), then
# both Dockerfiles, which share every layer up to their last few. `make test-deploy` runs this.
# With Docker and a registry, no script is needed: see deploy/README.md, "Images".
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE="${ENGINE:-podman}"
BASE="${BASE_IMAGE:-localhost/veilfed-base:bookworm}"

if [[ "$BASE" == localhost/veilfed-base:* ]]; then
  TAG="$BASE" ENGINE="$ENGINE" deploy/base-image.sh
fi
ls deploy/wheels/*.whl >/dev/null 2>&1 || deploy/wheelhouse.sh
for role in node coordinator; do
  "$ENGINE" build --build-arg BASE_IMAGE="$BASE" \
    -f "deploy/docker/$role.Dockerfile" -t "veilfed-$role:latest" .
done
