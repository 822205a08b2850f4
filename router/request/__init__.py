"""The request path: parse an OpenAI request, select an expert (the served policy's decision adjusted
for load), call it with fallbacks, and record the attempt trace for the ledger.

Also serves generation strategies beside the policies (Router-R1's multi-round agent). May import
``router.access``, ``router.ledger``, ``router.lifecycle``, ``router.agents``, ``policies``,
``experts`` and ``core``.
"""
