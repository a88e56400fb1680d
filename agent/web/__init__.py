"""The web console (issue #17): pages, JSON API, live progress, snapshot browser."""
