"""Access control and money: API keys (hashed, cached), request and token rate limits, daily and
monthly budgets reserved before a call and settled by the ledger writer.

May import ``router.ledger`` (its tables), ``experts`` (prices and local tokenizers bound a
reservation) and ``core``.
"""
