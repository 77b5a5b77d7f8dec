#!/usr/bin/env bash
# Install napari-vitcam with napari's Qt front end and open the demo: a generated scan-like
# volume, its lesion mask, the Grad-CAM widget with the shipped demo model, and the heatmap in 3D.
# Without a display it runs under Xvfb and saves a screenshot (default demo.png) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_system_libs.sh
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -e . "napari[pyqt6]"
if [ -n "${DISPLAY:-}" ] || [ "$(uname)" = "Darwin" ]; then
  exec napari-vitcam demo --run "$@"
else
  exec xvfb-run -a -s "-screen 0 1600x1000x24" napari-vitcam demo --run --screenshot "${SCREENSHOT:-demo.png}" "$@"
fi
