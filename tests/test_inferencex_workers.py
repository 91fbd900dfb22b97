"""validation/tools/inferencex_workers.py: matching an export row to InferenceX's benchmark matrix."""
from __future__ import annotations

from validation.tools import inferencex_workers as ix

ROW = {"id": "r", "model_path": "deepseek-ai/DeepSeek-R1", "system": "gb200", "backend": "trtllm",
       "precision": "fp4", "mode": "disagg", "isl": "1024", "osl": "1024",
       "silicon_data_source": "source_file=2026-03-25.csv; silicon_concurrency=96; "
                              "measured=2026-02-03T00:00:00Z; image=nvcr.io#nvidia/x:1.0",
       # the export keeps each pool's GPU count, not its EP size or attention-DP flag
       "prefill_tp_size": "4", "prefill_attention_dp_size": "1", "prefill_moe_ep_size": "4",
       "decode_tp_size": "32", "decode_attention_dp_size": "1", "decode_moe_ep_size": "4"}


def _entry(conc, ptp=4, dtp=32, pw=2, dw=1, spec="none", **extra):
    return {"spec-decoding": spec, **conc,
            "prefill": {"num-worker": pw, "tp": ptp, "ep": ptp, "dp-attn": True, **extra},
            "decode": {"num-worker": dw, "tp": dtp, "ep": dtp, "dp-attn": True}}


def _matrix(*entries, image="nvcr.io/nvidia/x:1.0", isl=1024):
    return {"dsr1-fp4-gb200-dynamo-trt": {
        "image": image, "model-prefix": "dsr1", "runner": "gb200", "precision": "fp4",
        "framework": "dynamo-trt", "disagg": True,
        "seq-len-configs": [{"isl": isl, "osl": 1024, "search-space": list(entries)}]}}


def test_row_matches_the_entry_listing_its_concurrency_and_gpu_counts():
    found = ix.matches(ROW, _matrix(_entry({"conc-list": [48, 96]}), _entry({"conc-list": [8]}, pw=1, dw=4)))
    assert len(found) == 1
    s = ix._shape(found[0][1])
    assert (s.prefill_num_workers, s.decode_num_workers, s.decode_ep, s.decode_dp_attn) == (2, 1, 32, True)


def test_conc_ranges_double_from_start_to_end():
    assert ix._concurrencies({"conc-start": 4, "conc-end": 64}) == {4, 8, 16, 32, 64}
    assert ix.matches(ROW, _matrix(_entry({"conc-start": 12, "conc-end": 96})))
    assert not ix.matches(ROW, _matrix(_entry({"conc-start": 4, "conc-end": 64})))


def test_no_match_on_other_gpu_counts_image_lengths_or_placeholders():
    assert not ix.matches(ROW, _matrix(_entry({"conc-list": [96]}, dtp=16)))
    assert not ix.matches(ROW, _matrix(_entry({"conc-list": [96]}), image="nvcr.io/nvidia/x:2.0"))
    assert not ix.matches(ROW, _matrix(_entry({"conc-list": [96]}), isl=8192))
    # tp 1 with attention DP: an entry whose launch script hard-codes the layout
    assert ix._placeholder({"tp": 1, "dp-attn": True}) and not ix._placeholder({"tp": 4, "dp-attn": True})
    row = {**ROW, "prefill_tp_size": "1", "decode_tp_size": "1"}
    assert not ix.matches(row, _matrix(_entry({"conc-list": [96]}, ptp=1, dtp=1)))


def test_mtp_and_plain_entries_at_the_same_point_are_ambiguous(monkeypatch):
    matrix = _matrix(_entry({"conc-list": [96]}), _entry({"conc-list": [96]}, spec="mtp"))
    monkeypatch.setattr(ix, "_matrix", lambda repo, sha, path: matrix)
    import datetime as dt
    versions = [(dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc), "a" * 40, ix.CONFIG_PATHS[0])]
    several = ix.resolve(ROW, "repo", versions)
    # the point is listed, with both candidates, not resolved to either
    assert (several["deployments"], several["mtp_deployments"]) == (2, 1)
    assert several["candidates"] == ("2P tp4 ep4 dp-attn + 1D tp32 ep32 dp-attn, mtp; "
                                     "2P tp4 ep4 dp-attn + 1D tp32 ep32 dp-attn, none")
    assert several["config_key"] == "dsr1-fp4-gb200-dynamo-trt" and "prefill_num_workers" not in several
    # other worker counts at the same GPU counts are as ambiguous
    matrix = _matrix(_entry({"conc-list": [96]}), _entry({"conc-list": [96]}, pw=3))
    assert ix.resolve(ROW, "repo", versions)["mtp_deployments"] == 0
    matrix = _matrix(_entry({"conc-list": [96]}, spec="mtp"))
    got = ix.resolve(ROW, "repo", versions)
    assert got["spec_decoding"] == "mtp" and got["commit"] == "a" * 40 and got["commit_date"] == "2026-02-01"


def test_aggregated_rows_match_on_gpus_and_the_layout_they_record():
    row = {**ROW, "mode": "agg", "tp_size": "8", "attention_dp_size": "1", "moe_ep_size": "8"}
    matrix = {"dsr1-fp4-gb200-trt-mtp": {
        "image": "nvcr.io/nvidia/x:1.0", "model-prefix": "dsr1", "runner": "gb200-trt", "precision": "fp4",
        "framework": "trt", "seq-len-configs": [{"isl": 1024, "osl": 1024, "search-space": [
            {"tp": 8, "ep": 8, "conc-start": 48, "conc-end": 192, "spec-decoding": "mtp"},
            {"tp": 8, "ep": 8, "dp-attn": True, "conc-start": 48, "conc-end": 192, "spec-decoding": "none"},
            {"tp": 4, "ep": 4, "conc-start": 96, "conc-end": 96}]}]}}
    found = ix.matches(row, matrix)
    assert [ix._shape(e) for _, e in found] == [ix.AggShape(8, 8, False, "mtp")]
    # the disaggregated entries of the same model are not candidates for an aggregated row
    assert not ix.matches(row, _matrix(_entry({"conc-list": [96]}, ptp=8, dtp=8)))
