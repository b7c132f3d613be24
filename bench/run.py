"""`make bench` runs `pneumo-edge bench`; this file only lets `python bench/run.py` do the same."""

import sys

from pneumo_edge.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
