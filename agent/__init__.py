"""Restic-orchestrating cluster backup agent (NethServer 8 conventions)."""

__version__ = "0.1.0"
