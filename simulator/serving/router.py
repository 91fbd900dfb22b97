"""Which replica gets a request: `Router.pick(request, replicas)`.

    round_robin        the next replica in turn (vLLM/SGLang router default; Dynamo round-robin)
    least_outstanding  fewest requests queued or running, ties to the lowest index
                       (power-of-all least-loaded, as llm-d / SGLang router "shortest queue")
    size_class         request-size classes split over replicas in fixed shares (Mélange, Griggs
                       et al. arXiv 2404.14527 §5: each size class's load is divided among GPU
                       types by the ILP): a request's class is the first prompt-length bound it fits
                       under; among the replicas with a share of that class, the one furthest
                       behind its share gets it (deficit round robin)
    kv_aware           the replica where the request's prefix is cached, unless that replica's
                       KV load exceeds the others' by more than KV_BALANCE_SLACK; otherwise the one
                       with the least KV load (blocks in use plus blocks its queue will need), as a
                       share of its pool (Dynamo KV router / SGLang cache-aware router)
Deterministic: no random tie-breaks, so a seed fixes the run.
"""
from __future__ import annotations

from hwmodels.errors import InputError

ROUTERS = ("round_robin", "least_outstanding", "kv_aware", "size_class")
# SGLang cache-aware router default balance_rel_threshold 1.0001 / balance_abs_threshold 32:
# cache affinity wins unless the load gap is large; here: a gap of 25% of the pool.
KV_BALANCE_SLACK = 0.25


class Router:
    def __init__(self, policy: str = "round_robin", class_bounds: tuple = (), shares: list | None = None):
        """`class_bounds` (size_class): ascending prompt-length upper bounds, one per class (the
        last class takes every longer prompt too); `shares[i][k]`: replica i's share of class k."""
        if policy not in ROUTERS:
            raise InputError(f"unknown router {policy!r}; valid: {', '.join(ROUTERS)}")
        if policy == "size_class":
            if not class_bounds or not shares or any(len(s) != len(class_bounds) for s in shares):
                raise InputError("router size_class needs class bounds and every replica's share of each class")
            for k in range(len(class_bounds)):
                if not any(s[k] > 0 for s in shares):
                    raise InputError(f"router size_class: no replica serves class {k} "
                                     f"(prompts <= {class_bounds[k]} tokens)")
        self.policy = policy
        self._next = 0
        self.bounds = tuple(class_bounds)
        self.shares = shares or []
        self._sent = [[0] * len(self.bounds) for _ in self.shares]

    def pick(self, req, replicas: list) -> int:
        """Index into `replicas` of the chosen one."""
        n = len(replicas)
        if n == 1:
            return 0
        if self.policy == "size_class":
            k = next((j for j, b in enumerate(self.bounds) if req.prompt_len <= b), len(self.bounds) - 1)
            i = min((i for i in range(n) if self.shares[i][k] > 0),
                    key=lambda i: ((self._sent[i][k] + 1) / self.shares[i][k], i))
            self._sent[i][k] += 1
            return i
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
