"""Calibration: a routing matrix of this deployment's own experts.

It owns running every configured expert on a graded prompt set through the same expert client the
proxy uses (``experts.client``), grading each answer, keeping every finished cell on disk so a run
resumes where it stopped, and writing the result in the shared routing-matrix format so
``expertmux train <policy> --data <folder>`` learns on the experts that actually answer. It
composes experts with graders, so it sits in the router layer, beside ``lifecycle``, ``agents``
and ``dashboard``.

May import ``router.learning`` (the LLM judge), ``router.ledger`` (prompts from real traffic),
``experts``, ``policies`` and ``core``; never ``router.request`` or anything above it.

Modules (the API the CLI and the background job call):

* ``runner.calibrate(settings, source=..., out_dir=...)`` runs a calibration (async, resumable);
* ``sources``: ``PromptItem``, the prompt sources (``DefaultSource``, ``JsonlSource``,
  ``LedgerSource``, ``parse_source``) and the stratified ``--limit``;
* ``graders``: the grader registry (``grade``, ``validate``, ``GRADERS``); ``judging``: the LLM judge grader;
* ``store``: the append-only, fsync'd cell log of an output folder;
* ``matrix``: ``write_matrix``, ``load_status`` and the per-skill summary;
* ``progress``: ``CalibrationProgress`` snapshots for progress bars, logs and the dashboard;
* ``defaultset``: the seeded generator of the shipped default set (``data/default.jsonl``).
"""
