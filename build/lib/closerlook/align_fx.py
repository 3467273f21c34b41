"""Permutation specs derived from a ``torch.fx`` trace (:func:`closerlook.align.fx_spec`); see docs/alignment.md.

Every hidden unit a layer creates is an *atom* (one per output channel of a Conv/Linear). The walk follows,
for each traced tensor, the atom and the sub-position that sits at each position of its channel axis (dim 1):

* elementwise modules and functions (activations, dropout, identity, pooling, ``stochastic_depth``, norm
  layers) keep the channel axis as it is;
* ``add`` / ``mul`` / ... of two streams ties their atoms position by position (residual streams,
  squeeze-excitation gates ``scale * x``); an operand with one channel broadcasts;
* ``cat`` on the channel axis concatenates the inputs' positions (a block-diagonal permutation), ``chunk`` /
  ``split`` slice them;
* a depthwise conv keeps its input's atoms (output channel c*k+j is sub-position j of input channel c); a
  grouped conv ties its input groups position by position (one permutation inside every group, the same in
  each) and lets each group's outputs permute among themselves;
* a reshape (``view``, ``reshape``, ``flatten``, ``transpose``, ``permute``, ``channel_shuffle``, ...) is
  replayed on index tensors of the traced shapes: each output channel position that holds elements of one input
  channel keeps that channel's atom (flatten after pooling, ShuffleNet's channel shuffle); a reshape whose
  output channels mix input channels is refused once the result reaches a layer;
* the atoms reaching the output are fixed (the logits keep their order).

At the end atoms tied together become one unit, and units that sit on exactly the same state-dict axes
(with the same sub-positions and constraints) form one permutation group. A refusal names the module the
operation sits in (``nn_module_stack``) and the operation.
"""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .align_spec import AlignError, Mixed, PermSpec

_HINT = ("; write the permutation spec by hand for this model (closerlook.align.PermSpec, see docs/alignment.md) "
         "or leave the curve's align option at none")

# modules that act on each channel separately (or permute channels equivariantly, like softmax over them)
_PASS_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Hardshrink, nn.Softshrink, nn.Tanhshrink, nn.Threshold, nn.Sigmoid, nn.Tanh,
    nn.LogSigmoid, nn.Softplus, nn.Softsign, nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d,
    nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
_RESHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle)

_UNARY_NAMES = {
    "relu", "relu_", "relu6", "elu", "elu_", "selu", "selu_", "celu", "celu_", "gelu", "silu", "mish", "hardswish",
    "hardsigmoid", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "rrelu", "sigmoid", "sigmoid_", "tanh",
    "tanh_", "softplus", "softsign", "logsigmoid", "tanhshrink", "hardshrink", "softshrink", "threshold", "relu6_",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "stochastic_depth",
    "abs", "neg", "exp", "log", "sqrt", "rsqrt", "square", "clamp", "clamp_", "clip", "clamp_min", "clamp_max",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "lp_pool2d",
    "interpolate", "pad", "softmax", "log_softmax", "contiguous", "clone", "detach", "float", "to", "type_as",
    "max_pool2d_with_indices", "identity"}
_BINARY_NAMES = {"add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul", "truediv", "div", "div_",
                 "itruediv", "maximum", "minimum"}
_RESHAPE_NAMES = {"view", "reshape", "flatten", "transpose", "permute", "channel_shuffle", "native_channel_shuffle",
                  "squeeze", "unsqueeze", "unflatten", "pixel_shuffle", "pixel_unshuffle", "t", "movedim",
                  "swapaxes", "swapdims"}
_REDUCE_NAMES = {"mean", "sum", "amax", "amin"}
_CAT_NAMES = {"cat", "concat", "concatenate"}
_SPLIT_NAMES = {"chunk", "split", "tensor_split", "unbind"}


