#!/usr/bin/env bash
# The Python environment the dataset tests load exports with: Hugging Face `datasets`, the library a
# user fine-tunes with, in target/dataset-python (override with LOOKOUT_TEST_PYTHON). Only the tests
# use it; the daemon never runs Python. Safe to re-run: it does nothing when the environment works.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/dataset-python
if "$venv/bin/python" -c "import datasets, PIL" 2>/dev/null; then
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "datasets==5.2.0" "pillow==13.0.0"
"$venv/bin/python" -c "import datasets; print('datasets', datasets.__version__, 'in $venv')"
