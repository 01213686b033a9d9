"""Augmentation: the 8 dihedral transforms as documented, exact inversion, task consistency."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridlm.datamodules.augment import (
    DIHEDRAL_NAMES,
    IDENTITY,
    Augmentation,
    all_dihedral,
    random_augmentation,
)
from gridlm.datamodules.tasks import Pair

ASYMMETRIC = np.array([[1, 2, 3], [4, 5, 6]])  # 2 x 3, all colours distinct


def _by_formula(g: np.ndarray, d: int) -> np.ndarray:
    """The module docstring's table, ``out[i, j] = g[...]``, written with explicit indices."""
    H, W = g.shape
    shape = (W, H) if d in (1, 3, 4, 6) else (H, W)
    source = {
        0: lambda i, j: g[i, j],
        1: lambda i, j: g[j, W - 1 - i],
        2: lambda i, j: g[H - 1 - i, W - 1 - j],
        3: lambda i, j: g[H - 1 - j, i],
        4: lambda i, j: g[j, i],
        5: lambda i, j: g[i, W - 1 - j],
        6: lambda i, j: g[H - 1 - j, W - 1 - i],
        7: lambda i, j: g[H - 1 - i, j],
    }[d]
    return np.array([[source(i, j) for j in range(shape[1])] for i in range(shape[0])])


@st.composite
def augmentations(draw) -> Augmentation:
    return Augmentation(draw(st.integers(0, 7)), tuple(draw(st.permutations(range(10)))))


@st.composite
def grids(draw) -> np.ndarray:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.integers(0, 10, size=(draw(st.integers(1, 30)), draw(st.integers(1, 30))))


@pytest.mark.parametrize("d", range(8), ids=DIHEDRAL_NAMES)
def test_dihedral_matches_the_documented_table(d):
    np.testing.assert_array_equal(Augmentation(d).apply(ASYMMETRIC), _by_formula(ASYMMETRIC, d))


def test_named_transforms():
    g = ASYMMETRIC
    expected = [g, np.rot90(g), np.rot90(g, 2), np.rot90(g, -1), g.T, np.fliplr(g), np.rot90(g, 2).T, np.flipud(g)]
    for aug, want in zip(all_dihedral(), expected):
        np.testing.assert_array_equal(aug.apply(g), want, err_msg=aug.name)


def test_all_eight_dihedral_transforms_are_distinct_and_transpose_shapes():
    images = [a.apply(ASYMMETRIC) for a in all_dihedral()]
    assert len({(im.shape, im.tobytes()) for im in images}) == 8
    assert [im.shape for im in images] == [(2, 3), (3, 2), (2, 3), (3, 2), (3, 2), (2, 3), (3, 2), (2, 3)]
    assert [a.dihedral for a in all_dihedral()] == list(range(8))


@settings(max_examples=100, deadline=None)
@given(aug=augmentations(), grid=grids())
def test_invert_undoes_apply_and_inverse_agrees(aug, grid):
    out = aug.apply(grid)
    np.testing.assert_array_equal(aug.invert(out), grid)
    np.testing.assert_array_equal(aug.inverse().apply(out), aug.invert(out))
    np.testing.assert_array_equal(aug.inverse().invert(grid), aug.apply(grid))
    assert aug.inverse().inverse() == aug
    assert out.dtype == grid.dtype and out.flags.c_contiguous
    assert out.shape == (grid.shape if aug.dihedral in (0, 2, 5, 7) else grid.shape[::-1])
    # the colour part maps colour counts exactly
    counts = np.bincount(grid.ravel(), minlength=10)
    np.testing.assert_array_equal(np.bincount(out.ravel(), minlength=10)[list(aug.colour_perm)], counts)


def test_apply_never_aliases_its_input():
    g = ASYMMETRIC.copy()
    out = IDENTITY.apply(g)
    out[0, 0] = 9
    assert g[0, 0] == 1


