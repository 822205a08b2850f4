"""The policy lifecycle: the served policy set (hot swap, exploration with logged propensities),
the versioned registry of trained artifacts, the promotion gate, the registry poller that keeps
replicas in step, the dashboard's cost–quality tuning, and the autolearn job (calibrate the
experts, train on their own matrix, gate against the served policy, swap).

May import ``router.calibration``, ``router.learning``, ``router.ledger``, ``policies``,
``experts`` and ``core``.
"""
