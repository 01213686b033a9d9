"""Task-preserving augmentation: one of the 8 dihedral transforms and a colour permutation.

Applying the *same* :class:`Augmentation` to every grid of a task maps a task to a task (the
dihedral group and colour permutations act on inputs and outputs alike), the standard ARC data
augmentation (e.g. "The LLM ARChitect: Solving ARC-AGI Is A Matter of Perspective", Franzen
et al., 2024; TRM/HRM). Predictions on augmented tasks are mapped back with :meth:`invert`.

Dihedral index ``d`` in 0..7: rotate ``k = d % 4`` quarter-turns counter-clockwise
(``np.rot90(grid, k)``), then transpose if ``d >= 4``. For a grid ``g`` of shape (H, W)::

    d  transform         out[i, j] =           shape
    0  identity          g[i, j]               (H, W)
    1  rot90  (ccw)      g[j, W-1-i]           (W, H)
    2  rot180            g[H-1-i, W-1-j]       (H, W)
    3  rot270 (cw 90)    g[H-1-j, i]           (W, H)
    4  transpose         g[j, i]               (W, H)
    5  flip left-right   g[i, W-1-j]           (H, W)
    6  anti-transpose    g[H-1-j, W-1-i]       (W, H)
    7  flip up-down      g[H-1-i, j]           (H, W)

Rotations invert to ``(4 - k) % 4``; the four reflections (d >= 4) are their own inverses.
The colour permutation maps colour ``c`` to ``colour_perm[c]``; it commutes with the dihedral
part, so the order of the two does not matter.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from gridlm.datamodules.tasks import Pair
from gridlm.datamodules.tokens import N_COLOURS

DIHEDRAL_NAMES = ("identity", "rot90", "rot180", "rot270", "transpose", "flip_lr", "anti_transpose", "flip_ud")


@dataclass(frozen=True)
class Augmentation:
    """One dihedral transform plus one colour permutation, applied to every grid of an example."""

    dihedral: int = 0  # 0..7: k = dihedral % 4 ccw quarter-turns, then a transpose if dihedral >= 4
    colour_perm: tuple[int, ...] = tuple(range(N_COLOURS))  # colour c becomes colour_perm[c]

    def __post_init__(self) -> None:
        try:
            d = operator.index(self.dihedral)
        except TypeError:
            raise TypeError(f"Augmentation.dihedral must be an int in 0..7, got {self.dihedral!r}") from None
        if not 0 <= d <= 7:
            raise ValueError(f"Augmentation.dihedral must be in 0..7, got {d}")
        try:
            perm = tuple(operator.index(c) for c in self.colour_perm)
        except TypeError:
            raise TypeError(f"Augmentation.colour_perm must be a sequence of ints, got {self.colour_perm!r}") from None
        if sorted(perm) != list(range(N_COLOURS)):
            raise ValueError(
                f"Augmentation.colour_perm must be a permutation of 0..{N_COLOURS - 1}, got {perm}"
            )
        object.__setattr__(self, "dihedral", d)  # normalize numpy ints / lists to plain, hashable
        object.__setattr__(self, "colour_perm", perm)

    @property
    def is_identity(self) -> bool:
        return self.dihedral == 0 and self.colour_perm == tuple(range(N_COLOURS))

    @property
    def name(self) -> str:
        """A short readable name, e.g. ``"flip_lr+colours(0,2,1,...)"``."""
        base = DIHEDRAL_NAMES[self.dihedral]
        if self.colour_perm == tuple(range(N_COLOURS)):
            return base
        return f"{base}+colours({','.join(map(str, self.colour_perm))})"

    def _colours(self, grid: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
        if grid.size and (grid.min() < 0 or grid.max() >= N_COLOURS):
            raise ValueError(f"grid values must be colours 0..{N_COLOURS - 1}, got min {grid.min()}, max {grid.max()}")
        if perm == tuple(range(N_COLOURS)):
            return grid
        return np.asarray(perm, dtype=grid.dtype)[grid]  # lookup table, same dtype

    def apply(self, grid: np.ndarray) -> np.ndarray:
        """The augmented grid, a new C-contiguous array of the same dtype; shape (W, H) for the
        transposing transforms (d = 1, 3, 4, 6)."""
        grid = np.asarray(grid)
        if grid.ndim != 2:
            raise ValueError(f"Augmentation.apply needs a 2D grid, got shape {grid.shape}")
        out = np.rot90(grid, self.dihedral % 4)
        if self.dihedral >= 4:
            out = out.T
        return np.array(self._colours(out, self.colour_perm), order="C")  # copies the view

    def invert(self, grid: np.ndarray) -> np.ndarray:
        """Undo :meth:`apply`: ``invert(apply(g)) == g`` for every grid ``g``."""
        return self.inverse().apply(grid)

    def inverse(self) -> Augmentation:
        """The augmentation that undoes this one."""
        k = self.dihedral % 4
        dihedral = self.dihedral if self.dihedral >= 4 else (4 - k) % 4
        inverse_perm = np.argsort(self.colour_perm)  # inverse_perm[colour_perm[c]] == c
        return Augmentation(dihedral, tuple(int(c) for c in inverse_perm))

    def apply_pair(self, pair: Pair) -> Pair:
        """Both grids of ``pair`` augmented; a missing output stays ``None``."""
        output = None if pair.output is None else self.apply(pair.output)
        return Pair(self.apply(pair.input), output)


IDENTITY = Augmentation()


def random_augmentation(
    rng: np.random.Generator, dihedral: bool = True, colours: bool = True, keep_zero: bool = True
) -> Augmentation:
    """A uniformly random augmentation, deterministic given ``rng``'s state.

    Args:
        rng: the source of randomness (e.g. ``np.random.default_rng([seed, epoch, index])``).
        dihedral: draw one of the 8 dihedral transforms (else identity).
        colours: draw a random colour permutation (else identity).
        keep_zero: keep colour 0 (the usual ARC background) fixed and permute 1..9 only.
    """
    d = int(rng.integers(8)) if dihedral else 0
    if not colours:
        perm = tuple(range(N_COLOURS))
    elif keep_zero:
        perm = (0, *(int(c) + 1 for c in rng.permutation(N_COLOURS - 1)))
    else:
        perm = tuple(int(c) for c in rng.permutation(N_COLOURS))
    return Augmentation(d, perm)


def all_dihedral() -> list[Augmentation]:
    """The 8 dihedral transforms with identity colours, in index order 0..7."""
    return [Augmentation(d) for d in range(8)]
