"""The SQL cost/latency ledger: typed models, engine set-up, the batched writer, queries."""
