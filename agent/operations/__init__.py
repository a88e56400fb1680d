"""Orchestration: what the actions do, built on the adapters."""
