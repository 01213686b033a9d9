"""AutoregressiveGridModel validation: what ``val/loss`` averages and which examples are decoded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gridlm.datamodules.batching import collate
from gridlm.datamodules.datamodule import GridDataModule
from gridlm.datamodules.serialize import serialize_example
from gridlm.datamodules.tasks import Pair
from gridlm.datamodules.tokens import ROLE_TEST_OUTPUT
from gridlm.modules.base_model import AutoregressiveGridModel, positions_of
from stub_models import Teacher, TeacherTransformer, colourful


@pytest.fixture(scope="module")
def val_batches():
    dm = GridDataModule(source="synthetic", n_synthetic=12, synthetic_max_side=4, max_seq_len=256, batch_size=4, max_val_examples=12)
    dm.setup("fit")
    return list(dm.val_dataloader())


def test_val_loss_averages_the_query_output_tokens_only(val_batches):
    """Demonstration outputs in the context are supervised in training and are often training pairs;
    val/loss is the mean loss of the held-out query-output targets, computed here by hand."""
    model = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, n_generate=0).eval()
    expected = []
    with torch.no_grad():
        for i, batch in enumerate(val_batches):
            model.validation_step(batch, i)
            logits = model.model(batch["tokens"], positions_of(batch))[:, :-1]
            keep = batch["target_mask"][:, 1:] & (batch["role"][:, 1:] == ROLE_TEST_OUTPUT)
            demo = batch["target_mask"][:, 1:] & ~keep
            assert keep.any() and demo.any()  # both kinds are supervised: the filter matters
            expected.append(F.cross_entropy(logits[keep].float(), batch["tokens"][:, 1:][keep], reduction="none"))
    got = float(model.stage_metrics["val"]["loss"].compute())
    assert got == pytest.approx(float(torch.cat(expected).mean()), rel=1e-5)


def test_n_generate_decodes_the_first_examples_in_loader_order_each_validation(val_batches, monkeypatch):
    """Validation batches are sorted by length: the decoded examples are the first n_generate the
    loader yields (choosing dataset indices < n_generate decoded fewer under limit_val_batches)."""
    model = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, n_generate=6).eval()
    decoded = []
    original = model.decode_batch
    monkeypatch.setattr(model, "decode_batch", lambda batch, rows: decoded.extend(batch["meta"][r]["index"] for r in rows) or original(batch, rows))
    for _ in range(2):  # two validations, each decodes 6
        model.on_validation_epoch_start()
        with torch.no_grad():
            for i, batch in enumerate(val_batches[:2]):  # as limit_val_batches=2 would
                model.validation_step(batch, i)
    first = [m["index"] for b in val_batches[:2] for m in b["meta"]][:6]
    assert decoded == first + first
    assert sorted(first) != list(range(6)), "precondition: loader order is not dataset order"


def test_n_generate_is_a_total_shared_by_the_devices(val_batches, monkeypatch):
    """Under DDP each of W devices decodes its first n_generate / W examples: 7 over 3 -> 3 + 2 + 2."""
    from types import SimpleNamespace

    counts = []
    for rank in range(3):
        model = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, n_generate=7).eval()
        decoded = []
        original = model.decode_batch
        monkeypatch.setattr(model, "decode_batch", lambda batch, rows, d=decoded, o=original: d.extend(rows) or o(batch, rows))
        model._trainer = SimpleNamespace(world_size=3, global_rank=rank)  # only the epoch-start hook reads it
        model.on_validation_epoch_start()
        model._trainer = None
        with torch.no_grad():
            for i, batch in enumerate(val_batches):
                model.validation_step(batch, i)
        counts.append(len(decoded))
    assert counts == [3, 2, 2]


def test_by_default_every_validation_example_is_decoded_and_counted(val_batches):
    """n_generate None (the default): val/exact_match is over the whole validation set, and
    val/n_exact / val/n_decoded are its counts, checked against per-example hits recomputed here."""
    model = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2).eval()
    assert model.n_generate is None
    model.on_validation_epoch_start()
    with torch.no_grad():
        for i, batch in enumerate(val_batches):
            model.validation_step(batch, i)
    m = model.stage_metrics["val"]
    n = sum(len(b["meta"]) for b in val_batches)
    hits = [r["exact_match"] for r in model.eval_examples]
    assert int(m["n_decoded"].compute()) == n == len(hits) and None not in hits
    assert int(m["n_exact"].compute()) == int(sum(hits))
    assert float(m["exact_match"].compute()) == pytest.approx(sum(hits) / n)


def test_n_generate_must_be_a_count_or_null():
    with pytest.raises(ValueError, match="model.n_generate must be >= 0 or null"):
        AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, n_generate=-1)


def test_decode_batch_gives_every_row_its_own_decode():
    """Rows with different prompts (two prompt lengths, padded, one prompt-only) decoded by a
    teacher that answers each query input with its own grid: every row gets its own answer, in
    the order of ``rows``."""
    rng = np.random.default_rng(3)
    demos = [Pair(rng.integers(0, 10, (3, 4)), rng.integers(0, 10, (2, 3))) for _ in range(2)]
    queries = [np.full((3, 3), q) for q in range(5)]
    answers = [colourful(2 + q % 3, 3 + q % 2, shift=q) for q in range(5)]
    lookup = {q.tobytes(): a for q, a in zip(queries, answers)}
    seqs = [
        serialize_example(demos[: 1 + q % 2], Pair(query, None if q == 4 else answer), prompt_only=q == 4)
        for q, (query, answer) in enumerate(zip(queries, answers))
    ]
    batch = collate(seqs)
    assert len({len(s) for s in seqs}) > 2, "precondition: rows of different lengths, padded"
    model = AutoregressiveGridModel(max_seq_len=512, d_model=16, n_layers=1, n_heads=2).eval()
    model.model = TeacherTransformer(Teacher(lambda q: lookup.get(q.tobytes()), "row_major"), max_seq_len=512)
    for rows in (None, [4, 1, 3], [2]):
        decoded = model.decode_batch(batch, rows)
        want = range(5) if rows is None else rows
        assert len(decoded) == len(want)
        for r, d in zip(want, decoded):
            np.testing.assert_array_equal(d.grid, answers[r], err_msg=f"row {r} of rows={rows}")
