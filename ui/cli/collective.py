"""`clusterplan simulate collective`: one collective on a cluster's topology.

    clusterplan simulate collective --cluster dgx-h100 --nodes 16 --op all_reduce --size 256MiB \\
        --ranks 128 [--stride 1] [--algo auto] [--sweep] [--json]

Every group of the given shape (ranks `stride` apart in the Megatron order) runs at once, as the
simulator assumes; without --nodes the cluster grows to hold ranks x stride devices.
"""
from __future__ import annotations

import math

from hwmodels.errors import InputError
from ui.cli import flags

SWEEP_SIZES = tuple(2 ** k for k in range(10, 33))  # 1 KiB .. 4 GiB, doubling (nccl-tests -f 2)


def register(groups) -> None:
    from hwmodels.collectives import OPS, PROTOCOLS
    from hwmodels.topology import PLACEMENTS

    p = groups["simulate"].add_parser("collective", help="cost one collective on a cluster's topology")
    p.add_argument("--cluster", required=True, help="preset or cluster YAML")
    p.add_argument("--nodes", type=flags.integer("--nodes"), help="cluster size (default: enough for ranks x stride)")
    p.add_argument("--op", required=True, choices=OPS)
    p.add_argument("--size", type=flags.size("--size"), help="message size: 256MiB, 1GB, 4096 (bytes); nccl-tests "
                   "convention (all-reduce input, all-gather output, ...)")
    p.add_argument("--ranks", type=flags.integer("--ranks", lo=2), help="group size (default: every device / stride)")
    p.add_argument("--stride", type=flags.integer("--stride"), default=1,
                   help="devices between consecutive ranks in the Megatron order (TP innermost)")
    p.add_argument("--algo", default="auto", choices=["auto", "ring", "tree", "nvls", "nvls_tree",
                                                      "hierarchical", "pairwise", "p2p"])
    p.add_argument("--protocol", default="auto", choices=("auto",) + PROTOCOLS)
    p.add_argument("--placement", default="packed", choices=PLACEMENTS,
                   help="packed: ranks fill nodes in fabric order; scattered: nodes in scheduler order")
    p.add_argument("--sweep", action="store_true", help="table over sizes 1 KiB .. 4 GiB")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _cluster(args):
    from hwmodels.clusters import load_cluster

    cluster = load_cluster(args.cluster, nodes=args.nodes)
    ranks = args.ranks or cluster.num_devices // args.stride
    if ranks < 2:
        raise InputError(f"stride={args.stride} leaves fewer than 2 ranks on {cluster.num_devices} devices of "
                         f"{cluster.name!r}; valid: stride <= {cluster.num_devices // 2}")
    need = ranks * args.stride
    if need > cluster.num_devices:
        if args.nodes is not None:
            raise InputError(f"--ranks {ranks} x --stride {args.stride} = {need} devices do not fit in "
                             f"--nodes {args.nodes} ({cluster.num_devices} devices); valid: ranks x stride <= "
                             f"{cluster.num_devices}")
        cluster = cluster.with_nodes(math.ceil(need / cluster.devices_per_node))
    return cluster, ranks


def run(args) -> tuple[object, str]:
    from hwmodels.collectives import collective_cost

    if args.size is None and not args.sweep:
        raise InputError("--size is required (e.g. --size 256MiB), or give --sweep")
    if args.op == "send_recv" and args.ranks not in (None, 2):
        raise InputError(f"send_recv is between 2 ranks; got --ranks {args.ranks} (use --ranks 2 and "
                         "--stride for their distance)")
    cluster, ranks = _cluster(args)
    if args.op == "send_recv":
        ranks = 2
    sizes = SWEEP_SIZES if args.sweep else (args.size,)
    rows = []
    for s in sizes:
        c = collective_cost(cluster, args.op, ranks, args.stride, s, algorithm=args.algo,
                            protocol=args.protocol, placement=args.placement)
        d = c.to_dict()
        d.update({"cluster": cluster.name, "nodes_in_cluster": cluster.num_nodes,
                  "devices": cluster.num_devices, "placement": args.placement})
        rows.append(d)
    text = _sweep_text(rows, cluster) if args.sweep else _one_text(rows[0], cluster)
    return (rows if args.sweep else rows[0]), text


def _bytes(b: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if b >= scale:
            v = b / scale
            return f"{v:g} {unit}"
    return f"{b:g} B"


def _time(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def _header(d: dict, cluster) -> str:
    return (f"{d['op']} on {d['ranks']} ranks (stride {d['stride']}) of {cluster.name}: "
            f"{cluster.num_nodes} node(s) x {cluster.devices_per_node} {cluster.device.name}; "
            f"{d['members_per_node']} rank(s) per node over {d['nodes']} node(s), "
            f"{d['concurrent_groups']} concurrent group(s), {d['placement']} placement")


def _one_text(d: dict, cluster) -> str:
    lines = [_header(d, cluster), "",
             f"  size          {_bytes(d['size_bytes'])}",
             f"  time          {_time(d['time_s'])}",
             f"  algbw         {d['algbw_bytes_per_s'] / 1e9:.1f} GB/s",
             f"  busbw         {d['busbw_bytes_per_s'] / 1e9:.1f} GB/s",
             f"  algorithm     {d['algorithm']} / {d['protocol']}",
             f"  latency part  {_time(d['latency_s'])}, bandwidth part {_time(d['bandwidth_s'])}",
             f"  bottleneck    {d['bottleneck'] or '-'}; crosses {', '.join(d['crosses']) or '-'}"]
    others = sorted(d["candidates"], key=lambda c: c["time_s"])[:6]
    if others:
        lines.append("  candidates    " + ", ".join(f"{c['algorithm']}/{c['protocol']} {_time(c['time_s'])}"
                                                   for c in others))
    lines.append(f"  scale-up      {'calibrated from ' + d['calibrated_from'] if d['calibrated_from'] else 'tier defaults'}")
    return "\n".join(lines)


def _sweep_text(rows: list[dict], cluster) -> str:
    lines = [_header(rows[0], cluster), "",
             f"{'size':>10} {'time':>12} {'algbw GB/s':>11} {'busbw GB/s':>11}  algorithm"]
    for d in rows:
        lines.append(f"{_bytes(d['size_bytes']):>10} {_time(d['time_s']):>12} {d['algbw_bytes_per_s'] / 1e9:11.2f} "
                     f"{d['busbw_bytes_per_s'] / 1e9:11.2f}  {d['algorithm']}/{d['protocol']}")
    return "\n".join(lines)
