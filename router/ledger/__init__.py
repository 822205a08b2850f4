"""The SQL cost/latency ledger: typed models, engine set-up and migrations, the batched writer
with its disk spool, usage counters settled per request, rollups and repository queries.

The storage layer of the router: imports nothing of ``router`` above it, only ``core``.
"""
