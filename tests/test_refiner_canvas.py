"""The refiner's output canvas, recursion with deep supervision, halting, and the recursion gain."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from gridlm.datamodules.canvas import (
    OUTSIDE, OUTSIDE_TOKEN, canvas_batch, canvas_sides, canvas_targets, read_canvas, reread_canvas, split_cells, to_canvas, with_canvas,
)
from gridlm.datamodules.datamodule import GridDataModule
from gridlm.datamodules.drafts import draft_batch
from gridlm.datamodules.tokens import N_COLOURS
from gridlm.modules.refiner import RefinementNetwork

TINY = dict(d_model=16, n_layers=1, n_heads=2, max_seq_len=256)


def _batch(**kw) -> dict:
    args = dict(source="synthetic:colour_map", n_synthetic=6, synthetic_max_side=4, max_seq_len=256, batch_size=4, max_val_examples=6)
    dm = GridDataModule(**{**args, **kw})
    dm.setup("fit")
    return next(iter(dm.val_dataloader()))


def _perfect(model: RefinementNetwork, targets, halt: float = -20.0):
    """A ``forward_pass`` whose logits put every canvas cell on its target class (and the given
    halting logit): stands in for a refiner that has learned the task."""

    def forward_pass(inp, z):
        sides = [int(round(int(n) ** 0.5)) for n in inp["cells"].sum(1)]
        cls = []
        for b, (t, s) in enumerate(zip(targets, sides)):
            c = torch.as_tensor(to_canvas(t, s))
            m = inp["cells"][b]
            cls.append(c[inp["row"][b, m], inp["col"][b, m]])
        logits = torch.nn.functional.one_hot(torch.cat(cls), N_COLOURS + 1).float() * 10.0  # (N, 11)
        B, T = inp["tokens"].shape
        return logits, torch.full((B,), halt), torch.zeros(B, T, model.cfg.d_model)

    return forward_pass


# ---------------------------------------------------------------- the canvas
def test_a_grid_goes_onto_the_canvas_and_back_for_every_shape():
    rng = np.random.default_rng(0)
    for _ in range(100):
        g = rng.integers(0, 10, size=(int(rng.integers(1, 8)), int(rng.integers(1, 8))))
        side = int(rng.integers(max(g.shape), 9))
        c = to_canvas(g, side)
        assert c.shape == (side, side) and (c[g.shape[0] :, :] == OUTSIDE).all() and (c[:, g.shape[1] :] == OUTSIDE).all()
        np.testing.assert_array_equal(read_canvas(c, np.zeros_like(c)), g)
    assert read_canvas(to_canvas(None, 4), np.zeros((4, 4), dtype=int)) is None  # the empty canvas holds no grid


def test_reading_a_canvas_fills_holes_with_the_best_colour():
    classes = np.full((4, 4), OUTSIDE)
    classes[:2, :3] = 5
    classes[0, 1] = OUTSIDE  # a hole inside the grid
    classes[2, 0] = 7  # one inside cell on row 2 makes the grid 3 rows high
    colours = np.full((4, 4), 1)
    np.testing.assert_array_equal(read_canvas(classes, colours), [[5, 1, 5], [5, 5, 5], [7, 1, 1]])


def test_the_canvas_block_is_the_serialized_square_with_outside_tokens():
    batch = _batch()
    drafts = [np.full((1 + b % 3, 2), b) for b in range(len(batch["meta"]))]
    sides = canvas_sides(batch, drafts)
    for s, m, d in zip(sides, batch["meta"], drafts):  # the task's largest side: prompt grids and the draft
        prompt = [np.shape(m["query_input"])]
        assert s >= max(max(prompt[0]), *d.shape) and s <= 30
    inp = canvas_batch(batch, [to_canvas(d, s) for d, s in zip(drafts, sides)], "row_major")
    ref = draft_batch(batch, [np.zeros((s, s), dtype=int) for s in sides], "row_major")
    for f in ("row", "col", "grid", "role", "cells", "lengths"):
        assert torch.equal(inp[f], ref[f]), f
    for b, (d, s) in enumerate(zip(drafts, sides)):
        cells = inp["cells"][b]
        toks, rows, cols = inp["tokens"][b, cells], inp["row"][b, cells], inp["col"][b, cells]
        inside = (rows < d.shape[0]) & (cols < d.shape[1])
        assert int(cells.sum()) == s * s
        assert (toks[inside] == b).all() and (toks[~inside] == OUTSIDE_TOKEN).all()
    assert canvas_sides(batch, drafts, fixed=9) == [9] * len(drafts)
    assert max(canvas_sides(batch, [np.zeros((30, 30), dtype=int)] * len(drafts), max_side=12)) == 12


def test_the_canvas_changes_a_drafts_shape():
    """A refiner whose canvas logits are the target's turns drafts of the wrong shape (too small,
    too large, none at all) into the target: the shape comes out of the prediction."""
    batch = _batch(synthetic_max_side=5)
    targets = [np.asarray(m["target"]) for m in batch["meta"]]
    model = RefinementNetwork(**TINY, draft_ratio=0.0, n_passes=2).eval()
    model.forward_pass = _perfect(model, targets)
    wide = np.zeros((targets[-1].shape[0], targets[-1].shape[1] + 1), dtype=int)  # one column too many
    drafts = [np.zeros((1, 1), dtype=int), np.zeros((5, 5), dtype=int), None, wide][-len(targets) :]
    out = model.refine(batch, drafts)
    for g, t, d in zip(out, targets, drafts):
        np.testing.assert_array_equal(g, t)
    assert any(d is None or d.shape != t.shape for d, t in zip(drafts, targets))


def test_an_untrained_refiner_starts_by_copying_the_draft_on_the_canvas():
    """The canvas head is tied to the colour and outside embeddings: at initialisation the refined
    grid is mostly the draft, shape included (the prior of the same-shape refiner, kept)."""
    batch = _batch()
    model = RefinementNetwork(**TINY, draft_ratio=0.0, n_passes=1).eval()
    drafts = model.eval_drafts(batch, "val")
    out = model.refine(batch, drafts)
    same = [g is not None and g.shape == d.shape for g, d in zip(out, drafts)]
    assert sum(same) >= len(same) - 1, (same, [d.shape for d in drafts], [None if g is None else g.shape for g in out])


def test_rereading_the_canvas_in_tensors_equals_read_canvas_then_to_canvas():
    """The fast path of a pass (``reread_canvas`` + ``with_canvas``) against its reference: read
    each row's grid with ``read_canvas``, put it back with ``to_canvas``, rebuild the input."""
    batch = _batch()
    drafts = [np.asarray(m["target"]) for m in batch["meta"]]
    sides = canvas_sides(batch, drafts)
    inp = canvas_batch(batch, [to_canvas(d, s) for d, s in zip(drafts, sides)], "row_major")
    gen = torch.Generator().manual_seed(0)
    N = int(inp["cells"].sum())
    for outside_bias in (-2.0, 0.0, 1.0, 3.0, 9.0):  # from no outside cell to all outside (the empty grid)
        logits = torch.randn(N, N_COLOURS + 1, generator=gen)
        logits[:, OUTSIDE] += outside_bias
        fast = reread_canvas(logits, inp)
        grids = [read_canvas(c.numpy(), k.numpy()) for c, k in zip(split_cells(logits.argmax(-1), inp), split_cells(logits[:, :N_COLOURS].argmax(-1), inp))]
        slow = [to_canvas(g, s) for g, s in zip(grids, sides)]
        torch.testing.assert_close(fast, canvas_targets(inp, slow))
        rebuilt = canvas_batch(batch, slow, "row_major")
        assert torch.equal(with_canvas(inp, fast)["tokens"], rebuilt["tokens"])
        keep = torch.tensor([True, False] * (len(drafts) // 2) + [True] * (len(drafts) % 2))
        partial = with_canvas(inp, fast, keep)["tokens"]
        for b, k in enumerate(keep.tolist()):
            assert torch.equal(partial[b], (rebuilt if k else inp)["tokens"][b])


def _pass_losses_reference(model: RefinementNetwork, batch, drafts, targets):
    """The deep-supervision loop written plainly: every pass rebuilds its canvas input from the
    grids read with ``read_canvas`` (the fast path rewrites the cells in tensors)."""
    import torch.nn.functional as F

    from gridlm.modules.refiner import same_grid

    sides = model.sides(batch, drafts)
    fits = torch.tensor([max(t.shape) <= s for t, s in zip(targets, sides)])
    grids, z, losses, exact = list(drafts), None, [], []
    for _ in range(model.train_passes):
        inp = canvas_batch(batch, [to_canvas(g, s) for g, s in zip(grids, sides)], model.order, model.row_end)
        logits, q, h = model.forward_pass(inp, z)
        weight = fits[inp["cells"].nonzero()[:, 0]].float()
        ce = F.cross_entropy(logits, canvas_targets(inp, [to_canvas(t, s) for t, s in zip(targets, sides)]), reduction="none")
        grids = model.read_grids(logits.detach(), inp)
        right = [same_grid(g, t) for g, t in zip(grids, targets)]
        halt = F.binary_cross_entropy_with_logits(q, torch.tensor(right, dtype=torch.float))
        losses.append((ce * weight).sum() / weight.sum().clamp(min=1) + model.halt_loss_weight * halt)
        exact.append(right)
        z = h.detach()
    return losses, exact


def test_the_fast_pass_loop_equals_its_plain_reference():
    batch = _batch()
    targets = [np.asarray(m["target"]) for m in batch["meta"]]
    model = RefinementNetwork(**TINY, draft_ratio=0.0, empty_ratio=0.3, train_passes=3)
    with torch.no_grad():
        model.latent_in.weight.normal_(0, 0.1)
    drafts = model.eval_drafts(batch, "val")
    drafts[0] = None  # an empty canvas among them
    fast, fast_exact = model.pass_losses(batch, drafts, targets)
    slow, slow_exact = _pass_losses_reference(model, batch, drafts, targets)
    assert fast_exact == slow_exact
    torch.testing.assert_close(torch.stack(fast), torch.stack(slow))
    model.forward_pass = _perfect(model, targets)  # every pass exactly right: the halting targets agree
    assert model.pass_losses(batch, drafts, targets)[1] == _pass_losses_reference(model, batch, drafts, targets)[1] == [[True] * len(targets)] * 3


# ---------------------------------------------------------------- deep supervision
def test_every_pass_has_a_loss_and_no_gradient_crosses_a_pass():
    batch = _batch()
    targets = [np.asarray(m["target"]) for m in batch["meta"]]
    model = RefinementNetwork(**TINY, draft_ratio=0.0, train_passes=3)
    with torch.no_grad():
        model.latent_in.weight.normal_(0, 0.1)  # make the latent matter (it is zero-initialised)
    seen = []
    original = model.forward_pass

    def spy(inp, z):
        out = original(inp, z)
        seen.append((z, out[2]))
        return out

    model.forward_pass = spy
    drafts = model.eval_drafts(batch, "val")
    losses, exact = model.pass_losses(batch, drafts, targets)
    assert len(losses) == len(exact) == 3 and len(seen) == 3
    assert seen[0][0] is None
    params = [p for p in model.parameters() if p.requires_grad]
    for k, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"pass {k + 1} has no loss gradient"
        if k > 0:
            z_in, _ = seen[k]
            assert not z_in.requires_grad  # the carried latent is detached
            h_prev = seen[k - 1][1]  # the previous pass's hidden states
            (g,) = torch.autograd.grad(loss, [h_prev], retain_graph=True, allow_unused=True)
            assert g is None, f"pass {k + 1}'s loss reaches pass {k}"
    latent = model.latent_in.weight
    (g2,) = torch.autograd.grad(losses[1], [latent], retain_graph=True)
    assert g2.abs().sum() > 0  # later passes do learn from the carried latent
    (g1,) = torch.autograd.grad(losses[0], [latent], retain_graph=True, allow_unused=True)
    assert g1 is None or g1.abs().sum() == 0  # the first pass has no latent


def test_inner_steps_chain_the_latent_inside_a_pass_with_gradient_through_them():
    """TRM's latent recursion inside a pass: ``inner_steps`` evaluations per pass, each reading
    the previous one's hidden states, the last giving the canvas; the gradient reaches the first
    evaluation of a pass, never the previous pass."""
    batch = _batch()
    targets = [np.asarray(m["target"]) for m in batch["meta"]]
    model = RefinementNetwork(**TINY, draft_ratio=0.0, train_passes=2, inner_steps=3)
    with torch.no_grad():
        model.latent_in.weight.normal_(0, 0.1)
    calls = []
    original = model.forward_pass

    def spy(inp, z):
        out = original(inp, z)
        calls.append((z, out[2], torch.is_grad_enabled()))
        return out

    model.forward_pass = spy
    losses, _ = model.pass_losses(batch, model.eval_drafts(batch, "val"), targets)
    assert len(calls) == 2 * 3
    assert calls[0][0] is None and all(calls[i][0] is calls[i - 1][1] for i in (1, 2, 4, 5))  # each reads the previous latent
    assert torch.equal(calls[3][0], calls[2][1].detach()) and not calls[3][0].requires_grad  # a pass starts from the last one's, detached
    (g,) = torch.autograd.grad(losses[1], [calls[3][1]], retain_graph=True)
    assert g.abs().sum() > 0  # pass 2's loss reaches its own first evaluation
    for h in (calls[0][1], calls[1][1], calls[2][1]):
        assert torch.autograd.grad(losses[1], [h], retain_graph=True, allow_unused=True)[0] is None  # and nothing of pass 1
    (g,) = torch.autograd.grad(losses[0], [model.latent_in.weight])
    assert g.abs().sum() > 0  # the first pass reads its own inner latent, so it learns the injection too
    model.forward_pass = original
    model.eval()
    calls.clear()
    model.forward_pass = spy
    model.refine_passes(batch, model.eval_drafts(batch, "val"), n_passes=1)
    assert len(calls) == 3
    with pytest.raises(ValueError, match="model.inner_steps must be >= 1, got 0"):
        RefinementNetwork(**TINY, draft_ratio=0.0, inner_steps=0)


def test_pass_noise_recolours_the_handed_on_grid_in_training_only_after_scoring_it():
    batch = _batch()
    targets = [np.asarray(m["target"]) for m in batch["meta"]]
    for noise in (0.0, 0.5):
        torch.manual_seed(0)
        model = RefinementNetwork(**TINY, draft_ratio=0.0, train_passes=2, pass_noise=noise)
        perfect, seen = _perfect(model, targets), []

        def spy(inp, z):
            seen.append(inp["tokens"][inp["cells"]].clone())
            return perfect(inp, z)

        model.forward_pass = spy
        drafts = model.eval_drafts(batch, "val")
        _, exact = model.pass_losses(batch, drafts, targets)
        assert exact == [[True] * len(targets)] * 2  # scored on the prediction itself
        sides = model.sides(batch, drafts)
        inp = canvas_batch(batch, [to_canvas(t, s) for t, s in zip(targets, sides)], "row_major")
        clean = inp["tokens"][inp["cells"]]
        colour = clean < N_COLOURS
        assert torch.equal(seen[1][~colour], clean[~colour])  # outside cells are never touched
        changed = (seen[1][colour] != clean[colour]).float().mean()
        assert (changed == 0) if noise == 0 else (0.3 < changed < 0.7), changed
    with pytest.raises(ValueError, match="model.pass_noise must be in"):
        RefinementNetwork(**TINY, draft_ratio=0.0, pass_noise=1.0)


def test_a_soft_canvas_reads_the_previous_pass_probabilities_and_one_hot_equals_the_grid():
    batch = _batch()
    targets = [np.asarray(m["target"]) for m in batch["meta"]]
    model = RefinementNetwork(**TINY, draft_ratio=0.0, train_passes=2, canvas_input="soft").eval()
    drafts = model.eval_drafts(batch, "val")
    inp = canvas_batch(batch, [to_canvas(d, s) for d, s in zip(drafts, model.sides(batch, drafts))], "row_major")
    classes = inp["tokens"][inp["cells"]].clone()
    classes[classes == OUTSIDE_TOKEN] = OUTSIDE
    onehot = torch.nn.functional.one_hot(classes, N_COLOURS + 1).float()
    plain, soft = model.forward_pass(inp, None), model.forward_pass({**inp, "soft": onehot}, None)
    torch.testing.assert_close(plain[0], soft[0])  # a certain soft canvas is the grid itself
    mixed = model.forward_pass({**inp, "soft": onehot * 0.5 + 0.5 / (N_COLOURS + 1)}, None)
    assert not torch.allclose(plain[0], mixed[0])  # an uncertain one is read differently
    seen = []
    original = model.forward_pass
    model.forward_pass = lambda i, z: (seen.append(i.get("soft")), original(i, z))[1]
    model.pass_losses(batch, drafts, targets)
    assert seen[0] is None and seen[1].shape == (int(inp["cells"].sum()), N_COLOURS + 1) and not seen[1].requires_grad
    torch.testing.assert_close(seen[1].sum(-1), torch.ones(len(seen[1])))
    seen.clear()
    perfect = _perfect(model, targets)  # pass 1 turns every (corrupted) draft into its target: every row goes on
    model.forward_pass = lambda i, z: (seen.append(i.get("soft")), perfect(i, z))[1]
    model.refine_passes(batch, drafts, n_passes=2)
    assert len(seen) == 2 and seen[0] is None and seen[1].shape == (int(inp["cells"].sum()), N_COLOURS + 1)
    with pytest.raises(ValueError, match="model.canvas_input must be one of"):
        RefinementNetwork(**TINY, draft_ratio=0.0, canvas_input="logits")
    from typing import get_args

    from gridlm.modules.refiner.options import CANVAS_INPUTS, CanvasInput

    assert get_args(CanvasInput) == CANVAS_INPUTS


def test_corrupted_targets_carry_corrupt_errors_errors():
    batch = _batch()
    for k in (1, 2):
        model = RefinementNetwork(**TINY, draft_ratio=0.0, corruptions=["crop"], corrupt_errors=k)
        for d, m in zip(model.eval_drafts(batch, "val"), batch["meta"]):
            assert sum(np.shape(m["target"])) - sum(d.shape) == k  # one row or column removed per error


def test_the_training_step_averages_the_pass_losses_and_logs_each(monkeypatch):
    batch = _batch()
    model = RefinementNetwork(**TINY, draft_ratio=0.0, train_passes=2)
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    L.seed_everything(0)
    loss = model.training_step(batch, 0)
    assert {"train/loss_pass_1", "train/loss_pass_2", "train/exact_match_pass_1", "train/exact_match_pass_2"} <= set(logged)
    assert torch.isclose(loss, (logged["train/loss_pass_1"] + logged["train/loss_pass_2"]) / 2, rtol=1e-5)


# ---------------------------------------------------------------- halting
def test_the_halting_head_stops_a_row_and_an_untrained_one_never_does():
    batch = _batch()
    drafts = [np.full((2, 2), 3) for _ in batch["meta"]]
    model = RefinementNetwork(**TINY, draft_ratio=0.0, n_passes=4, halt_threshold=0.5).eval()
    alternate = iter([np.full((2, 2), c) for c in (1, 2, 1, 2)])  # every pass changes every grid
    original = model.forward_pass

    def changing(inp, z):
        logits, q, h = original(inp, z)
        grid = next(alternate)
        targets = [grid] * inp["tokens"].shape[0]
        return _perfect(model, targets, halt=float(q[0]))(inp, z)[0], q, h

    model.forward_pass = changing
    _, halt, used = model.refine_passes(batch, drafts)
    assert used == [4] * len(drafts) and max(halt) < 0.01  # bias -5: an untrained head never halts
    alternate = iter([np.full((2, 2), c) for c in (1, 2, 1, 2)])
    with torch.no_grad():
        model.halt_head.bias.fill_(5.0)
    _, halt, used = model.refine_passes(batch, drafts)
    assert used == [1] * len(drafts) and min(halt) > 0.99  # confident: stop after one pass


def test_the_halting_target_is_whether_the_pass_is_exactly_right():
    batch = _batch()
    targets = [np.asarray(m["target"]) for m in batch["meta"]]
    model = RefinementNetwork(**TINY, draft_ratio=0.0, train_passes=2, halt_loss_weight=1.0)
    drafts = model.eval_drafts(batch, "val")
    for halt, expect_small in ((20.0, True), (-20.0, False)):
        model.forward_pass = _perfect(model, targets, halt=halt)
        losses, exact = model.pass_losses(batch, drafts, targets)
        assert all(all(e) for e in exact)
        assert all((float(x) < 1e-3) == expect_small for x in losses), (halt, losses)
    wrong = [np.where(t == 0, 1, 0) for t in targets]  # right shapes, every cell wrong
    model.forward_pass = _perfect(model, wrong, halt=-20.0)
    losses, exact = model.pass_losses(batch, drafts, targets)
    assert not any(any(e) for e in exact)
    model.halt_loss_weight = 0.0
    ce_only, _ = model.pass_losses(batch, drafts, targets)
    assert all(abs(float(a) - float(b)) < 1e-4 for a, b in zip(losses, ce_only))  # BCE(-20, 0) ~ 0


# ---------------------------------------------------------------- the recursion gain, measured
def _trainer(root, **kw) -> L.Trainer:
    from gridlm.callbacks.schedule_free import ScheduleFreeMode

    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, callbacks=[ScheduleFreeMode()], default_root_dir=root,
                     **kw)  # fmt: skip


@pytest.mark.slow  # one real tiny training; see docs/refiner.md for the measured figures and time
@pytest.mark.skip(
    reason="issue 15 is open: recursion does NOT beat a single pass yet. Measured 2026-11-30 (docs/refiner.md, "
    "'Does recursion beat a single pass?'): this run gives 1/64 after the first pass and after the passes (re-run on this branch: 2/64 and 2/64, 6 s); "
    "from the empty canvas alone 800 steps give 31/64 and 31/64; 20 runs (fresh-task streams, corrupted drafts with 1-5 errors, inner_steps, "
    "commit_threshold, pass_noise, canvas_input soft) gave final minus first pass between -6 and +2 of 64, "
    "within seed noise. Kept as the target (+0.10) the recursive refiner must reach."
)
def test_recursion_beats_a_single_pass_in_a_seeded_tiny_run(tmp_path, capsys):
    """The refiner alone (no base model) trained for 300 steps with 3 supervised passes on
    ``synthetic_fixed:flip_h`` (grids up to 3x3, 64 tasks, no augmentation), half from the empty
    canvas and half from corrupted targets (wrong shapes included), then validated from the empty
    canvas on 64 held-out test pairs: the grid after up to 3 passes is right more often than the
    grid after the first pass, on the same pairs."""
    L.seed_everything(0)
    data = dict(source="synthetic_fixed:flip_h", n_synthetic=64, synthetic_max_side=3, max_seq_len=96, batch_size=8,
                max_val_examples=64, augment=False)  # fmt: skip
    refiner = RefinementNetwork(d_model=32, n_layers=2, n_heads=2, max_seq_len=96, encoding=["rope_1d", "onehot_2d"],
                                draft_ratio=0.0, empty_ratio=0.5, eval_draft="empty", train_passes=3, n_passes=3,
                                halt_threshold=None, canvas_max_side=3)  # fmt: skip
    dm = GridDataModule(**data)
    _trainer(tmp_path, max_steps=300, limit_val_batches=0).fit(refiner, dm)
    (got,) = _trainer(tmp_path).validate(refiner, dm, verbose=False)
    print({k: round(float(v), 4) for k, v in got.items()})
    assert got["val/pairs"] == 64
    assert got["val/exact_match_draft"] == 0.0  # the empty canvas holds no grid
    one, refined = got["val/exact_match_pass_1"], got["val/exact_match_refined"]
    assert refined >= one + 0.1, got
    assert got["val/passes"] > 1.0, got


# ---------------------------------------------------------------- predict and voting
class _QueryDecoder:
    """Stands in for the base model: its draft is the prompt's query input with cell (0, 0)
    changed, in the prompt's (possibly augmented) frame; counts decoded rows."""

    def __init__(self) -> None:
        self.rows = 0
        self.device = torch.device("cpu")

    def decode_batch(self, batch, rows):
        from gridlm.modules.decoding import Decoded
        from gridlm.modules.voting import batch_prompts

        self.rows += len(rows)
        out = []
        for _, query in batch_prompts(batch, list(rows), "row_major"):
            g = np.array(query)
            g[0, 0] = (g[0, 0] + 1) % 10
            out.append(Decoded(g, None, 0.0, 0, []))
        return out


def _query_refiner(model: RefinementNetwork):
    """A ``refine_passes`` whose refined grid is every prompt's query input (in its own frame)."""
    from gridlm.modules.voting import batch_prompts

    def refine_passes(batch, drafts, n_passes=None):
        rows = list(range(len(drafts)))
        grids = [np.asarray(q) for _, q in batch_prompts(batch, rows, "row_major")]
        return [grids], [0.9] * len(rows), [1] * len(rows)

    return refine_passes


@pytest.mark.parametrize("n_votes", [1, 4], ids=["greedy", "4-votes"])
def test_predict_writes_the_refined_grid_then_the_draft_and_votes_over_augmentations(n_votes):
    batch = _batch(augment=False)
    model = RefinementNetwork(**TINY, draft_ratio=0.0, n_votes=n_votes, vote_colours=True).eval()
    fake = _QueryDecoder()
    object.__setattr__(model, "_base", fake)
    model.eval_draft = "base"
    model.refine_passes = _query_refiner(model)
    rows = model.predict_step(batch, 0)
    assert fake.rows == len(batch["meta"]) * n_votes  # every augmented prompt drafted once
    for row, meta in zip(rows, batch["meta"]):
        query = np.asarray(meta["query_input"])
        draft = query.copy()
        draft[0, 0] = (draft[0, 0] + 1) % 10
        # every vote mapped back to the same grid: it wins, and the un-augmented draft is attempt 2
        assert row["attempts"] == [query.tolist(), draft.tolist()], row
        assert row["task_id"] == meta["task_id"] and row["reason"] is None


def test_predict_ranks_voted_grids_and_the_refiner_alone_needs_no_base():
    batch = _batch(augment=False)
    model = RefinementNetwork(**TINY, draft_ratio=0.0, empty_ratio=1.0, eval_draft="empty", n_votes=3, vote_colours=False).eval()
    calls = []
    original = model.refine_passes

    def spy(b, drafts, n_passes=None):
        calls.append(list(drafts))
        return original(b, drafts, n_passes)

    model.refine_passes = spy
    rows = model.predict_step(batch, 0)
    assert calls and all(d is None for c in calls for d in c)  # every vote starts from the empty canvas
    assert sum(len(c) for c in calls) == 3 * len(batch["meta"])
    for row in rows:
        assert 0 <= len(row["attempts"]) <= 2 and (row["attempts"] != [None] or row["reason"])
    with pytest.raises(ValueError, match="predict needs drafts without targets"):
        RefinementNetwork(**TINY, draft_ratio=0.0).predict_step(batch, 0)


def test_validation_reports_draft_every_pass_and_refined_with_wrong_shapes(monkeypatch):
    batch = _batch()
    targets = [np.asarray(m["target"]) for m in batch["meta"]]
    model = RefinementNetwork(**TINY, draft_ratio=0.0, corruptions=["crop"], n_passes=2).eval()
    model.forward_pass = _perfect(model, targets)
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    model._eval_step(batch, "val")
    n = len(targets)
    got = {k: float(v.compute()) for k, v in logged.items()}
    assert got["val/exact_match_draft"] == 0.0 and got["val/wrong_shape_drafts"] == n  # every draft cropped
    assert got["val/exact_match_pass_1"] == got["val/exact_match_refined"] == 1.0
    assert got["val/shapes_fixed"] == n and got["val/wrong_shape_refined"] == 0 and got["val/pairs"] == n
    assert got["val/passes"] == 2.0  # pass 2 changed nothing: stop
    line = model.summary("val")
    assert line == f"val exact match (corrupt drafts): draft 0/{n} | pass 1 {n}/{n} | pass 2 {n}/{n} | refined {n}/{n}; wrong shapes: drafts {n}, refined 0, fixed {n}"
