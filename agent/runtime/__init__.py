"""Runtime: the daemon, step runner, warm steps, recovery, leases and the project's own
task client. NS8's module-author API is the package's top (`agent`, `agent.tasks`), not
this."""
