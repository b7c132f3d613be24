"""`python -m pneumo_edge ...` is `pneumo-edge ...`."""

from .cli import main

main(prog_name="pneumo-edge")
