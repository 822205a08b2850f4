"""Router-R1: the router is itself an LLM that thinks, calls experts over several rounds and
answers, trained with RL on a format + outcome + cost reward.

- ``protocol``: the tags, step parsing, trajectory format check;
- ``prompt``: candidate descriptors and the conversation;
- ``agent``: the multi-round loop over injected ``generate`` / ``call_expert`` callables;
- ``reward``: the reward formula.

Nothing here imports torch or transformers; serving lives in ``router/request/agent.py``.
"""

from policies.router_r1.agent import AgentConfig, AgentResult, ExpertCall, ExpertReply, Generation, RouterR1Agent, Step
from policies.router_r1.prompt import Candidate, build_messages, continue_messages
from policies.router_r1.protocol import (
    STOP_SEQUENCES,
    Action,
    Answer,
    FormatReport,
    Malformed,
    Search,
    Think,
    check_format,
    normalize_step,
    parse_step,
)
from policies.router_r1.reward import Reward, exact_match, router_reward

__all__ = [
    "STOP_SEQUENCES", "Action", "AgentConfig", "AgentResult", "Answer", "Candidate", "ExpertCall", "ExpertReply",
    "FormatReport", "Generation", "Malformed", "Reward", "RouterR1Agent", "Search", "Step", "Think", "build_messages",
    "check_format", "continue_messages", "exact_match", "normalize_step", "parse_step", "router_reward",
]