def _op_name(node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


class _Lab:
    """The channel axis of one tensor: atom (-1: fixed) and interned sub-position at each position."""

    __slots__ = ("atom", "sub")

    def __init__(self, atom: np.ndarray, sub: np.ndarray) -> None:
        self.atom, self.sub = atom, sub

    def __len__(self) -> int:
        return len(self.atom)

    def __getitem__(self, sl) -> "_Lab":
        return _Lab(self.atom[sl], self.sub[sl])


class _Pending:
    """A reshape's output whose channel positions mix input channels: index tensors of the source channel (cid)
    and the element within it (sid), kept until another reshape cleans it up or a layer needs it (refused)."""

    def __init__(self, src: _Lab, cid: torch.Tensor, sid: torch.Tensor, where: str) -> None:
        self.src, self.cid, self.sid, self.where = src, cid, sid, where


class _Walk:
    def __init__(self, model: nn.Module, example: torch.Tensor | None) -> None:
        self.model, self.mods = model, dict(model.named_modules())
        self.sd = model.state_dict()
        self.example = example
        self.n_atoms = 0
        self.atom_owner: list[str] = []             # atom id -> the layer that created it
        self.axes: dict[tuple[str, int], _Lab] = {}  # (state-dict key, axis) -> labels
        self.ties: list[tuple[np.ndarray, np.ndarray]] = []
        self.fixed: list[np.ndarray] = []
        self.colour: list[tuple[np.ndarray, np.ndarray, str]] = []  # atoms, group id, constraint name
        self.subs: dict[Any, int] = {0: 0}
        self.seen: set[str] = set()  # state-dict keys of the modules the walk met

    # ------------------------------------------------------------------ helpers
    def intern(self, key: Any) -> int:
        return self.subs.setdefault(key, len(self.subs))

    def new_atoms(self, owner: str, n: int) -> _Lab:
        a = np.arange(self.n_atoms, self.n_atoms + n)
        self.n_atoms += n
        self.atom_owner += [owner] * n
        return _Lab(a, np.zeros(n, dtype=np.int64))

    def fixed_lab(self, n: int) -> _Lab:
        return _Lab(np.full(n, -1), np.zeros(n, dtype=np.int64))

    def where(self, node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_module":
            m = self.mods[node.target]
            return f"module {node.target!r} ({type(m).__name__})"
        if stack:
            qual, cls = list(stack.values())[-1]  # the innermost module the operation sits in
            return f"{node.op} {_op_name(node)!r} inside module {qual!r} ({getattr(cls, '__name__', cls)})"
        return f"{node.op} {_op_name(node)!r} at the model's top level (node {node.name!r})"

    def refuse(self, node, why: str) -> AlignError:
        return AlignError(f"fx_spec: cannot derive a permutation through {self.where(node)}: {why}{_HINT}")

    def record(self, key: str, axis: int, lab: _Lab) -> None:
        self.axes[(key, axis)] = lab

    def tie(self, a: _Lab, b: _Lab) -> None:
        self.ties.append((a.atom, b.atom))
        bad = (a.sub != b.sub) | ((a.atom < 0) != (b.atom < 0))
        if bad.any():  # different sub-structure: neither side may move there
            self.fixed += [a.atom[bad], b.atom[bad]]

    # ------------------------------------------------------------------ values
    def clean(self, node, v) -> _Lab | None:
        if isinstance(v, _Pending):
            raise self.refuse(node, f"its input comes from {v.where}, a reshape whose output channels mix channels "
                                    "of its input with another axis")
        return v

    # ------------------------------------------------------------------ layers
    def layer(self, node, m: nn.Module, x: _Lab | None, in_shape) -> _Lab:
        t = node.target
        conv = isinstance(m, nn.modules.conv._ConvNd)
        if conv and m.transposed:
            raise self.refuse(node, "a transposed conv (weight axes in, out) is not derived")
        n_in = m.in_channels if conv else m.in_features
        if not conv and len(in_shape) != 2:
            raise self.refuse(node, f"a Linear on a {len(in_shape)}-d input (only (batch, features))")
        x = x if x is not None else self.fixed_lab(n_in)
        groups = m.groups if conv else 1
        if groups == 1:
            out = self.new_atoms(t, m.out_channels if conv else m.out_features)
            self.record(f"{t}.weight", 1, x)
        elif groups == n_in:  # depthwise: output channel c*k+j reads input channel c
            k = m.out_channels // n_in
            atom = np.repeat(x.atom, k)
            sub = np.array([self.intern((int(s), j)) if k > 1 else int(s) for s in x.sub for j in range(k)])
            out = _Lab(atom, sub)
        else:  # grouped: one permutation of the input channels inside every group (the same in each group),
            # each group's outputs permute among themselves
            m_in = n_in // groups
            for j in range(1, groups):
                self.tie(x[:m_in], x[j * m_in:(j + 1) * m_in])
            self.record(f"{t}.weight", 1, x[:m_in])
            out = self.new_atoms(t, m.out_channels)
            self.colour.append((out.atom, np.arange(m.out_channels) // (m.out_channels // groups), t))
        self.record(f"{t}.weight", 0, out)
        if getattr(m, "bias", None) is not None:
            self.record(f"{t}.bias", 0, out)
        return out

    def norm(self, node, m: nn.Module, x: _Lab | None) -> _Lab | None:
        if x is None:
            return None
        for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if t is not None and t.dim() == 1 and t.is_floating_point():
                self.record(f"{node.target}.{name}", 0, x)
        if isinstance(m, nn.GroupNorm):  # statistics per group of channels: permute within groups only
            self.colour.append((x.atom, np.arange(len(x)) // (len(x) // m.num_groups), node.target))
        return x

    # ------------------------------------------------------------------ reshapes, replayed on index tensors
    def reshape(self, node, fn, x, shape, out_shape) -> _Lab | _Pending | None:
        if x is None:
            return None
        if isinstance(x, _Lab):
            n, c = shape[0], shape[1]
            rest = int(np.prod(shape[2:])) if len(shape) > 2 else 1
            cid = torch.arange(c, dtype=torch.float64).view(1, c, *([1] * (len(shape) - 2))).expand(*shape)
            sid = (torch.arange(n, dtype=torch.float64).view(n, 1, 1) * rest
                   + torch.arange(rest, dtype=torch.float64).view(1, 1, rest)).expand(n, c, rest).reshape(*shape)
            x = _Pending(x, cid.contiguous(), sid.contiguous(), self.where(node))
        try:
            cid, sid = fn(x.cid).contiguous(), fn(x.sid).contiguous()  # the model makes it contiguous before a view
        except (ValueError, RuntimeError, TypeError) as exc:
            raise self.refuse(node, f"replaying the reshape on index tensors failed ({exc})") from exc
        if tuple(cid.shape) != tuple(out_shape):
            raise self.refuse(node, "replaying the reshape on index tensors gave another shape")
        if cid.dim() < 2:
            return _Pending(x.src, cid, sid, self.where(node))
        c = cid.shape[1]
        cm, sm = cid.transpose(0, 1).reshape(c, -1), sid.transpose(0, 1).reshape(c, -1)
        if not bool((cm == cm[:, :1]).all()):
            return _Pending(x.src, cid, sid, self.where(node))
        ch = cm[:, 0].long().numpy()
        sig = [self.intern(("sig", tuple(r))) for r in sm.long().tolist()]
        sub = np.array([self.intern((int(s), g)) for s, g in zip(x.src.sub[ch], sig)])
        return _Lab(x.src.atom[ch], sub)

    # ------------------------------------------------------------------ the walk
    def trace(self):
        import torch.fx

        try:
            gm = torch.fx.symbolic_trace(self.model)
        except Exception as exc:  # noqa: BLE001 - fx raises many kinds; name the model
            raise AlignError(f"fx_spec: torch.fx cannot trace {type(self.model).__name__}: {exc}{_HINT}") from exc
        return gm, self.record_values(gm)

    def _examples(self) -> list[torch.Tensor]:
        if self.example is not None:
            return [self.example]
        first = next((m for m in self.model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))), None)
        if isinstance(first, nn.Linear):
            return [torch.randn(2, first.in_features)]
        c = first.in_channels if first is not None else 3
        return [torch.randn(2, c, s, s) for s in (32, 28, 64, 96, 224)]

    def record_values(self, gm) -> dict:
        """Each node's value on an example batch of 2 (tensors as their shapes), eval mode, no gradients."""
        import torch.fx

        seen: dict = {}

        class Rec(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                seen[n] = ("tensor", tuple(out.shape)) if isinstance(out, torch.Tensor) else ("value", out)
                return out

        was, errors = self.model.training, []
        p = next(self.model.parameters(), None)
        try:
            self.model.eval()
            for x in self._examples():
                try:
                    with torch.no_grad():
                        seen.clear()
                        Rec(gm).run(x.to(p.device if p is not None else "cpu",
                                         p.dtype if p is not None and p.is_floating_point() else torch.float32))
                    return dict(seen)
                except Exception as exc:  # noqa: BLE001 - a too-small input; try the next size
                    errors.append(f"{tuple(x.shape)}: {type(exc).__name__}: {exc}")
        finally:
            self.model.train(was)
        raise AlignError(f"fx_spec: a forward pass of {type(self.model).__name__} on example inputs failed "
                         f"({'; '.join(errors)}); pass example= an input it accepts")

    def run(self) -> PermSpec:
        gm, rec = self.trace()
        self.val: dict = {}
        for node in gm.graph.nodes:
            kind, info = rec.get(node, ("value", None))
            if node.op == "output":
                for a in node.all_input_nodes:
                    v = self.val.get(a)
                    for lab in (v if isinstance(v, tuple) else (v,)):
                        if isinstance(lab, _Lab):
                            self.fixed.append(lab.atom)
                        elif isinstance(lab, _Pending):
                            self.fixed.append(lab.src.atom)
                continue
            if node.op in ("placeholder", "get_attr") or kind != "tensor" and not _is_tuple_of_tensors(info):
                self.val[node] = None  # the input, a constant or parameter, or a plain value (a size, an int)
                if node.op == "get_attr":  # a parameter used directly: binary() records it when it meets a stream
                    self.seen.add(node.target)
                continue
            self.val[node] = self.step(node, rec, info)
        untouched = [k for k, v in self.sd.items() if v.is_floating_point() and k not in self.seen]
        if untouched:
            raise AlignError(f"fx_spec: state-dict key {untouched[0]!r} is used by no layer the trace followed{_HINT}")
        return self.finish()

    def step(self, node, rec, out_shape):
        ins = [a for a in node.all_input_nodes if rec.get(a, ("value",))[0] == "tensor" or isinstance(self.val.get(a), tuple)]
        vals = [self.val.get(a) for a in ins]
        name = _op_name(node)
        if node.op == "call_module":
            m = self.mods[node.target]
            self.seen.update(f"{node.target}.{k}" for k in m.state_dict())
            x = vals[0] if vals else None
            shape = rec[ins[0]][1] if ins else None
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                return self.layer(node, m, self.clean(node, x), shape)
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
                return self.norm(node, m, self.clean(node, x))
            if isinstance(m, _PASS_MODULES) or type(m).__name__ == "StochasticDepth":
                return x  # elementwise / per channel: labels (or a pending reshape) pass unchanged
            if isinstance(m, nn.PReLU):
                x = self.clean(node, x)
                if m.num_parameters > 1:
                    self.record(f"{node.target}.weight", 0, x)
                return x
            if isinstance(m, _RESHAPE_MODULES):
                return self.reshape(node, m, x, shape, out_shape)
            raise self.refuse(node, "not a layer, norm, elementwise or reshape module the derivation knows")
        if all(v is None for v in vals):  # nothing permuted flows here (the input image, constants)
            return None
        tensor_args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if name in _UNARY_NAMES:  # elementwise: labels (or a pending reshape) pass unchanged
            return self.val.get(tensor_args[0]) if tensor_args else vals[0]
        if name in _BINARY_NAMES:
            return self.binary(node, rec, out_shape)
        if name in _CAT_NAMES:
            return self.cat(node, rec, out_shape)
        if name in _SPLIT_NAMES:
            return self.split(node, rec)
        if name == "getitem" and isinstance(self.val.get(node.args[0]), tuple):
            return self.val[node.args[0]][node.args[1]]
        if name in _RESHAPE_NAMES:
            shape = rec[ins[0]][1]
            fn = _replay(node, rec, ins[0])
            return self.reshape(node, fn, vals[0], shape, out_shape)
        if name in _REDUCE_NAMES:
            dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            nd = len(rec[ins[0]][1])
            if dims and all(d % nd >= 2 for d in dims):  # a spatial reduction keeps the channel axis
                return self.clean(node, vals[0])
            raise self.refuse(node, f"a reduction over dims {dims} (only spatial dims >= 2 keep the channels)")
        raise self.refuse(node, "an operation the derivation does not know how channels pass through")

    def binary(self, node, rec, out_shape):
        labs = []
        for a in node.all_input_nodes:
            kind, shape = rec.get(a, ("value", None))
            if kind != "tensor":
                continue
            v = self.clean(node, self.val.get(a))
            ax = 1 - (len(out_shape) - len(shape))  # the channel axis of this operand (broadcasting from the right)
            if ax < 0 or shape[ax] == 1:  # the same value for every channel
                if v is not None and len(v) > 1:
                    raise self.refuse(node, "a broadcast of a permuted tensor")
                continue
            labs.append(v if v is not None else (a, ax))
        real = [v for v in labs if isinstance(v, _Lab)]
        for v in labs:
            if isinstance(v, _Lab) or not real:
                continue
            a, ax = v
            if a.op == "get_attr" and a.target in self.sd:  # a per-channel parameter (a layer scale): it moves along
                self.record(a.target, ax, real[0])
                self.seen.add(a.target)
            else:  # a fixed per-channel tensor (a constant, the input): the other side may not move
                self.fixed += [r.atom for r in real]
        for v in real[1:]:
            self.tie(real[0], v)
        return real[0] if real else None

    def cat(self, node, rec, out_shape):
        seq = node.args[0] if node.args else node.kwargs["tensors"]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        parts = [(self.clean(node, self.val.get(a)), rec[a][1]) for a in seq]
        if dim % len(out_shape) != 1:
            raise self.refuse(node, f"a concatenation along dim {dim}, not the channel axis")
        return _Lab(np.concatenate([(v if v is not None else self.fixed_lab(s[1])).atom for v, s in parts]),
                    np.concatenate([(v if v is not None else self.fixed_lab(s[1])).sub for v, s in parts]))

    def split(self, node, rec):
        x = self.clean(node, self.val.get(node.args[0]))
        shapes = rec[node][1]
        nd = len(rec[node.args[0]][1])
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        if _op_name(node) == "unbind" or dim % nd != 1:
            raise self.refuse(node, f"a split along dim {dim}, not the channel axis")
        out, start = [], 0
        for s in shapes:
            out.append(x[start:start + s.shape[1]])
            start += s.shape[1]
        return tuple(out)

    # ------------------------------------------------------------------ groups
    def finish(self) -> PermSpec:
        n = self.n_atoms
        parent = np.arange(n)

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for a, b in self.ties:
            for x, y in zip(a.tolist(), b.tolist()):
                if x >= 0 and y >= 0:
                    rx, ry = find(x), find(y)
                    if rx != ry:
                        parent[max(rx, ry)] = min(rx, ry)
        root = np.array([find(a) for a in range(n)], dtype=np.int64)
        fixed = np.zeros(n, dtype=bool)
        for a in self.fixed:
            a = a[a >= 0]
            fixed[root[a]] = True
        # a unit's signature: the axes it sits on with its sub-positions there, and its constraints
        sig: dict[int, list] = {}
        order = sorted(self.axes)
        for ai, ka in enumerate(order):
            lab = self.axes[ka]
            seen: dict[tuple[int, int], int] = {}
            per: dict[int, list] = {}
            for a, s in zip(lab.atom.tolist(), lab.sub.tolist()):
                if a < 0 or fixed[root[a]]:
                    continue
                r = int(root[a])
                k = seen[(r, s)] = seen.get((r, s), -1) + 1  # a unit twice on one axis: count the copies
                per.setdefault(r, []).append((s, k))
            for r, subs in per.items():
                sig.setdefault(r, []).append((ai, tuple(sorted(subs))))
        for atoms, group, tag in self.colour:
            for a, g in zip(atoms.tolist(), group.tolist()):
                if a >= 0 and not fixed[root[a]]:
                    sig.setdefault(int(root[a]), []).append((tag, g))
        cells: dict[tuple, list[int]] = {}
        for r in sorted(sig):
            cells.setdefault(tuple(sorted(sig[r], key=repr)), []).append(r)
        spec, unit_of = PermSpec(), {}
        taken: dict[str, int] = {}
        for units in sorted(cells.values(), key=lambda u: u[0]):
            if len(units) < 2:  # one unit: nothing to permute
                continue
            owner = self.atom_owner[units[0]]
            name = owner if owner not in taken else f"{owner}#{taken[owner]}"
            taken[owner] = taken.get(owner, 0) + 1
            spec.sizes[name] = len(units)
            unit_of.update({u: (name, i) for i, u in enumerate(units)})
        for key, t in self.sd.items():
            spec.axes[key] = tuple(self.axis((key, i), root, unit_of) for i in range(t.dim()))
        return spec

    def axis(self, ka, root, unit_of):
        lab = self.axes.get(ka)
        if lab is None:
            return None
        names, idx, subs = [], [], []
        rank: dict[tuple, dict] = {}
        for a, s in zip(lab.atom.tolist(), lab.sub.tolist()):
            hit = unit_of.get(int(root[a])) if a >= 0 else None
            if hit is None:
                names.append(None), idx.append(0), subs.append(0)
                continue
            r = rank.setdefault(hit, {})
            r[s] = r.get(s, -1) + 1 if s in r else 0
            names.append(hit[0]), idx.append(hit[1]), subs.append((s, r[s]))
        if not any(names):
            return None
        order = {}  # sub-positions ranked per axis and permutation: same order for every unit
        for nm, s in zip(names, subs):
            if nm is not None:
                order.setdefault(nm, set()).add(s)
        order = {nm: {s: i for i, s in enumerate(sorted(v))} for nm, v in order.items()}
        sub = [order[nm][s] if nm is not None else 0 for nm, s in zip(names, subs)]
        if len(set(names)) == 1:  # one permutation in unit-major order: the compact form
            block = len(order[names[0]])
            if idx == [i // block for i in range(len(idx))] and sub == [i % block for i in range(len(sub))]:
                return (names[0], block)
        return Mixed(names, idx, sub)


def _is_tuple_of_tensors(info) -> bool:
    return isinstance(info, (tuple, list)) and bool(info) and all(isinstance(t, torch.Tensor) for t in info)


def _replay(node, rec, tensor_node):
    """The node's operation as a function of its tensor argument, other arguments at their traced values."""
    def concrete(a, t):
        if a is tensor_node:
            return t
        if isinstance(a, torch.fx.Node):
            if rec[a][0] == "tensor":
                raise ValueError(f"a second tensor argument {a.name!r}")
            return rec[a][1]
        if isinstance(a, (list, tuple)):
            return type(a)(concrete(b, t) for b in a)
        return a

    def fn(t):
        args = [concrete(a, t) for a in node.args]
        kwargs = {k: concrete(v, t) for k, v in node.kwargs.items()}
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)
    return fn


def derive(model: nn.Module, example: torch.Tensor | None = None) -> PermSpec:
    return _Walk(model, example).run()
