"""Compositions of policies with experts: Router-R1's live environment (the router LM calling the
configured experts as tools during training and evaluation) and its in-process local runner.

Policies score and never call an expert; what does both lives here. May import ``policies``,
``experts`` and ``core``.
"""
