"""Errors of a calibration run, in the project's one exception tree (``core.errors``).

``GraderError`` is what a grader raises when it cannot judge an answer (a bad reference, an
unparseable judge reply): the cell becomes NaN with the message as its reason, never a silent 0.
"""

from __future__ import annotations

from core.errors import ExpertmuxError


class CalibrationError(ExpertmuxError):
    """A calibration cannot start or go on: bad prompt file, unknown expert, nothing to grade."""

    status = 400
    error_type = "invalid_request_error"
    code = "calibration_error"


class GraderError(CalibrationError):
    """A grader cannot score this answer (or this row's reference and parameters)."""

    code = "grader_error"
