"""Sessions: routing over a conversation or agent loop instead of one request at a time.

Owns the session's identity (an explicit ``expertmux.session_id``, the OpenAI ``user`` field, or a
hash of the conversation's first messages), its state (expert so far, turns, switches, stalls,
the prefix the expert has already read) in the ledger database's ``routing_sessions`` table behind
a per-replica cache, and the rule applied above the policy: keep the session's expert unless
switching gains more than the switch costs, move one tier up when the session stalls (the same
tool call repeated, failed requests, negative feedback). The policy may read the state
(``core.types.SessionView``) as input; only this package stores it. A store that cannot be
reached means plain per-request routing, never an error.

May import ``router.ledger`` (its tables) and ``core``.
"""
