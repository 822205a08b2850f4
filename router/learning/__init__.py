"""What learns from the ledger: feedback on answered requests, the LLM judge that scores a sample
of them, and the logged-bandit data set that trains and evaluates policies on past traffic.

May import ``router.access``, ``router.ledger``, ``policies``, ``experts`` and ``core``.
"""
