"""Policies: torch modules and their sampling, all behind one small interface.

Imported as ``robodistill.policies``; never imports robodistill's training code.
"""

from robodistill.policies.base import POLICY_KINDS, Policy, load_policy, register_policy
from robodistill.policies.mlp_student import MLPStudent
from robodistill.policies.random_policy import RandomPolicy
from robodistill.policies.rllib_policy import RLlibPolicy
from robodistill.policies.sb3_policy import SB3Policy

__all__ = [
    "MLPStudent",
    "POLICY_KINDS",
    "Policy",
    "RLlibPolicy",
    "RandomPolicy",
    "SB3Policy",
    "load_policy",
    "register_policy",
]
