"""What Redis stores, as typed records: each parsed and written in one place, and stored
data that does not parse is a StoredDataError naming its key.

backups, destinations and statuses are pydantic models (agent/records/stored.py). tasks
is named tuples: api-cli reads and writes task records and is started once per call, so
nothing it imports may import pydantic (about a second of start-up on a busy node) or
dataclasses (inspect, ~17 ms)."""
