"""The device catalog and cluster presets: required entries, sourced figures, spot values, and
one-line InputErrors for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwmodels.clusters import TIER_KINDS, cluster_names, load_cluster, summary
from hwmodels.devices import DTYPES, all_devices, device_names, get_device, load_devices_file
from hwmodels.errors import InputError

REQUIRED_DEVICES = [
    "a100-sxm-40g", "a100-sxm-80g", "a100-pcie-80g", "h100-sxm", "h100-pcie", "h200", "b200", "gb200",
    "l40s", "l4", "v100-sxm", "mi250x-gcd", "mi300x", "mi325x", "tpu-v4", "tpu-v5e", "tpu-v5p",
    "ascend-910b", "gaudi2", "gaudi3", "b300", "gb300", "rtx-pro-6000",
]
NO_BF16 = {"v100-sxm": "fp16"}  # Volta has no BF16 hardware; its training dtype is fp16
REQUIRED_CLUSTERS = [
    "dgx-a100", "dgx-h100", "dgx-h200", "dgx-b200", "gb200-nvl72", "frontier", "mi300x", "tpu-v5p",
    "ascend-910b", "pcie-a100", "dgx-b300", "gb300-nvl72", "l40s-server", "rtx-pro-6000-server",
]
NUMBER_FIELDS = ["hbm_bytes", "hbm_bytes_per_s", "scale_up_bytes_per_s", "power_w", "price_per_hour"]


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip()
    return message


# --- devices -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REQUIRED_DEVICES)
def test_required_device_has_training_peak_and_memory(name):
    d = get_device(name)
    assert d.name == name
    assert d.peak(NO_BF16.get(name, "bf16")) > 1e12
    assert d.hbm_bytes > 1e9
    assert d.hbm_bytes_per_s is not None or "hbm_bytes_per_s" in d.unknown
    assert d.kind in ("gpu", "npu", "tpu")


@pytest.mark.parametrize("name", REQUIRED_DEVICES)
def test_every_present_figure_has_a_source_and_every_missing_one_is_listed(name):
    d = get_device(name)
    for dtype, value in d.peak_flops.items():
        assert dtype in DTYPES and value > 0
        assert d.sources.get(f"peak_flops.{dtype}"), f"{name}: no source for peak_flops.{dtype}"
    for key in NUMBER_FIELDS:
        value = getattr(d, key)
        if value is None:
            assert key in d.unknown, f"{name}: {key} is null but not listed in unknown"
        else:
            assert value > 0
            assert d.sources.get(key), f"{name}: no source for {key}"
    assert d.scale_up and d.sources.get("scale_up")


def test_dense_spot_values():
    def close(a, b):
        return abs(a - b) <= 0.01 * b

    assert close(get_device("a100-sxm-80g").peak("bf16"), 312e12)
    assert close(get_device("a100-sxm-40g").hbm_bytes_per_s, 1.555e12)
    assert close(get_device("h100-sxm").peak("bf16"), 989e12)  # dense, not the sparse 1979
    assert close(get_device("h100-sxm").peak("fp8"), 1979e12)
    assert close(get_device("h100-sxm").hbm_bytes_per_s, 3.35e12)
    assert close(get_device("h100-sxm").scale_up_bytes_per_s, 450e9)  # per direction, not 900
    assert close(get_device("h200").hbm_bytes, 141 * 2**30)
    assert close(get_device("b200").hbm_bytes, 180 * 2**30)
    assert close(get_device("gb200").hbm_bytes, 186 * 2**30)
    assert close(get_device("b200").peak("fp4"), 9000e12)
    assert close(get_device("mi300x").peak("bf16"), 1307e12)
    assert close(get_device("mi300x").hbm_bytes_per_s, 5.3e12)
    assert close(get_device("mi250x-gcd").peak("bf16"), 191.5e12)  # per GCD = half a module
    assert close(get_device("gaudi3").peak("bf16"), 1677e12)  # shipping clock, not 1835
    assert close(get_device("tpu-v5p").peak("bf16"), 459e12)
    assert close(get_device("tpu-v5p").hbm_bytes, 95 * 2**30)


def test_aliases_and_case_resolve():
    assert get_device("a100").name == "a100-sxm-80g"
    assert get_device("a100-80g").name == "a100-sxm-80g"
    assert get_device("a100-pcie").name == "a100-pcie-80g"
    assert get_device("H100").name == "h100-sxm"
    assert get_device("h200-sxm").name == "h200"
    assert get_device("mi250x").name == "mi250x-gcd"
    assert get_device(" V100 ").name == "v100-sxm"
    assert set(REQUIRED_DEVICES) <= set(device_names())
    assert len(all_devices()) == len(device_names())


def test_unknown_device_suggests_close_names():
    message = one_line_error(get_device, "h100-sx")
    assert "h100-sxm" in message and "did you mean" in message


def test_missing_dtype_is_a_one_line_error_listing_valid_ones():
    message = one_line_error(get_device("l4").peak, "fp4")
    assert "'l4'" in message and "fp4" in message and "bf16" in message
    assert "v100-sxm" in one_line_error(get_device("v100").peak, "bf16")
    assert "valid dtypes" in one_line_error(get_device("h100").peak, "fp12")


def test_kernel_profile_xor_efficiency_from():
    profiled = {d.name for d in all_devices() if d.kernel_profile}
    assert {"a100-sxm-80g", "h100-sxm", "h200", "b200", "gb200", "l40s"} <= profiled
    for d in all_devices():
        assert (d.kernel_profile is None) != (d.efficiency_from is None), d.name
        if d.efficiency_from:
            assert get_device(d.efficiency_from).kernel_profile, d.name
    assert get_device("mi300x").efficiency_from == "h100-sxm"
    assert get_device("tpu-v5p").efficiency_from == "h100-sxm"
    assert get_device("v100-sxm").efficiency_from == "a100-sxm-80g"


def test_kernel_profiles_have_measured_tables_in_the_pinned_package():
    core = pytest.importorskip("aiconfigurator_core")
    data = Path(core.__file__).parent / "systems" / "data"
    for d in all_devices():
        if d.kernel_profile:
            assert list((data / d.kernel_profile).rglob("gemm_perf.parquet")), d.name


def test_devices_are_hashable():
    assert len({get_device("h100"), get_device("h100-sxm"), get_device("b200")}) == 2


def _devices_yaml(tmp_path, entry: str) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  x1:\n" + entry)
    return path


GOOD_ENTRY = """\
    vendor: acme
    kind: gpu
    peak_flops: {bf16: 1.0e+15}
    hbm_bytes: 1.0e+11
    hbm_bytes_per_s: 1.0e+12
    scale_up: "link"
    scale_up_bytes_per_s: 1.0e+11
    power_w: 500
    price_per_hour: null
    kernel_profile: h100_sxm
    efficiency_from: null
    unknown: [price_per_hour]
