"""Budget pacing: spend that follows a budget over its window instead of hitting a wall.

Owns, per API key with a budget (and for all traffic when a global target is configured), an
online controller on λ — the price of a dollar in quality points that every policy trades
against — adjusted in bounded steps so that the spend rate tracks the rate the rest of the
budget allows over the rest of the window; and the downgrade near the cap: requests go to the
cheapest expert that meets their constraints before a hard cap (``router.access.budgets``,
unchanged) ever refuses one. Spend is read from the ledger database, so replicas pace against
the same figures; a read that fails leaves λ where it was (pacing never refuses a request).

May import ``router.access`` (keys, budget windows), ``router.ledger`` (usage and rollup tables)
and ``core``.
"""
