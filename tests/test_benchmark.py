"""The benchmark at toy size (keys and report, never timings) and the training hot path:
no host sync in position checks while training, one attention mask per forward, bf16 on CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments import benchmark
from modules.encodings import Positions
from modules.encodings.base import check_below
from modules.transformer import Transformer, TransformerConfig
from test_cli import read_metrics, tiny_flags

TOY = benchmark.BenchConfig(
    repeats=1, fit_steps=1, warmup=1, d_model=16, n_layers=1, n_heads=2, batch_size=2, max_seq_len=256,
    seq_len=32, flops_width=64, probe_rows=3, decode_side=3, prompt_side=2,
)


@pytest.mark.slow  # ~20 s on 2 idle cores: seven sections, three Lightning fits, ARC-AGI-1 loaded thrice
def test_toy_benchmark_writes_every_key(tmp_path):
    results = benchmark.run(TOY, log=lambda msg: None)
    json_path, md_path = benchmark.write_outputs(results, tmp_path, "python -m experiments.benchmark --toy")
    data = json.loads(json_path.read_text())
    keys = ["lightning_vs_plain", "vs_x_transformers", "peak_fraction", "pad_fraction_bucketed", "pad_fraction_naive",
            "kv_cache_speedup", "batch_probe_ratio", "encoding_step_time_vs_none"]
    for key in keys:
        assert key in data, f"{key} missing from benchmarks.json"
    for key in keys[:-1]:
        assert isinstance(data[key], float) and math.isfinite(data[key]) and data[key] > 0, (key, data[key])
    assert data["kv_cache_identical_tokens"] is True and data["decode_grid_shape"] == [3, 3]
    assert 0 <= data["pad_fraction_bucketed"] < data["pad_fraction_naive"] < 1
    assert set(data["encoding_step_time_vs_none"]) >= {"none", "rope_1d", "alibi_2d", "rope_1d+onehot_2d"}
    assert data["encoding_step_time_vs_none"]["none"] == 1.0
    report = md_path.read_text()
    assert md_path == tmp_path / "docs" / "benchmarks.md"
    for key in benchmark.TARGETS:
        assert f"`{key}`" in report
    assert "--toy" in report and "| figure | value | target | status |" in report


def test_verdicts_compare_against_the_target():
    assert benchmark.verdict("lightning_vs_plain", 0.98) == "met"
    assert benchmark.verdict("lightning_vs_plain", 0.9) == "MISSED"
    assert benchmark.verdict("pad_fraction_bucketed", 0.06) == "MISSED"
    assert benchmark.verdict("kv_cache_speedup", float("nan")) == "not measured"


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
    from experiments.cli import cli_main

    cli = cli_main(["fit", *tiny_flags(tmp_path, steps=3, **{"--trainer.precision": "bf16-mixed"})])
    assert cli.trainer.precision == "bf16-mixed"
    metrics = read_metrics(cli.trainer.log_dir)
    assert len(metrics["train/loss"]) == 3 and all(math.isfinite(v) for v in metrics["train/loss"])
    assert cli.model.skipped_steps == 0
