"""``--model.compile true``: the compiled training forward gives the eager losses and gradients,
serves batches of different lengths from one dynamic-shape graph, and leaves validation and
decoding uncompiled; a compiler that fails leaves training eager after one warning."""

from __future__ import annotations

import warnings

import pytest
import torch

from gridlm.datamodules.datamodule import GridDataModule
from gridlm.modules.base_model import AutoregressiveGridModel


def test_a_failing_compiler_leaves_training_eager_with_one_warning(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("inductor: no C++ compiler\nmore")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    dm = GridDataModule(source="synthetic", n_synthetic=4, synthetic_max_side=3, max_seq_len=256, batch_size=2, max_val_examples=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    module = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, compile=True).train()
    with pytest.warns(RuntimeWarning, match=r"model.compile: torch.compile failed \(RuntimeError: inductor: no C\+\+ compiler\); training eagerly"):
        losses, _, _ = module.token_losses(batch)
    assert not module.compile_training
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eager from now on: no second warning
        torch.testing.assert_close(losses, module.token_losses(batch)[0])
    with torch.no_grad():
        torch.testing.assert_close(losses, module.eval().token_losses(batch)[0])


@pytest.mark.slow  # one inductor compilation of forward + backward: tens of seconds on 2 cores
def test_compiled_training_step_matches_eager_on_batches_of_two_lengths():
    dm = GridDataModule(source="synthetic", n_synthetic=12, synthetic_max_side=4, max_seq_len=256, batch_size=4, max_val_examples=4)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(2)]
    assert batches[0]["tokens"].shape != batches[1]["tokens"].shape  # precondition: two shapes
    modules = {}
    for flag in (False, True):
        torch.manual_seed(0)
        modules[flag] = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, compile=flag).train()
    for i, batch in enumerate(batches):
        grads = {}
        for flag, module in modules.items():
            module.zero_grad(set_to_none=True)
            with torch._dynamo.config.patch(error_on_recompile=i > 0):  # the second length reuses the graph
                losses, _, _ = module.token_losses(batch)
            losses.mean().backward()
            grads[flag] = (losses.detach(), [p.grad.clone() for p in module.parameters()])
        torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-4, atol=1e-5)
        for g_compiled, g_eager in zip(grads[True][1], grads[False][1]):
            torch.testing.assert_close(g_compiled, g_eager, rtol=1e-3, atol=1e-5)
    compiled = modules[True]
    assert compiled._compiled_forward is not None
    with torch.no_grad():  # validation: the eager forward (no second compilation for a new grad mode)
        compiled.eval()
        calls = []
        real = compiled._compiled_forward
        compiled._compiled_forward = lambda *a: calls.append(1) or real(*a)
        compiled.token_losses(batches[0])
    assert calls == []


@pytest.mark.parametrize("input_attention", ["causal", "bidirectional"])
def test_the_training_forward_is_one_graph(input_attention):
    """No graph break (a host sync or data-dependent branch) in the forward ``--model.compile``
    compiles: dynamo traces it whole (``torch._dynamo.explain``, no inductor compilation)."""
    dm = GridDataModule(source="synthetic", n_synthetic=4, synthetic_max_side=3, max_seq_len=256, batch_size=2, max_val_examples=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    module = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, input_attention=input_attention,
                                     encoding=["rope_1d", "edges_2d"]).train()
    from gridlm.modules.base_model import positions_of

    explained = torch._dynamo.explain(module.model.forward)(batch["tokens"], positions_of(batch))
    assert explained.graph_break_count == 0, explained.break_reasons