"""


def test_a_valid_devices_file_loads(tmp_path):
    devices = load_devices_file(_devices_yaml(tmp_path, GOOD_ENTRY))
    assert devices["x1"].peak("bf16") == 1e15 and devices["x1"].price_per_hour is None


@pytest.mark.parametrize("old, new, expect", [
    ("kind: gpu", "kind: fpga", "kind"),
    ("{bf16: 1.0e+15}", "{bf17: 1.0e+15}", "bf17"),
    ("{bf16: 1.0e+15}", "{bf16: -3}", "peak_flops.bf16"),
    ("hbm_bytes: 1.0e+11", "hbm_bytes: 0", "hbm_bytes"),
    ("power_w: 500", "power_w: null", "power_w"),
    ("kernel_profile: h100_sxm", "kernel_profile: h100_sxmm", "kernel_profile"),
    ("efficiency_from: null", "efficiency_from: nope", "efficiency_from"),
    ("vendor: acme", "vendor: acme\n    colour: red", "colour"),
])
def test_bad_device_entries_raise_one_line_errors(tmp_path, old, new, expect):
    message = one_line_error(load_devices_file, _devices_yaml(tmp_path, GOOD_ENTRY.replace(old, new)))
    assert "'x1'" in message and expect in message


# --- clusters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REQUIRED_CLUSTERS)
def test_cluster_presets_load_and_resize(name):
    c = load_cluster(name)
    assert c.name == name and name in cluster_names()
    assert c.num_devices == c.devices_per_node * c.num_nodes
    sizes = [t.size for t in c.tiers]
    assert sizes[-1] == c.num_nodes and _prod(sizes) == c.num_devices
    assert all(t.kind in TIER_KINDS and t.bytes_per_s > 0 and t.latency_s > 0 for t in c.tiers)
    assert c.tier_of_span(1) == 0
    assert c.tier_of_span(c.devices_per_node) == len(c.tiers) - 2  # a node stays inside the node tiers
    big = c.with_nodes(4)
    assert big.num_devices == 4 * c.devices_per_node and big.tiers[-1].size == 4
    assert big.tier_of_span(big.num_devices) == len(big.tiers) - 1
    assert load_cluster(name, nodes=3).num_nodes == 3
    json.dumps(summary(big))
    for i in range(len(c.tiers)):
        assert c.sources.get(f"tiers.{i}.bytes_per_s") and c.sources.get(f"tiers.{i}.latency_s"), name


def test_cluster_spot_values():
    h100 = load_cluster("dgx-h100", nodes=16)
    assert h100.device.name == "h100-sxm" and h100.num_devices == 128
    assert h100.tiers[0].bytes_per_s == 450e9 and h100.tiers[1].bytes_per_s == 50e9
    assert h100.tier_of_span(8) == 0 and h100.tier_of_span(9) == 1
    assert load_cluster("gb200-nvl72").tier_of_span(72) == 0
    frontier = load_cluster("frontier")
    assert frontier.device.name == "mi250x-gcd" and [t.size for t in frontier.tiers] == [2, 4, 1]
    assert frontier.tier_of_span(2) == 0 and frontier.tier_of_span(3) == 1
    assert frontier.tiers[-1].bytes_per_s == 12.5e9  # 4 x 25 GB/s per node / 8 GCDs


def test_cluster_name_errors():
    assert "dgx-h100" in one_line_error(load_cluster, "dgx-h10")
    assert "not found" in one_line_error(load_cluster, "no/such/cluster.yaml")
    one_line_error(load_cluster, "dgx-h100", nodes=0)
    one_line_error(load_cluster("dgx-h100").tier_of_span, 9)


GOOD_CLUSTER = """\
name: mine
device: h100
devices_per_node: 8
nodes: 2
tiers:
  - {name: nvlink, kind: nvswitch, bytes_per_s: 450.0e+9, latency_s: 2.0e-6}
  - {name: ib, kind: fat-tree, bytes_per_s: 25e9, latency_s: 5.0e-6, oversubscription: 2}
