"""NS8's module-author API, implemented over the project's own internals.

`agent/__init__.py` re-exports these names lazily (NS8's `import agent` gives them); the
modules here are the implementation, grouped by what they touch: envfile (the state dir's
environment file), comfd (the step's command descriptor), redisconn (Redis as the module),
helpers (subprocesses and lookups), restic (module-side restic), shell (the redis-* commands).
"""
