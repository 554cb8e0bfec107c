#!/usr/bin/env bash
# Fills deploy/wheels/ with wheels of every dependency of veilfed (and the build backend), built
# or downloaded with this host's pip configuration. The Dockerfiles then install from it alone
# (`pip install --no-index`), so images build where the containers reach no package index.
# Usage: deploy/wheelhouse.sh [PYTHON]   (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-}"
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
"$py" -m pip wheel --quiet --wheel-dir deploy/wheels . setuptools wheel
# The images swap opencv-python for its headless build of the same version (no X11 or OpenGL).
cv=$(ls deploy/wheels | sed -n 's/^opencv_python-\([^-]*\)-.*/\1/p' | head -1)
"$py" -m pip download --quiet --no-deps --dest deploy/wheels "opencv-python-headless==$cv"
# The images build veilfed from the copied source, never from a wheel of an older tree.
rm -f deploy/wheels/veilfed-*.whl
echo "deploy/wheels: $(ls deploy/wheels/*.whl | wc -l) wheels, $(du -sh deploy/wheels | cut -f1)"
