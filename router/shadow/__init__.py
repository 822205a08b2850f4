"""Shadow evaluation: a candidate policy judged on live traffic before it takes any.

Owns the candidate (a registry version's artifact, or a policy as configured), the shadow runner
(after a request has been answered, the candidate decides on the same routing request in a
worker thread; where it would have chosen another expert, that expert may be called within a
daily budget and both answers rated blind by the configured judge), the ``shadow_decisions`` log
and its summary, which the promotion gate can take as evidence. Nothing here runs before the
served response is complete, and a full queue skips a request rather than wait.

May import ``router.learning`` (the judge), ``router.ledger`` (its tables), ``policies``,
``experts`` and ``core``.
"""
