"""Routing policies behind one sklearn-style contract (see ``policies.base.Policy``).

Policies are looked up by name through ``policies.registry``; heavy dependencies are imported
inside the policy module that needs them, so ``import policies`` stays cheap.
"""

from policies.registry import available_policies, create_policy, get_policy_class

__all__ = ["available_policies", "create_policy", "get_policy_class"]
