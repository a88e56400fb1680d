"""Adapters: one per external tool or client (restic, rclone, podman, systemd, Redis,
apprise), and the process chokepoint."""