def test_random_augmentation_is_deterministic_and_keep_zero_fixes_zero():
    draws = [random_augmentation(np.random.default_rng([3, 1, i])) for i in range(200)]
    again = [random_augmentation(np.random.default_rng([3, 1, i])) for i in range(200)]
    assert draws == again
    assert all(a.colour_perm[0] == 0 for a in draws)
    assert {a.dihedral for a in draws} == set(range(8))
    assert len({a.colour_perm for a in draws}) > 150
    free = [random_augmentation(np.random.default_rng(i), keep_zero=False) for i in range(100)]
    assert any(a.colour_perm[0] != 0 for a in free)
    assert all(random_augmentation(np.random.default_rng(i), dihedral=False).dihedral == 0 for i in range(20))
    plain = random_augmentation(np.random.default_rng(0), dihedral=False, colours=False)
    assert plain == IDENTITY and plain.is_identity
    assert not Augmentation(1).is_identity and not Augmentation(0, (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)).is_identity


def test_apply_pair_keeps_a_missing_output():
    aug = Augmentation(5, (0, 2, 1, 3, 4, 5, 6, 7, 8, 9))
    p = aug.apply_pair(Pair(ASYMMETRIC, None))
    assert p.output is None
    np.testing.assert_array_equal(p.input, [[3, 1, 2], [6, 5, 4]])


def _dihedral_relating(a: np.ndarray, b: np.ndarray) -> set[int]:
    return {t.dihedral for t in all_dihedral() if t.apply(a).shape == b.shape and (t.apply(a) == b).all()}


@settings(max_examples=40, deadline=None)
@given(aug=augmentations(), seed=st.integers(0, 2**32 - 1), rule=st.integers(0, 7))
def test_one_augmentation_maps_a_task_to_a_task(aug, seed, rule):
    """A task "output = D_rule(input)" stays a task of one fixed dihedral rule for every pair
    after augmentation: the conjugate D_aug . D_rule . D_aug^-1 (a rotation by k stays a rotation
    by k under rotations and becomes one by -k under reflections). A colour-map task
    "output = f(input)" stays a colour-map task, with map p . f . p^-1."""
    rng = np.random.default_rng(seed)
    inputs = [rng.integers(0, 10, size=(rng.integers(3, 8), rng.integers(3, 8))) for _ in range(4)]
    inputs = [g for g in inputs if len(_dihedral_relating(g, g)) == 1]  # drop symmetric grids
    spatial = Augmentation(aug.dihedral)
    conjugate = _dihedral_relating(ASYMMETRIC, spatial.apply(Augmentation(rule).apply(spatial.invert(ASYMMETRIC))))
    assert len(conjugate) == 1
    if 1 <= rule <= 3:  # rotations
        assert conjugate == {rule if aug.dihedral < 4 else 4 - rule}
    for g in inputs:
        p = aug.apply_pair(Pair(g, Augmentation(rule).apply(g)))
        assert _dihedral_relating(p.input, p.output) == conjugate
    f = rng.permutation(10)
    perm = np.asarray(aug.colour_perm)
    conj_map = perm[f[np.argsort(perm)]]  # p . f . p^-1
    for g in inputs:
        p = aug.apply_pair(Pair(g, f[g]))
        np.testing.assert_array_equal(p.output, conj_map[p.input])


def test_validation_errors():
    with pytest.raises(ValueError, match="dihedral must be in 0..7, got 8"):
        Augmentation(8)
    with pytest.raises(TypeError, match="dihedral must be an int"):
        Augmentation(1.5)
    with pytest.raises(ValueError, match="permutation of 0..9"):
        Augmentation(0, (0, 0, 1, 2, 3, 4, 5, 6, 7, 8))
    with pytest.raises(ValueError, match="permutation of 0..9"):
        Augmentation(0, tuple(range(9)))
    with pytest.raises(ValueError, match="colours 0..9"):
        Augmentation(0, tuple(range(9, -1, -1))).apply(np.array([[10]]))
    with pytest.raises(ValueError, match="2D grid"):
        IDENTITY.apply(np.zeros(3, dtype=np.int64))
    a = Augmentation(np.int64(3), list(range(10)))  # normalized to plain, hashable values
    assert a == Augmentation(3) and hash(a) == hash(Augmentation(3)) and type(a.dihedral) is int
