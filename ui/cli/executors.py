"""The executor flags of the commands whose work can run on many workers (`sweep`, `plan serve`,
`validate published`, `validate serving`):

    --executor local|ray   a process pool on this machine (default) or a Ray cluster
    --ray-address ADDR     with ray: "auto" (the cluster this machine belongs to) or an address;
                           without it, a local Ray is started for the run
    --jobs N               local: worker processes (default: the CPU count); ray without an
                           address: the CPUs of the local Ray

Ray is an optional extra: pip install -e ".[ray]".
"""
from __future__ import annotations

from hwmodels.errors import InputError
from ui.cli import flags


def add_executor_flags(p, jobs_help: str = "worker processes (default: the CPU count)") -> None:
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where the work runs: a local process pool (default) or Ray")
    p.add_argument("--ray-address", metavar="auto|ADDRESS",
                   help='with --executor ray: "auto" or a cluster address (default: start a local Ray)')
    p.add_argument("--jobs", type=flags.integer("--jobs"), help=jobs_help)


def executor_from_args(args, max_retries: int | None = None):
    """The simulator.executor the flags ask for (InputError naming the flag when it cannot be had)."""
    from simulator import executor as ex
    retries = ex.DEFAULT_MAX_RETRIES if max_retries is None else max_retries
    if args.executor != "ray":
        if args.ray_address:
            raise InputError(f"--ray-address {args.ray_address!r} needs --executor ray")
        return ex.LocalExecutor(args.jobs, max_retries=retries)
    if not ex.ray_available():
        raise InputError("--executor ray needs Ray, which is not installed: pip install -e \".[ray]\"")
    if args.ray_address and args.jobs:
        raise InputError(f"--jobs sizes a local Ray; the cluster at --ray-address {args.ray_address!r} "
                         f"has its own CPUs")
    try:
        return ex.RayExecutor(args.ray_address, num_cpus=args.jobs, max_retries=retries)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"--ray-address {args.ray_address!r}" if args.ray_address else "a local Ray"
        raise InputError(f"--executor ray: cannot start or reach {where}: {' '.join(str(e).split())}") from None
