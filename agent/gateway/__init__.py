"""The node's storage gateway: an authorizing proxy in front of rclone's restic servers."""
