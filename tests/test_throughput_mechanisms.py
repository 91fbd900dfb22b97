"""Mechanisms behind the offline max-throughput replay (#22) that live outside the serving costs:
each checked against its source, and a switch-off check (the test fails when it is removed).

PCIe rings are CPU-bound: on a PCIe server without NVLink, an NCCL ring over more than two GPUs
crosses the CPUs' root complexes and memory, and its bus bandwidth falls with the ring size
(NVIDIA/nccl issue #1639: 35 GB/s on 4 and 28 GB/s on 8 PCIe Gen5 x16 GPUs of a dual-socket
Xeon 8480+ server, i.e. 35/64 and 28/64 of the link; two GPUs keep GTC24 S62129's Gen4 24/32)."""
from __future__ import annotations

import pytest

from hwmodels import collectives as C
from hwmodels.clusters import load_cluster
from hwmodels.collectives import bus_bandwidth, collective_cost, collective_s, pcie_ring_efficiency
from simulator.models import load_model
from simulator.serving.costs import IterationCost

L70 = load_model("llama3.1-70b")
PCIE_A100 = load_cluster("pcie-a100")


@pytest.fixture
def no_cpu_bound_rings(monkeypatch):
    """The mechanism switched off: every PCIe ring at the two-GPU efficiency."""
    monkeypatch.setattr(C, "PCIE_RING_EFFICIENCY", {2: 0.75, 4: 0.75, 8: 0.75})
    _clear()
    yield
    monkeypatch.undo()
    _clear()


def _clear():
    C.candidates.cache_clear()
    C.collective_s.cache_clear()


def test_pcie_ring_efficiency_as_nccl_issue_1639():
    """nccl#1639: busbw 35 GB/s (4 GPUs) and 28 GB/s (8 GPUs) on x16 links of 64 GB/s per
    direction; GTC24 S62129: PCIe Gen4 24 of 32 GB/s for a pair; log2-linear in between."""
    assert pcie_ring_efficiency(2) == pytest.approx(0.75)
    assert pcie_ring_efficiency(4) == pytest.approx(35 / 64)
    assert pcie_ring_efficiency(8) == pytest.approx(28 / 64)
    assert pcie_ring_efficiency(6) == pytest.approx(35 / 64 + (28 / 64 - 35 / 64) * 0.5849625, rel=1e-6)
    assert pcie_ring_efficiency(16) == pytest.approx(28 / 64)  # beyond the measured sizes: the edge
    assert pcie_ring_efficiency(1) == pytest.approx(0.75)


def test_pcie_a100_large_allreduce_bus_bandwidth_is_the_cpu_bound_share():
    """A 1 GiB all-reduce on 8 A100 PCIe (31 GB/s Gen4 links, no measured table) reaches, as
    nccl-tests counts it, the link rate x 28/64 within 1% (the latency is negligible there);
    on 4 GPUs 35/64; on 2 GPUs the pair's 0.75."""
    size = float(2 ** 30)
    for n, eff in ((8, 28 / 64), (4, 35 / 64), (2, 0.75)):
        t = collective_cost(PCIE_A100, "all_reduce", n, 1, size).time_s
        _, busbw = bus_bandwidth("all_reduce", n, size, t)
        assert busbw == pytest.approx(31e9 * eff, rel=0.01), n


def test_switched_off_the_8_gpu_pcie_allreduce_is_faster(no_cpu_bound_rings):
    """Switch-off check: without the CPU-bound share the same 8-GPU all-reduce takes the pair's
    efficiency and is 0.75 / (28/64) = 1.71x faster at 1 GiB; a send/recv (one pair) and the
    2-GPU ring do not change."""
    size = float(2 ** 30)
    off8 = collective_s(PCIE_A100, "all_reduce", 8, 1, size)
    off2 = collective_s(PCIE_A100, "all_reduce", 2, 1, size)
    off_p2p = collective_s(PCIE_A100, "send_recv", 2, 1, size)
    C.PCIE_RING_EFFICIENCY = {2: 0.75, 4: 35 / 64, 8: 28 / 64}  # the mechanism back on
    _clear()
    on8 = collective_s(PCIE_A100, "all_reduce", 8, 1, size)
    assert on8 / off8 == pytest.approx(0.75 / (28 / 64), rel=0.01)
    assert collective_s(PCIE_A100, "all_reduce", 2, 1, size) == pytest.approx(off2, rel=1e-9)
    assert collective_s(PCIE_A100, "send_recv", 2, 1, size) == pytest.approx(off_p2p, rel=1e-9)


