#!/usr/bin/env bash
# Builds the images' base offline: a minimal Debian bookworm root file system made with
# debootstrap from the Debian mirror (Python 3.11, tini, CA certificates) and imported into podman
# as veilfed-base:bookworm. Use it where no container registry is reachable:
#   sudo deploy/base-image.sh            # then: --build-arg BASE_IMAGE=localhost/veilfed-base:bookworm
# Needs root, debootstrap and podman. MIRROR and TAG may be overridden from the environment.
set -euo pipefail

MIRROR="${MIRROR:-http://deb.debian.org/debian}"
TAG="${TAG:-localhost/veilfed-base:bookworm}"
ENGINE="${ENGINE:-podman}"

if "$ENGINE" image exists "$TAG" 2>/dev/null && [[ "${FORCE:-0}" != 1 ]]; then
  echo "base image $TAG exists (FORCE=1 rebuilds it)"
  exit 0
fi
for tool in debootstrap "$ENGINE"; do
  command -v "$tool" >/dev/null || { echo "base-image.sh: $tool not found: apt-get install debootstrap podman" >&2; exit 2; }
done

root="$(mktemp -d /var/tmp/veilfed-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase \
  --include=python3,python3-venv,tini,ca-certificates \
  bookworm "$root" "$MIRROR"
# Nothing an image needs at run time: package caches, lists, docs and locales.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/log/*
tar --numeric-owner -C "$root" -c . | "$ENGINE" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$TAG"
echo "built $TAG"
