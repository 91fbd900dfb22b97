"""Training jobs from the options a person gives: one builder for the command line
(`simulate train`, `plan train`) and the dashboard's Train page, so that both read the same options
the same way.

    setup = training_setup("gpt3-175b", "dgx-a100", "tp=8,pp=8,mb=1", nodes=128,
                           seq_len=2048, global_batch=1536, tp_overlap=True)
    estimate(setup.job, setup.plan, setup.cluster)

The option names are the CLI flags' (`--grad-overlap` -> grad_overlap) and the dashboard's inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from hwmodels.clusters import Cluster, load_cluster
from hwmodels.errors import InputError
from simulator.models import ModelSpec, load_model
from simulator.ops import check_supported
from simulator.training import TrainingJob, TrainingPlan, parse_plan, validate_plan

ATTENTION = ("flash", "unfused")
# The user-facing options of a training job. None: not given, so the software profile's setting
# (`software`, simulator.software) or else OPTION_DEFAULTS applies.
JOB_OPTIONS = {"seq_len": None, "global_batch": None, "dtype": "bf16", "attention": None,
               "attention_kernel": None, "dropout": None, "grad_overlap": None, "tp_overlap": None,
               "p2p_overlap": None, "software": None, "lora_rank": None, "lora_targets": None}
# What an option not given and not set by a software profile is (Megatron-LM's defaults).
OPTION_DEFAULTS = {"attention": "flash", "attention_kernel": "fa2", "dropout": True, "grad_overlap": True,
                   "tp_overlap": False, "p2p_overlap": False}
# option name -> TrainingJob field
_JOB_FIELD = {"attention_kernel": "attention_kernel", "dropout": "dropout", "grad_overlap": "overlap_grad_reduce",
              "tp_overlap": "overlap_tp_comm", "p2p_overlap": "overlap_p2p_comm"}


@dataclass(frozen=True)
class TrainingSetup:
    job: TrainingJob
    cluster: Cluster
    plan: TrainingPlan | None  # None when no plan was asked for (a plan search)


def job_options(source) -> dict:
    """The job options held by `source`, an argparse namespace or a dict (missing: default)."""
    get = source.get if isinstance(source, dict) else (lambda k, d: getattr(source, k, d))
    return {k: get(k, d) for k, d in JOB_OPTIONS.items()}


def training_job(model: ModelSpec | str, seq_len: int, global_batch: int, dtype: str = "bf16",
                 attention: str | None = None, attention_kernel: str | None = None,
                 dropout: bool | None = None, grad_overlap: bool | None = None,
                 tp_overlap: bool | None = None, p2p_overlap: bool | None = None,
                 software: str | None = None, lora_rank: int | None = None,
                 lora_targets: str | tuple | None = None) -> TrainingJob:
    """A TrainingJob of `model` (a ModelSpec, or a preset name / config.json / YAML path). Options
    left None take the software profile's setting when `software` names one, else OPTION_DEFAULTS;
    an option given always wins over the profile. `lora_rank` > 0 fine-tunes with LoRA adapters on
    `lora_targets` (comma-separated or a tuple; default all of qkv, proj, fc1, fc2)."""
    if attention is not None and attention not in ATTENTION:
        raise InputError(f"attention={attention!r}; valid: {', '.join(ATTENTION)}")
    if isinstance(model, str):
        model = load_model(model)
    given = {"attention_kernel": attention_kernel, "dropout": dropout, "grad_overlap": grad_overlap,
             "tp_overlap": tp_overlap, "p2p_overlap": p2p_overlap}
    explicit = {_JOB_FIELD[k]: v for k, v in given.items() if v is not None}
    if attention is not None:
        explicit["flash_attention"] = attention == "flash"
    base = {_JOB_FIELD[k]: OPTION_DEFAULTS[k] for k in given}
    job = TrainingJob(model=model, seq_len=seq_len, global_batch=global_batch, dtype=dtype,
                      flash_attention=OPTION_DEFAULTS["attention"] == "flash", **base)
    if lora_targets is not None and not lora_rank:
        raise InputError(f"lora targets {lora_targets!r} need a LoRA rank > 0 (--lora-rank)")
    if lora_rank:
        explicit["lora_rank"] = lora_rank
        if lora_targets is not None:
            explicit["lora_targets"] = tuple(t.strip() for t in lora_targets.split(",")) \
                if isinstance(lora_targets, str) else tuple(lora_targets)
    if software is not None:
        from simulator.software import apply_software
        return apply_software(job, software, **explicit)
    return replace(job, **explicit)


def software_plan(plan: str, software: str | None) -> str:
    """`plan` with the keys the software always fixes (a profile's plan_defaults, e.g. FSDP's
    zero=3) added where the plan string does not give them: what the user wrote wins."""
    if not software:
        return plan
    from simulator.software import get_software
    given = {item.split("=", 1)[0].strip().lower() for item in plan.split(",") if "=" in item}
    extra = [f"{k}={v}" for k, v in get_software(software).plan_defaults.items() if k not in given]
    return ",".join([*extra, plan] if plan.strip() else extra)


def software_fix(fix: dict, software: str | None) -> dict:
    """A plan search's fixed keys (planner.search.parse_fix form) with the software's plan_defaults
    added where the user fixed nothing."""
    if not software:
        return fix
    from simulator.software import get_software
    return {**{k: (v,) for k, v in get_software(software).plan_defaults.items()}, **fix}


def training_setup(model: ModelSpec | str, cluster: Cluster | str, plan: str | None = None,
                   nodes: int | None = None, **options) -> TrainingSetup:
    """The job, the cluster (resized to `nodes` when given) and the plan, every one checked: the
    device supports the dtype, and the plan fits the job and the cluster (validate_plan). Raises
    InputError naming the first bad value, in the order model, cluster, job, dtype, plan."""
    if isinstance(model, str):
        model = load_model(model)
    if isinstance(cluster, str):
        cluster = load_cluster(cluster, nodes=nodes)
    elif nodes is not None:
        cluster = cluster.with_nodes(nodes)
    job = training_job(model, **options)
    cluster.device.peak(job.dtype)  # the device must support the dtype
    if plan is None:
        return TrainingSetup(job, cluster, None)
    p = parse_plan(software_plan(plan, options.get("software")), cluster.num_devices)
    validate_plan(p, job, cluster.num_devices, cluster.devices_per_node)
    check_supported(job.model, p)
    return TrainingSetup(job, cluster, p)


# ---- serving ---------------------------------------------------------------------------------------

def plan_serve_workload(prompt_len: str, output_len: str, requests: int, seed: int, rate: float):
    """The workload `plan serve` sizes a fleet for: open-loop Poisson arrivals at `rate` req/s with
    the given length distributions (the syntax of simulator.serving.workload.LengthDist)."""
    import math

    from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload
    return ServingWorkload(num_requests=requests, rate=RateSchedule(((rate, math.inf),)),
                           prompt_len=LengthDist.parse(prompt_len, "--prompt-len"),
                           output_len=LengthDist.parse(output_len, "--output-len"), seed=seed)


def fleet_serving_plan(fleet: dict, engine: str = "vllm", dtype: str = "bf16", kv_dtype: str | None = None):
    """The ServingPlan of one fleet of a `plan serve` document (its "fleets" entries), built as
    planner.serve_search.verify_fleet builds the fleet it checks: one replica group per
    (device, tp, role) on the device's preset cluster, prefill/aggregated groups before decode
    ones, least-outstanding routing, or the size-class router with each replica's class shares."""
    from planner.serve_search import cluster_for_device, option_name
    from simulator.serving.engine import ReplicaGroup, ServingPlan
    order = {"prefill": 0, "both": 0, "decode": 1}
    reps = sorted(fleet["replicas"], key=lambda r: (order[r["role"]], option_name(r["device"], r["tp"], r["role"])))
    groups = tuple(ReplicaGroup(cluster_for_device(r["device"])[0], r["tp"], count=r["count"], role=r["role"])
                   for r in reps)
    if fleet.get("size_classes"):
        return ServingPlan(groups, engine=engine, router="size_class", dtype=dtype, kv_dtype=kv_dtype,
                           class_bounds=tuple(c["max_prompt_len"] for c in fleet["size_classes"]),
                           class_shares=tuple(tuple(r["class_load_req_per_s"]) for r in reps))
    return ServingPlan(groups, engine=engine, router="least_outstanding", dtype=dtype, kv_dtype=kv_dtype)
