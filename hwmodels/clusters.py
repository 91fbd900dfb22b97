"""Clusters: nodes of identical devices joined by network tiers, innermost first (ASTRA-sim style).

A tier is one level of the network: NVLink inside a node, then IB/RoCE/dragonfly across nodes. Tiers
before the last live inside one node and their sizes multiply to `devices_per_node`; the last tier
spans all nodes. A contiguous group of ranks therefore stays inside the innermost tier whose
cumulative size covers it (`Cluster.tier_of_span`). Bandwidths are per device, per direction.

    load_cluster("dgx-h100", nodes=16).num_devices   # 128

Presets live in `hwmodels/data/clusters.yaml`; a YAML file with the fields of one preset works too.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path

from hwmodels.devices import Device, get_device, positive_number, read_yaml
from hwmodels.errors import InputError, unknown_name

TIER_KINDS = ("nvswitch", "nvlink-bridge", "pcie", "infinity-fabric", "hccs", "ici-torus",
              "fat-tree", "rail-fat-tree", "dragonfly", "ethernet")

_PRESETS_FILE = Path(__file__).parent / "data" / "clusters.yaml"
_CLUSTER_FIELDS = ("name", "description", "device", "devices_per_node", "nodes", "tiers",
                   "nics_per_node", "nic_bytes_per_s", "scale_up_table", "sources")
_TIER_FIELDS = ("name", "kind", "size", "bytes_per_s", "latency_s", "oversubscription")
# The most devices a cluster may have. The topology graph (hwmodels.topology) holds every device,
# so its cost grows with the cluster: ~5 s at 80k devices, minutes at 800k. 2^17 is above the
# largest published training clusters (Llama 3: 16k H100; ~100k-GPU sites), and refusing beyond it
# keeps a typo like --nodes 1000000 from running for minutes.
MAX_DEVICES = 2 ** 17


@dataclass(frozen=True)
class Tier:
    name: str
    kind: str  # one of TIER_KINDS
    size: int  # devices (intra-node tiers) or nodes (last tier) it groups
    bytes_per_s: float  # per device, per direction
    latency_s: float  # alpha per algorithm step
    oversubscription: float = 1.0


@dataclass(frozen=True)
class Cluster:
    name: str
    device: Device
    devices_per_node: int
    num_nodes: int
    tiers: tuple[Tier, ...]  # innermost first; product of sizes == num_devices
    nics_per_node: int
    nic_bytes_per_s: float  # per NIC, per direction
    description: str = ""
    sources: dict = field(default_factory=dict, hash=False)
    # whether the device's measured NCCL table calibrates the scale-up tier (hwmodels.collectives);
    # false where the table was measured on a host this server is not (its source says why)
    scale_up_table: bool = True

    @property
    def num_devices(self) -> int:
        return self.devices_per_node * self.num_nodes

    def with_nodes(self, nodes: int) -> "Cluster":
        """The same cluster with `nodes` nodes (the last tier spans them)."""
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise InputError(f"cluster {self.name!r}: nodes must be an integer >= 1, got {nodes!r}")
        check_size(self.devices_per_node, nodes, f"cluster {self.name!r}")
        tiers = self.tiers[:-1] + (replace(self.tiers[-1], size=nodes),)
        return replace(self, num_nodes=nodes, tiers=tiers)

    def tier_of_span(self, span_devices: int) -> int:
        """Index of the innermost tier whose cumulative size >= span_devices."""
        if isinstance(span_devices, bool) or not isinstance(span_devices, int) \
                or not 1 <= span_devices <= self.num_devices:
            raise InputError(f"cluster {self.name!r}: a group of {span_devices!r} devices does not fit; "
                             f"valid: 1..{self.num_devices}")
        covered = 1
        for i, tier in enumerate(self.tiers):
            covered *= tier.size
            if covered >= span_devices:
                return i
        return len(self.tiers) - 1  # unreachable: the product of sizes is num_devices


def cluster_names() -> list[str]:
    return list(_presets())


def load_cluster(ref: str, nodes: int | None = None) -> Cluster:
    """A preset by name (case-insensitive) or a YAML file with the fields of one preset."""
    presets = _presets()
    key = str(ref).strip().lower()
    if key in presets:
        cluster = presets[key]
    elif Path(ref).is_file():
        where = f"cluster file {str(ref)!r}"
        data = read_yaml(ref, where)
        if not isinstance(data, dict):
            got = "an empty file" if data is None else type(data).__name__
            raise InputError(f"{where}: expected a mapping of cluster fields "
                             f"({', '.join(_CLUSTER_FIELDS)}), got {got}")
        cluster = _parse_cluster(str(data.get("name") or Path(ref).stem), data, where)
    elif str(ref).endswith((".yaml", ".yml")) or "/" in str(ref):
        raise InputError(f"cluster file {str(ref)!r} not found")
    else:
        raise unknown_name("cluster", str(ref), list(presets))
    return cluster if nodes is None else cluster.with_nodes(nodes)


def summary(cluster: Cluster) -> dict:
    """A JSON-able description (for `clusterplan catalog clusters`)."""
    return {
        "name": cluster.name,
        "description": cluster.description,
        "device": cluster.device.name,
        "devices_per_node": cluster.devices_per_node,
        "nodes": cluster.num_nodes,
        "num_devices": cluster.num_devices,
        "tiers": [asdict(t) for t in cluster.tiers],
        "nics_per_node": cluster.nics_per_node,
        "nic_bytes_per_s": cluster.nic_bytes_per_s,
        "scale_up_table": cluster.scale_up_table,
    }


@cache
def _presets() -> dict[str, Cluster]:
    where = f"cluster presets file {str(_PRESETS_FILE)!r}"
    data = read_yaml(_PRESETS_FILE, where)
    if not isinstance(data, dict) or not isinstance(data.get("clusters"), dict):
        raise InputError(f"{where}: expected a top-level mapping 'clusters:' of name -> preset")
    presets = {}
    for name, entry in data["clusters"].items():
        name = str(name).lower()
        if not isinstance(entry, dict):
            raise InputError(f"{where}: preset {name!r}: expected a mapping, got {type(entry).__name__}")
        presets[name] = _parse_cluster(name, entry, f"{where}: preset {name!r}")
    return presets


# ---------------------------------------------------------------------------------------------
# Parsing and validation: every error is a one-line InputError naming the file/preset and the field.


def check_size(per_node: int, nodes: int, where: str) -> None:
    """Refuse clusters of more than MAX_DEVICES devices (one-line InputError)."""
    if per_node * nodes > MAX_DEVICES:
        valid = f"nodes <= {MAX_DEVICES // per_node:,}" if per_node <= MAX_DEVICES else \
            f"devices_per_node <= {MAX_DEVICES:,}"
        raise InputError(f"{where}: nodes={nodes} x devices_per_node={per_node} = {per_node * nodes:,} devices; "
                         f"the most clusterplan models is {MAX_DEVICES:,} (valid: {valid})")


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def _parse_cluster(name: str, data: dict, where: str) -> Cluster:
    extra = sorted(set(data) - set(_CLUSTER_FIELDS))
    if extra:
        raise InputError(f"{where}: unknown field {extra[0]!r}; valid fields: {', '.join(_CLUSTER_FIELDS)}")
    if data.get("device") is None:
        raise InputError(f"{where}: field 'device' is required (a catalog device name, e.g. h100-sxm)")
    try:
        device = get_device(data["device"])
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    if data.get("devices_per_node") is None:
        raise InputError(f"{where}: field 'devices_per_node' is required (an integer >= 1)")
    per_node = _positive_int(data["devices_per_node"], f"{where}: devices_per_node")
    nodes = _positive_int(data.get("nodes", 1), f"{where}: nodes")
    check_size(per_node, nodes, where)
    tiers = _parse_tiers(data.get("tiers"), per_node, nodes, where)
    nics = _positive_int(data.get("nics_per_node", per_node), f"{where}: nics_per_node")
    if nics > MAX_DEVICES:
        raise InputError(f"{where}: nics_per_node={nics} exceeds {MAX_DEVICES:,}")
    nic_bw = data.get("nic_bytes_per_s", tiers[-1].bytes_per_s * per_node / nics)
    sources = data.get("sources") or {}
    if not isinstance(sources, dict):
        raise InputError(f"{where}: sources must be a mapping field -> source string")
    table = data.get("scale_up_table", True)
    if not isinstance(table, bool):
        raise InputError(f"{where}: scale_up_table={table!r} must be true or false")
    return Cluster(
        name=name,
        device=device,
        devices_per_node=per_node,
        num_nodes=nodes,
        tiers=tiers,
        nics_per_node=nics,
        nic_bytes_per_s=positive_number(nic_bw, f"{where}: nic_bytes_per_s"),
        description=str(data.get("description") or ""),
        sources={str(k): str(v) for k, v in sources.items()},
        scale_up_table=table,
    )


def _parse_tiers(raw, per_node: int, nodes: int, where: str) -> tuple[Tier, ...]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise InputError(f"{where}: tiers must be a list of at least 2 tiers, innermost first "
                         "(intra-node tiers, then one spanning all nodes)")
    sizes = []
    for i, t in enumerate(raw):
        at = f"{where}: tiers[{i}]"
        if not isinstance(t, dict):
            raise InputError(f"{at}: expected a mapping with fields {', '.join(_TIER_FIELDS)}")
        extra = sorted(set(t) - set(_TIER_FIELDS))
        if extra:
            raise InputError(f"{at}: unknown field {extra[0]!r}; valid fields: {', '.join(_TIER_FIELDS)}")
        if t.get("kind") not in TIER_KINDS:
            raise InputError(f"{at}: kind {t.get('kind')!r} is not one of {', '.join(TIER_KINDS)}")
        if i == len(raw) - 1:
            if t.get("size") is not None:
                raise InputError(f"{at}: the last tier spans all nodes; drop 'size' and set 'nodes' instead")
        elif t.get("size") is not None:
            sizes.append(_positive_int(t["size"], f"{at}.size"))
        else:
            sizes.append(None)

    # At most one intra-node tier may omit its size: it takes whatever devices_per_node leaves.
    missing = [i for i, s in enumerate(sizes) if s is None]
    if len(missing) > 1:
        raise InputError(f"{where}: tiers {missing} have no size; with several intra-node tiers give "
                         "'size' for all but one")
    given = math.prod(s for s in sizes if s is not None)
    if missing:
        if per_node % given:
            raise InputError(f"{where}: intra-node tier sizes {[s for s in sizes if s]} do not divide "
                             f"devices_per_node {per_node}")
        sizes[missing[0]] = per_node // given
    if math.prod(sizes) != per_node:
        raise InputError(f"{where}: intra-node tier sizes {sizes} multiply to {math.prod(sizes)}, "
                         f"but devices_per_node is {per_node}")
    sizes.append(nodes)

    tiers = []
    for i, (t, size) in enumerate(zip(raw, sizes)):
        at = f"{where}: tiers[{i}]"
        for required in ("bytes_per_s", "latency_s"):
            if t.get(required) is None:
                raise InputError(f"{at}: field {required!r} is required")
        tiers.append(Tier(
            name=str(t.get("name") or f"tier{i}"),
            kind=t["kind"],
            size=size,
            bytes_per_s=positive_number(t["bytes_per_s"], f"{at}.bytes_per_s (bytes/s per device per direction)"),
            latency_s=positive_number(t["latency_s"], f"{at}.latency_s (seconds per step)"),
            oversubscription=_oversubscription(t.get("oversubscription", 1.0), f"{at}.oversubscription"),
        ))
    return tuple(tiers)


def _oversubscription(value, what: str) -> float:
    ratio = positive_number(value, what)
    if ratio < 1.0:
        raise InputError(f"{what} must be >= 1.0 (1.0 = non-blocking), got {value!r}")
    return ratio
