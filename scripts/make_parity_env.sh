#!/usr/bin/env bash
# Build the separate environment in which the timm parity tests run.
#
# timm imports torchvision when it is imported, and PyPI's torchvision only works with PyPI's default
# torch build, not with the CPU-only torch the main test environment uses. So the parity tests get a
# virtual environment of their own: Keras on the PyTorch backend next to real timm + torchvision.
# Usage: bash scripts/make_parity_env.sh [VENV_DIR]   (default .venv-parity)
set -euo pipefail
venv=${1:-.venv-parity}
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "timm==1.0.31" "torchvision==0.29.2" "keras==3.15.1" numpy pillow pytest
# The checkout itself goes on the path through a .pth file rather than `pip install -e .`, which would
# write build files into the checkout while the main environment may be installing from it (CI does both
# at once).
site_packages=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$PWD" > "$site_packages/course_utils_checkout.pth"
KERAS_BACKEND=torch "$venv/bin/python" -c "import timm, torch, torchvision, keras; print('parity env ready: timm', timm.__version__, 'torch', torch.__version__, 'keras', keras.__version__)"
