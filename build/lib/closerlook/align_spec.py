"""The permutation spec of :mod:`closerlook.align`: which axis of which state-dict entry each permutation acts on.

Kept apart from the alignment algorithms so that :mod:`closerlook.align_fx` (which builds specs) and
:mod:`closerlook.align` (which uses them) both import it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from .io import CloserlookError


class Mixed:
    """An axis that carries several permutations, or one in a non-contiguous order (a concatenation, a channel
    shuffle, a depthwise conv's multiplier, a channel-last flatten): position i holds sub-position ``sub[i]`` of
    unit ``idx[i]`` of permutation ``names[i]`` (None: a position no permutation moves)."""

    def __init__(self, names: Sequence[str | None], idx: Sequence[int], sub: Sequence[int]) -> None:
        self.names, self.idx, self.sub = tuple(names), tuple(int(i) for i in idx), tuple(int(s) for s in sub)
        self._rows: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mixed) and (self.names, self.idx, self.sub) == (other.names, other.idx, other.sub)

    def __hash__(self) -> int:
        return hash((self.names, self.idx, self.sub))

    def __repr__(self) -> str:
        return f"Mixed({len(self)} positions: {', '.join(self.perms())})"

    def perms(self) -> list[str]:
        return list(dict.fromkeys(n for n in self.names if n is not None))

    def rows(self, name: str) -> torch.Tensor:
        """(units, block) positions of ``name``: row u = unit u's positions in sub-position order."""
        if name not in self._rows:
            pos = sorted((self.idx[i], self.sub[i], i) for i, n in enumerate(self.names) if n == name)
            units = len({u for u, _, _ in pos})
            self._rows[name] = torch.tensor([i for _, _, i in pos], dtype=torch.long).reshape(units, -1)
        return self._rows[name]

    def index(self, perms: Mapping[str, torch.Tensor], skip: str | None = None) -> torch.Tensor:
        idx = torch.arange(len(self))
        for name in self.perms():
            if name != skip:
                r = self.rows(name)
                idx[r.reshape(-1)] = r[perms[name].cpu()].reshape(-1)
        return idx


Axis = tuple[str, int] | Mixed | None  # (permutation name, units per block on this axis), a Mixed axis, or not permuted


def _names(ax: Axis) -> list[str]:
    return [] if ax is None else ax.perms() if isinstance(ax, Mixed) else [ax[0]]


class AlignError(CloserlookError, ValueError):
    """A network the alignment cannot follow; the message names the module."""


@dataclass
class PermSpec:
    """``sizes``: permutation name -> number of units; ``axes``: state-dict key -> one entry per tensor axis."""

    sizes: dict[str, int] = field(default_factory=dict)
    axes: dict[str, tuple[Axis, ...]] = field(default_factory=dict)

    def users(self) -> dict[str, list[tuple[str, int, int]]]:
        """Permutation name -> [(key, axis, block)] of the entries it acts on."""
        out: dict[str, list[tuple[str, int, int]]] = {p: [] for p in self.sizes}
        for key, axes in self.axes.items():
            for i, ax in enumerate(axes):
                if isinstance(ax, Mixed):
                    out.update({p: out[p] + [(key, i, ax.rows(p).shape[1])] for p in ax.perms()})
                elif ax is not None:
                    out[ax[0]].append((key, i, ax[1]))
        return out

    def check(self, state: Mapping[str, torch.Tensor]) -> None:
        """Every spec key exists with matching sizes; AlignError naming the key otherwise."""
        for key, axes in self.axes.items():
            if key not in state:
                raise AlignError(f"permutation spec: key {key!r} is not in the state dict")
            shape = tuple(state[key].shape)
            if len(axes) != len(shape):
                raise AlignError(f"permutation spec: key {key!r} has {len(shape)} axes, the spec {len(axes)}")
            for i, ax in enumerate(axes):
                if isinstance(ax, Mixed):
                    bad = [p for p in ax.perms() if ax.rows(p).shape[0] != self.sizes[p]]
                    if len(ax) != shape[i] or bad:
                        raise AlignError(f"permutation spec: key {key!r} axis {i} has size {shape[i]}, its mixed "
                                         f"axis {len(ax)} positions" + (f", permutation {bad[0]!r} the wrong number "
                                                                        "of units" if bad else ""))
                elif ax is not None and self.sizes[ax[0]] * ax[1] != shape[i]:
                    raise AlignError(f"permutation spec: key {key!r} axis {i} has size {shape[i]}, "
                                     f"permutation {ax[0]!r} x block {ax[1]} needs {self.sizes[ax[0]] * ax[1]}")
