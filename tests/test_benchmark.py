"""The benchmark at toy size (keys and report, never timings) and the training hot path:
no host sync in position checks while training, one attention mask per forward, bf16 on CPU."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch

from gridlm.experiments import benchmark
from gridlm.modules.encodings import Positions
from gridlm.modules.encodings.base import check_below
from gridlm.modules.transformer import Transformer, TransformerConfig
from test_cli import read_metrics, tiny_flags

TOY = benchmark.BenchConfig(
    repeats=1, fit_steps=1, warmup=1, d_model=16, n_layers=1, n_heads=2, batch_size=2, max_seq_len=256,
    seq_len=32, flops_width=64, probe_rows=3, decode_side=3, prompt_side=2, ragged_prompts=3, ragged_side=2,
    compile_batches=1, compile=False,
)


def benchmark_families():
    from gridlm.datamodules.synthetic import FAMILIES

    return FAMILIES


@pytest.mark.slow  # ~35 s on 2 idle cores: ten sections, three Lightning fits, ARC-AGI-1 loaded five times
def test_toy_benchmark_writes_every_key(tmp_path):
    results = benchmark.run(TOY, log=lambda msg: None)
    json_path, md_path = benchmark.write_outputs(results, tmp_path, "python -m gridlm.experiments.benchmark --toy")
    data = json.loads(json_path.read_text())
    keys = ["lightning_vs_plain", "vs_x_transformers", "peak_fraction", "pad_fraction_bucketed", "pad_fraction_naive",
            "kv_cache_speedup", "batch_probe_ratio", "synthetic_prepare_vs_step", "pad_fraction_synthetic",
            "decode_tokens_per_s_cache", "decode_engine_vs_eager", "decode_ragged_batch_speedup", "compile_train_speedup",
            "encoding_step_time_vs_none"]
    for key in keys:
        assert key in data, f"{key} missing from benchmarks.json"
    for key in keys[:-1]:
        assert isinstance(data[key], float) and math.isfinite(data[key]) and data[key] > 0, (key, data[key])
    assert data["kv_cache_identical_tokens"] is True and data["decode_grid_shape"] == [3, 3]
    assert data["decode_engine_identical_tokens"] is True and data["decode_ragged_identical_tokens"] is True
    assert len(set(data["decode_ragged_prompt_lengths"])) == 3
    assert 0 <= data["pad_fraction_bucketed"] < data["pad_fraction_naive"] < 1
    assert 0 < data["synthetic_ms_per_task"] and data["synthetic_ms_per_task_slowest"][0] in benchmark_families()
    assert set(data["encoding_step_time_vs_none"]) >= {"none", "rope_1d", "alibi_2d", "rope_1d+onehot_2d"}
    assert data["encoding_step_time_vs_none"]["none"] == 1.0
    report = md_path.read_text()
    assert md_path == tmp_path / "docs" / "benchmarks.md"
    for key in benchmark.TARGETS:
        assert f"`{key}`" in report
    assert "--toy" in report and "| figure | value | range over repeats | target | status |" in report


def test_verdicts_compare_against_the_target():
    assert benchmark.verdict("lightning_vs_plain", 0.98) == "met"
    assert benchmark.verdict("lightning_vs_plain", 0.9) == "MISSED"
    assert benchmark.verdict("pad_fraction_bucketed", 0.06) == "MISSED"
    assert benchmark.verdict("kv_cache_speedup", float("nan")) == "not measured"


def test_step_flops_count_causal_attention_as_model_flops():
    """FlopCounterMode has no formula for the CPU attention kernel: without ours attention counts 0."""
    B, T, d, layers, heads = 2, 16, 32, 2, 4
    by_op = benchmark.step_flops(d, layers, heads, B, T)
    attention = sum(n for op, n in by_op.items() if "attention" in op)
    # forward QK^T and AV: 4 B T^2 d per layer over the causal triangle (T+1)/(2T); backward twice that
    assert attention == pytest.approx(3 * 4 * B * T * T * d * layers * (T + 1) / (2 * T), rel=1e-6)
    assert by_op["aten.mm"] > attention > 0


def _report(quick: bool = False, **figures) -> str:
    machine = {"cpu": "x86_64", "cores": 2, "torch": "t", "torch_threads": 2, "python": "3", "cuda": None, "load_average": [0, 0, 0]}
    config = asdict(benchmark.BenchConfig.make(quick))  # the full sizes, or --quick's
    return benchmark.render_markdown({"config": config, "machine": machine, "seconds": {}, **figures}, "cmd")


def test_report_names_every_miss_with_its_note_and_the_per_repeat_range():
    report = _report(peak_fraction=0.4, peak_fraction_range=[0.3, 0.55], kv_cache_speedup=12.0,
                     encoding_step_time_vs_none={"none": 1.0, "rope_1d": 1.05, "alibi_2d": 1.22})
    assert "| 0.4 | 0.3 - 0.55 | >= 0.5 | MISSED |" in report
    assert "### `peak_fraction` = 0.4" in report and "### encodings above 1.10x `none`: `alibi_2d` 1.22" in report
    assert "rope_1d` 1.05" not in report.split("## Where a target is missed")[1]
    assert "Every target was met" not in report
    met = _report(peak_fraction=0.6, encoding_step_time_vs_none={"none": 1.0, "rope_1d": 1.05})
    assert "Every target was met in this run." in met and "###" not in met


def test_merge_keeps_the_sections_not_run_and_names_the_merged_run(tmp_path):
    machine = {"cpu": "x86_64", "cores": 2, "torch": "t", "torch_threads": 2, "python": "3", "cuda": None, "load_average": [0.5, 0, 0]}
    config = {k: 1 for k in ("d_model", "n_layers", "n_heads", "batch_size", "max_seq_len", "seq_len", "repeats")}
    old = {"config": {**config, "quick": False}, "machine": machine, "seconds": {"padding": 1.0, "kv_cache": 2.0},
           "pad_fraction_bucketed": 0.02, "kv_cache_speedup": 11.0, "decode_tokens_per_s_cache": 391.0}
    (tmp_path / "benchmarks.json").write_text(json.dumps(old))
    new = {"config": {**config, "quick": False}, "machine": {**machine, "load_average": [9.5, 0, 0], "load_average_end": [9.0, 0, 0]},
           "seconds": {"decode_engine": 5.0, "total": 5.0}, "decode_tokens_per_s_cache": 4000.0}
    merged = benchmark.merge_results(tmp_path / "benchmarks.json", new, ["decode_engine"], "bench --only decode_engine --merge")
    assert merged["decode_tokens_per_s_cache"] == 4000.0 and merged["kv_cache_speedup"] == 11.0
    assert merged["seconds"] == {"padding": 1.0, "kv_cache": 2.0, "decode_engine": 5.0} and merged["machine"] == machine
    report = benchmark.render_markdown(merged, "bench")
    assert "sections decode_engine merged in from `bench --only decode_engine --merge`" in report and "(9.5, 0, 0)" in report
    again = benchmark.merge_results(tmp_path / "benchmarks.json", new, ["decode_engine"], "again")
    assert [r["command"] for r in again["merged_runs"]] == ["again"]  # a re-run replaces its own entry
    with pytest.raises(ValueError, match="does not exist"):
        benchmark.merge_results(tmp_path / "missing.json", new, ["decode_engine"], "x")


def test_quick_run_judges_no_target_it_measured_at_other_sizes():
    """A quick run's kv_cache_speedup 2.2 (10x10 outputs) and lightning_vs_plain 0.93 (width 64)
    are not misses of targets defined at 30x30 and width 128: reported, marked n/a, not MISSED."""
    figures = dict(kv_cache_speedup=2.2, lightning_vs_plain=0.93, pad_fraction_bucketed=0.2,
                   encoding_step_time_vs_none={"none": 1.0, "alibi_2d": 1.3})
    quick = _report(quick=True, **figures)
    assert "MISSED" not in quick and "### `kv_cache_speedup`" not in quick and "### encodings above" not in quick
    assert "| 2.2 |  | >= 10.0 | n/a (other sizes) |" in quick and "| 0.93 |  | >= 0.97 | n/a (other sizes) |" in quick
    assert "- `kv_cache_speedup`: d_model 64 (target at 128), n_layers 2 (target at 4), decode_side 10 (target at 30)" in quick
    assert "`alibi_2d` 1.30" in quick  # the slow encoding is still shown, as not judged
    full = _report(**figures)  # the same figures at the target sizes are misses
    assert full.count("| MISSED |") == 3 and "### `kv_cache_speedup` = 2.2" in full and "### encodings above 1.10x" in full
    cfg = asdict(benchmark.BenchConfig.make(True))
    assert benchmark.verdict("kv_cache_speedup", 2.2, cfg) == "n/a (other sizes)"
    assert benchmark.verdict("kv_cache_speedup", 2.2, asdict(benchmark.BenchConfig())) == "MISSED"
    # a size the target does not depend on leaves it judged: the padding target ignores the decoded grid
    assert benchmark.verdict("pad_fraction_bucketed", 0.02, {**asdict(benchmark.BenchConfig()), "decode_side": 10}) == "met"


def test_quick_main_prints_no_miss(tmp_path, capsys, monkeypatch):
    """``--quick`` end to end, through main(), with the quick sizes (the sections' measurements
    are replaced by fixed figures, as the test checks the verdicts, not the timings)."""
    fixed = {"kv_cache_speedup": 2.2, "lightning_vs_plain": 0.93}
    monkeypatch.setattr(benchmark, "SECTIONS", [("fixed", lambda cfg: dict(fixed, quick_seen=cfg.quick))])
    assert benchmark.main(["--quick", "--out_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kv_cache_speedup" in out and "MISSED" not in out and out.count("n/a (other sizes)") == 2
    assert "`make bench` judges every target" in out
    assert json.loads((tmp_path / "benchmarks.json").read_text())["quick_seen"] is True


def test_quick_config_is_smaller():
    quick, full = benchmark.BenchConfig.make(True), benchmark.BenchConfig.make(False)
    assert quick.quick and not full.quick
    assert quick.repeats < full.repeats and quick.seq_len < full.seq_len and full.decode_side == 30


# ---------------------------------------------------------------- hot path


def test_position_check_reads_no_host_value_while_training_on_a_device():
    """Meta tensors stand in for an accelerator: reading their values (a host sync) raises."""
    pos = torch.arange(10, device="meta")
    check_below(pos, 5, "pos", "rope_1d", "fix", low=0)  # autograd on: device-side assert only
    with torch.no_grad(), pytest.raises(RuntimeError, match="meta"):
        check_below(pos, 5, "pos", "rope_1d", "fix", low=0)  # outside training: checked on the host
    with pytest.raises(ValueError, match="rope_1d: pos 9 is outside the table of 5 entries"):
        check_below(torch.arange(10), 5, "pos", "rope_1d", "fix", low=0)  # CPU: checked, no sync cost


def _grid_positions(B: int, T: int, side: int = 4) -> Positions:
    i = torch.arange(T)
    cell = i % (side * side + 1) < side * side
    row = torch.where(cell, (i % (side * side + 1)) // side, -1)
    col = torch.where(cell, i % side, -1)
    grid = torch.where(cell, i // (side * side + 1), -1)
    return Positions(*(t.expand(B, T) for t in (i, row, col, grid)))


@pytest.mark.parametrize("encoding", ["rope_1d", "alibi_2d"])
def test_attention_mask_is_built_once_per_forward(encoding, monkeypatch):
    model = Transformer(TransformerConfig(d_model=16, n_layers=3, n_heads=2, max_seq_len=64, encoding=encoding))
    built = []
    inner = model.attn_mask
    monkeypatch.setattr(model, "attn_mask", lambda *a: built.append(inner(*a)) or built[-1])
    model(torch.randint(0, 10, (2, 40)), _grid_positions(2, 40))
    assert len(built) == 1
    assert (built[0] is None) == (encoding == "rope_1d")  # no bias: the fused is_causal path


def test_alibi_mask_matches_bias_plus_causal_and_runs_in_bf16():
    model = Transformer(TransformerConfig(d_model=16, n_layers=2, n_heads=2, max_seq_len=64, encoding="alibi_2d"))
    p = _grid_positions(2, 20)
    bias = model.encodings.bias(p, p)  # (B, nh, T, T)
    mask = model.attn_mask(bias, None, 20, 0, torch.zeros(1))
    causal = torch.ones(20, 20, dtype=torch.bool).tril()
    torch.testing.assert_close(mask, bias.masked_fill(~causal, float("-inf")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.attn_mask(bias, None, 20, 0, torch.zeros(1)).dtype == torch.bfloat16
        logits = model(torch.randint(0, 10, (2, 20)), p)
    assert torch.isfinite(logits.float()).all()


def test_fit_runs_in_bf16_mixed_on_cpu(tmp_path):
    from gridlm.experiments.cli import cli_main

    cli = cli_main(["fit", *tiny_flags(tmp_path, steps=3, **{"--trainer.precision": "bf16-mixed"})])
    assert cli.trainer.precision == "bf16-mixed"
    metrics = read_metrics(cli.trainer.log_dir)
    assert len(metrics["train/loss"]) == 3 and all(math.isfinite(v) for v in metrics["train/loss"])
    assert cli.model.skipped_steps == 0