"""


def test_a_cluster_yaml_file_loads(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD_CLUSTER)
    c = load_cluster(str(path), nodes=4)
    assert c.name == "mine" and c.num_devices == 32 and c.tiers[1].bytes_per_s == 25e9
    assert c.nics_per_node == 8 and c.nic_bytes_per_s == 25e9  # defaults: one NIC per device


@pytest.mark.parametrize("text, expect", [
    ("device: h100\ndevices_per_node: 8\n", "tiers"),
    (GOOD_CLUSTER.replace("bytes_per_s: 25e9", "bytes_per_s: 0"), "bytes_per_s"),
    (GOOD_CLUSTER.replace("latency_s: 5.0e-6", "latency_s: -1"), "latency_s"),
    (GOOD_CLUSTER.replace("kind: fat-tree", "kind: hypercube"), "hypercube"),
    (GOOD_CLUSTER.replace("device: h100", "device: h100-sx"), "h100-sxm"),
    (GOOD_CLUSTER.replace("devices_per_node: 8", "devices_per_node: 0"), "devices_per_node"),
    (GOOD_CLUSTER.replace("{name: nvlink,", "{name: nvlink, size: 3,"), "devices_per_node"),
    (GOOD_CLUSTER.replace("oversubscription: 2", "oversubscription: 0.5"), "oversubscription"),
    (GOOD_CLUSTER.replace("nodes: 2", "nodes: 2\nnodez: 3"), "nodez"),
    ("- just\n- a list\n", "mapping"),
    ("device: h100\ntiers: [\n  {name: a\n", "YAML syntax error"),
])
def test_bad_cluster_files_raise_one_line_errors(tmp_path, text, expect):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    message = one_line_error(load_cluster, str(path))
    assert "bad.yaml" in message and expect in message


def test_non_dividing_tier_sizes(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD_CLUSTER.replace(
        "  - {name: nvlink,",
        "  - {name: pair, kind: nvlink-bridge, size: 3, bytes_per_s: 1.0e+11, latency_s: 2.0e-6}\n"
        "  - {name: nvlink,"))
    assert "divide" in one_line_error(load_cluster, str(path))


def _prod(xs):
    out = 1
    for x in xs:
        out *= x
    return out


def test_stand_in_devices_cover_every_dtype():
    for d in all_devices():
        if d.efficiency_from:
            assert set(d.peak_flops) <= set(get_device(d.efficiency_from).peak_flops), d.name


def test_blackwell_ultra_and_pcie_servers_read_their_measured_tables():
    """B300, GB300 and RTX PRO 6000 have measured kernel tables in aiconfigurator-core 0.12.0: their
    GEMMs come from those tables (no roofline note), and NVFP4 GEMMs run faster than FP8 ones."""
    from hwmodels.kernels import kernel_model
    for name in ("b300", "gb300", "rtx-pro-6000"):
        times = {}
        for dtype in ("bf16", "fp8", "fp4"):
            km = kernel_model(name, dtype)
            assert not any("roofline" in n for n in km.notes), (name, dtype, km.notes)
            times[dtype] = km.gemm_s(8192, 8192, 8192)
        assert times["fp4"] < times["fp8"] < times["bf16"], (name, times)
        # measured, so below peak: 2·8192³ FLOP at the dense fp4 peak is the lower bound
        assert times["fp4"] > 2 * 8192**3 / get_device(name).peak("fp4")


def test_fp4_gemm_reads_the_nvfp4_table_not_the_roofline():
    """An NVFP4 GEMM on B200 takes the measured nvfp4 rate (~5.3 PFLOP/s best in aiconfigurator-core
    0.12.0 vllm rows), well below the 87%-of-9-PF roofline that was used before it was read."""
    from hwmodels import profiles
    from hwmodels.kernels import FALLBACK_GEMM_EFFICIENCY, kernel_model
    table = profiles.load_gemm_table("b200_sxm", "fp4")
    assert table is not None and table.stamp["gemm_dtype"] == "nvfp4"
    assert 4.5e15 < table.peak_achieved() < 6.5e15
    km = kernel_model("b200", "fp4")
    roofline_s = 2 * 8192**3 / (FALLBACK_GEMM_EFFICIENCY * get_device("b200").peak("fp4"))
    assert km.gemm_s(8192, 8192, 8192) > 1.2 * roofline_s
