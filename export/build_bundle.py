"""Rebuild the shipped bundle in this folder from a trained checkpoint (logic in pneumo_edge.bundle).

    python export/build_bundle.py --checkpoint runs/default --results runs/default/eval \
        --data ../shared/data/chest_xray --out export
"""

import argparse

from pneumo_edge.bundle import build_bundle

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--results", required=True, help="pneumo-edge evaluate output folder")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="export")
    a = ap.parse_args()
    print(f"bundle written to {build_bundle(a.checkpoint, a.results, a.data, a.out)}")
