"""expertmux core: settings, types, errors, the routing service and the ledger.

Importing this package must stay cheap (no torch, no litellm): the proxy has to start fast.
"""

__version__ = "0.1.0"
