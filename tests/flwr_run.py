"""Run the app with `flwr run .` (Flower's Simulation Engine) from a test."""

from studies.federation import BIN, REPO, flwr_run, stop_local_superlink

__all__ = ["BIN", "REPO", "flwr_run", "stop_local_superlink"]
