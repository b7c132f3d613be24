"""Measurements, one module per `pneumo-edge bench` subcommand; results under bench/results/."""
