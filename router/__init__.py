"""The router: everything that composes policies with experts, above both and below the HTTP layer.

Sub-packages, one responsibility each (imports go down this list, enforced by import-linter):

- ``runtime``   builds every service from one Settings object, starts and stops them;
- ``request``   the request path: parse, select, call with fallbacks, record the trace;
- ``lifecycle`` the served policy set (hot swap, exploration), the artifact registry, the
  promotion gate, the registry poller, the dashboard's tuning and the autolearn job;
- ``agents``    compositions of policies with experts (Router-R1's live environment);
- ``dashboard`` the dashboard's ledger and calibration queries;
- ``calibration`` the configured experts' own routing matrix (graded prompts, resumable runs);
- ``learning``  what learns from the ledger: feedback, the LLM judge, logged-bandit data;
- ``access``    API keys, rate limits and budgets;
- ``ledger``    the SQL cost/latency ledger: models, engine, batched writer, spool, rollups.

Importing this package must stay cheap (no torch, no litellm): the proxy has to start fast.
"""

__version__ = "0.1.0"