def test_serving_tp8_allreduce_on_pcie_takes_the_cpu_bound_ring():
    """The serving TP all-reduce on a PCIe server is NCCL (TRT-LLM needs NVLink for its own
    kernel), so a 70B decode batch of 512 at tp=8 on A100 PCIe (8.4 MB) pays the CPU-bound
    ring: more than 1.5x the time the pair efficiency would give."""
    ic = IterationCost(L70, PCIE_A100, 8, dtype="fp16", kv_dtype="fp16", engine="trtllm")
    nbytes = 512 * L70.hidden_size * 2
    t = ic.tp_allreduce_s(nbytes)
    assert t == pytest.approx(collective_s(PCIE_A100, "all_reduce", 8, 1, nbytes), rel=1e-9)
    ring_bytes = 2 * 7 / 8 * nbytes
    assert t > 1.5 * ring_bytes / (31e9 * 0.75)


def test_calibrated_pcie_tables_win_over_the_reference_share(no_cpu_bound_rings):
    """A PCIe server calibrated by its device's measured NCCL table (L40S, aiconfigurator-core, on
    the host it was measured on) keeps the table's per-size fit: the reference-server share does
    not touch it."""
    from dataclasses import replace
    l40s = replace(load_cluster("l40s-server"), scale_up_table=True)
    off = collective_s(l40s, "all_reduce", 8, 1, 16e6)
    C.PCIE_RING_EFFICIENCY = {2: 0.75, 4: 35 / 64, 8: 28 / 64}
    _clear()
    assert collective_s(l40s, "all_reduce", 8, 1, 16e6) == pytest.approx(off, rel=1e-9)


def test_l40s_server_takes_the_pcie_ring_model_not_the_slow_hosts_table():
    """clusters.yaml l40s-server: scale_up_table false. The device's NCCL table was measured on a
    host whose 8-GPU ring reaches 1.45 GB/s bus bandwidth (1/14 of its own 2-GPU pairs); the preset
    describes a PCIe Gen4 x16 server, whose 8-GPU ring runs at 28/64 of the link (NVIDIA/nccl#1639)."""
    from dataclasses import replace
    server = load_cluster("l40s-server")
    assert not server.scale_up_table
    size = 256 * 2**20
    busbw = lambda c: 2 * 7 / 8 * size / collective_s(c, "all_reduce", 8, 1, size)  # noqa: E731
    assert busbw(server) == pytest.approx(28 / 64 * 32e9, rel=0.05)
    table_host = replace(server, scale_up_table=True)
    assert busbw(table_host) < 2e9  # the table: 1.45 GB/s at 256 MiB (its fit reads 1.7)


def test_cluster_file_scale_up_table_must_be_a_boolean(tmp_path):
    from hwmodels.errors import InputError
    f = tmp_path / "box.yaml"
    f.write_text("device: l40s\ndevices_per_node: 8\nscale_up_table: maybe\ntiers:\n"
                 "  - {name: pcie, kind: pcie, bytes_per_s: 32.0e+9, latency_s: 2.5e-6}\n"
                 "  - {name: net, kind: fat-tree, bytes_per_s: 50.0e+9, latency_s: 4.0e-6}\n")
    with pytest.raises(InputError, match="scale_up_table='maybe' must be true or false"):
        load_cluster(str(f))
