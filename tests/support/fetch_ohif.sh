#!/usr/bin/env bash
# Fetch the OHIF viewer the tests open results in (tests/node/test_ohif.py): `npm pack @ohif/app` at the pinned
# version, integrity checked, unpacked into the cache folder pneumo_edge.testing.ohif reads (or $PNEUMO_EDGE_OHIF).
# CI: tests/support/fetch_ohif.sh .venv/bin/python   (needs npm: apt-get install npm)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${1:-${PYTHON:-python3}}"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m pneumo_edge.testing.ohif
