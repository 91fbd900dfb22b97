"""Which replica gets a request: `Router.pick(request, replicas)`.

    round_robin        the next replica in turn (vLLM/SGLang router default; Dynamo round-robin)
    least_outstanding  fewest requests queued or running, ties to the lowest index
                       (power-of-all least-loaded, as llm-d / SGLang router "shortest queue")
    kv_aware           the replica where the request's prefix is cached, unless that replica's
                       KV load exceeds the others' by more than KV_BALANCE_SLACK; otherwise the one
                       with the least KV load (blocks in use plus blocks its queue will need), as a
                       share of its pool (Dynamo KV router / SGLang cache-aware router)
Deterministic: no random tie-breaks, so a seed fixes the run.
"""
from __future__ import annotations

from hwmodels.errors import InputError

ROUTERS = ("round_robin", "least_outstanding", "kv_aware")
# SGLang cache-aware router default balance_rel_threshold 1.0001 / balance_abs_threshold 32:
# cache affinity wins unless the load gap is large; here: a gap of 25% of the pool.
KV_BALANCE_SLACK = 0.25


class Router:
    def __init__(self, policy: str = "round_robin"):
        if policy not in ROUTERS:
            raise InputError(f"unknown router {policy!r}; valid: {', '.join(ROUTERS)}")
        self.policy = policy
        self._next = 0

    def pick(self, req, replicas: list) -> int:
        """Index into `replicas` of the chosen one."""
        n = len(replicas)
        if n == 1:
            return 0
        if self.policy == "round_robin":
            i = self._next % n
            self._next += 1
            return i
        if self.policy == "least_outstanding":
            best, load = 0, None
            for i, rep in enumerate(replicas):
                x = rep.scheduler.outstanding
                if load is None or x < load:
                    best, load = i, x
            return best
        loads = [rep.kv_load() for rep in replicas]
        least = min(range(n), key=lambda i: (loads[i], i))
        if req.prefix_keys:
            hits = [rep.kv.match(req.prefix_keys) for rep in replicas]
            top = max(hits)
            if top > 0:
                cand = min((i for i in range(n) if hits[i] == top), key=lambda i: (loads[i], i))
                if loads[cand] - loads[least] <= KV_BALANCE_SLACK:
                    return cand
        return least
