"""The shared vocabulary at the bottom of expertmux: types, errors, settings and config models,
the policy and expert contracts, and where the packaged model files are.

Imports nothing else of the project (every other package may import it), and stays cheap to
import: no torch, no litellm, no I/O at import time.
"""
