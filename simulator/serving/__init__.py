"""Serving simulation (docs/design.md §1, serving DES): workloads, per-replica continuous-batching
engines on simpy, routers, disaggregation and the metrics of a run.

    from simulator.serving import simulate, parse_serving_plan, ServingWorkload, LengthDist, RateSchedule
"""
from simulator.serving.engine import (PLAN_KEYS, ReplicaGroup, ServingPlan, ServingSimulation,
                                      parse_serving_plan, simulate)
from simulator.serving.metrics import ServingReport
from simulator.serving.scheduler import EngineConfig, engine_config
from simulator.serving.workload import (LengthDist, RateSchedule, Request, ServingWorkload,
                                        load_trace)

__all__ = ["PLAN_KEYS", "ReplicaGroup", "ServingPlan", "ServingSimulation", "parse_serving_plan",
           "simulate", "ServingReport", "EngineConfig", "engine_config", "LengthDist",
           "RateSchedule", "Request", "ServingWorkload", "load_trace"]
