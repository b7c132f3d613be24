"""`python -m pneumo_edge ...` is `pneumo-edge ...`."""

from pneumo_edge.cli import main

main(prog_name="pneumo-edge")
