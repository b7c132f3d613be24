"""`make bench`: latency, throughput and accuracy of the shipped bundle (logic in pneumo_edge.bench)."""

import sys

from pneumo_edge.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
