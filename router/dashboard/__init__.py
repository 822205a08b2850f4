"""The dashboard's read side: aggregate queries over the ledger (overview, per-expert table,
request list and detail) with their window, filter and cursor in ``windows``, and the calibration
matrix per expert and skill, served by ``api.routes_dashboard``.

May import ``router.ledger`` and ``core`` (and reads the calibration matrix files).
"""
