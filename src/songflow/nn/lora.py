"""LoRA adapters on ``nn.Linear`` layers: several named adapters at once, merge/unmerge, PEFT key layout.

This module is the only place that knows how a LoRA changes a layer (docs/architecture.md#layers).
File I/O lives in :mod:`songflow.checkpoint.lora`; training code uses :func:`inject` and
:func:`trainable_parameters`.

The maths, per adapted ``nn.Linear`` with weight ``W [out, in]`` and bias ``b``::

    y = x W^T + b + sum_k  weight_k * scale_k * B_k(A_k(dropout_k(x)))
    scale_k = alpha_k / r_k            (classic LoRA)
    scale_k = alpha_k / sqrt(r_k)      (rsLoRA, ``use_rslora=True``)

with ``A_k [r_k, in]`` and ``B_k [out, r_k]``; ``weight_k`` is the user's strength (the official pipeline's
``lora_weight``; 0 switches the adapter off exactly, it is skipped). Fresh adapters have A initialised like
an ``nn.Linear`` weight (Kaiming-uniform) and B = 0, so a new adapter leaves the model unchanged.

Design choice: **module replacement with shared parameters.** :func:`inject` replaces each target
``nn.Linear`` by a :class:`LoRALinear` (a subclass of ``nn.Linear``) that registers the *same* ``weight``
and ``bias`` Parameter objects under the same names, so ``...attn.to_q.weight`` stays where it was. The
adapters live in ``lora_A``/``lora_B``/``lora_dropout`` ``ModuleDict`` children keyed by adapter name,
giving parameter names in PEFT's in-model layout (``...to_q.lora_A.<adapter>.weight``); they follow the
model through ``.to()``, offloading and ``named_parameters()``. Adapter tensors are **kept out of the
model's ``state_dict()``** (neither written nor expected as missing; loaded if a state dict holds them), so
``model.state_dict()`` is always exactly the base checkpoint layout and strict base-checkpoint loading works
with adapters attached. Use :func:`adapter_state_dict` to get an adapter's tensors. Removing the last
adapter of a layer puts a plain ``nn.Linear`` (same Parameters) back.

Merging (:func:`merge`) folds ``weight_k * scale_k * B_k A_k`` into ``W`` (the deltas summed in float32 and
added to the base, rounded once to ``W``'s dtype); merged adapters cost nothing in forward. The base is
recoverable exactly: :func:`unmerge` (and removing an adapter, or re-weighting a merged one) recomputes the
same float32 sum and subtracts it, and the few elements whose base value that rounding cannot give back
(where the delta is large against the weight) are remembered at merge time. So an unmerged model is
bit-identical to the base in any dtype, provided the adapter tensors were not changed while merged and the
model is on the device where it was merged (after a move: equal up to float rounding).

**LyCORIS adapters** (``AdapterSpec.kind`` ``"lokr"`` or ``"loha"``) are adapters computed as a dense
delta from their factor tensors (kept in a ``lycoris`` ``ModuleDict`` child, named as in the file)::

    LoKr:  delta = kron(W1, W2)                        W1 = lokr_w1 or lokr_w1_a @ lokr_w1_b, W2 likewise
    LoHa:  delta = (hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b)     (elementwise product)
    y = x W^T + b + weight * scale * x delta^T,   scale = alpha / r  (alpha / sqrt(r) with rs_lora)

where ``r`` is the low rank of the factored part (LoKr: ``lokr_w1_b`` rows, else ``lokr_w2_b`` rows; LoHa:
``hada_w1_b`` rows); a LoKr with no factored part has scale 1 (LyCORIS sets ``alpha = r`` then). They merge,
re-weight and unmerge exactly like LoRA (the same bit-exact recovery), and are inference-only here.

PEFT compatibility facts used (not PEFT code): ``target_modules`` given as a list matches a module whose
qualified name equals a target or ends with ``"." + target``; given as a string it is a regular expression
that must match the whole name. Saved adapter keys (diffusers ``save_lora_adapter`` layout) are
``<module>.lora_A.weight`` / ``<module>.lora_B.weight``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

__all__ = [
    "LYCORIS_KINDS",
    "AdapterSpec",
    "LoRALinear",
    "add_adapter_at",
    "adapter_names",
    "adapter_specs",
    "adapter_state_dict",
    "check_adapter_name",
    "compact_target_modules",
    "find_targets",
    "inject",
    "is_merged",
    "lora_modules",
    "lora_scale",
    "lycoris_delta",
    "lycoris_rank",
    "lycoris_shape",
    "matches_target",
    "merge",
    "remove_adapter",
    "set_adapter_weight",
    "trainable_parameters",
    "unmerge",
]

LORA_A = "lora_A"
LORA_B = "lora_B"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
_PROBE = nn.ModuleDict()  # names a ModuleDict already has as attributes cannot be adapter names


def lora_scale(r: int, alpha: float, use_rslora: bool = False) -> float:
    """``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA (the official rap LoRA: 32 / sqrt(256) = 2.0)."""
    if r <= 0:
        raise ValueError(f"LoRA rank must be positive, got {r}")
    return float(alpha) / (math.sqrt(r) if use_rslora else r)


#: LyCORIS adapter kinds: kind -> the factor tensor names it may hold (each factor full or as an a @ b pair)
LYCORIS_KINDS: dict[str, tuple[str, ...]] = {
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
}


def _factor(f: Mapping[str, Any], full: str) -> Any:
    """Factor ``full`` of a LyCORIS adapter: the tensor/shape itself, or the product of its ``_a``/``_b``
    pair (a shape ``(rows of a, columns of b)`` when ``f`` holds shapes); None when incomplete."""
    if full in f:
        return f[full]
    a, b = f.get(full + "_a"), f.get(full + "_b")
    if a is None or b is None:
        return None
    if isinstance(a, Tensor):
        return a @ b
    if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
        return None
    return (a[0], b[1])


def lycoris_shape(kind: str, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int] | None:
    """The ``[out, in]`` shape of the delta that LyCORIS factors of these ``shapes`` make (None: the factors
    are incomplete, not 2-D, or do not fit together)."""
    if kind not in LYCORIS_KINDS or set(shapes) - set(LYCORIS_KINDS[kind]):
        return None
    if any(len(s) != 2 for s in shapes.values()):
        return None
    one, two = (
        _factor(shapes, n) for n in (("lokr_w1", "lokr_w2") if kind == "lokr" else ("hada_w1", "hada_w2"))
    )
    if one is None or two is None:
        return None
    if kind == "lokr":
        return (one[0] * two[0], one[1] * two[1])
    return tuple(one) if tuple(one) == tuple(two) else None  # type: ignore[return-value]


def lycoris_rank(kind: str, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The low rank ``r`` of the scale ``alpha / r``: LoKr ``lokr_w1_b`` rows, else ``lokr_w2_b`` rows (None
    when neither factor is factored: scale 1); LoHa ``hada_w1_b`` rows."""
    for key in ("lokr_w1_b", "lokr_w2_b") if kind == "lokr" else ("hada_w1_b",):
        if key in shapes:
            return int(shapes[key][0])
    return None


def lycoris_delta(kind: str, factors: Mapping[str, Tensor]) -> Tensor:
    """The unscaled ``[out, in]`` delta of LyCORIS ``factors`` (compute in float32 for merging)."""
    if kind == "lokr":
        return torch.kron(_factor(factors, "lokr_w1"), _factor(factors, "lokr_w2"))
    if kind == "loha":
        return _factor(factors, "hada_w1") * _factor(factors, "hada_w2")
    raise ValueError(f"unknown LyCORIS adapter kind {kind!r} (known: {', '.join(LYCORIS_KINDS)})")


@dataclass(frozen=True)
class AdapterSpec:
    """Hyper-parameters of one adapter on one layer: a LoRA (``kind="lora"``, rank ``r``), or a LyCORIS
    adapter (``kind`` in :data:`LYCORIS_KINDS`) whose ``factors`` gives its factor names and shapes."""

    r: int
    alpha: float
    use_rslora: bool = False
    dropout: float = 0.0
    kind: str = "lora"
    factors: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not math.isfinite(float(self.alpha)):
            raise ValueError(f"LoRA alpha must be finite, got {self.alpha!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.kind == "lora":
            if self.factors:
                raise ValueError("a LoRA adapter has lora_A/lora_B factors; `factors` is for LyCORIS kinds")
        elif self.kind not in LYCORIS_KINDS:
            raise ValueError(f"unknown adapter kind {self.kind!r} (known: lora, {', '.join(LYCORIS_KINDS)})")
        elif lycoris_shape(self.kind, dict(self.factors)) is None or self.dropout:
            raise ValueError(
                f"{self.kind} factors {dict(self.factors)} do not make a 2-D delta (or dropout set)"
            )

    @property
    def scale(self) -> float:
        return lora_scale(self.r, self.alpha, self.use_rslora)


def check_adapter_name(name: str) -> str:
    """Adapter names become ``ModuleDict`` keys: letters, digits, ``_`` and ``-``, not a dict method name."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or hasattr(_PROBE, name):
        raise ValueError(
            f"invalid LoRA adapter name {name!r}: use letters, digits, '_' and '-' (and not a ModuleDict "
            "attribute such as 'keys' or 'update')"
        )
    return name


class _HiddenFromStateDict(nn.Module):
    """Adapter tensors are not part of the base model's state dict (see the module docstring): never
    written, loaded only when a state dict holds them."""

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        return

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        if any(prefix + name in state_dict for name, _ in self.named_parameters(recurse=False)):
            super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )


class _LycorisFactors(_HiddenFromStateDict):
    """One LyCORIS adapter's factor tensors on one layer (Parameters named as in the file, zero until
    loaded) and the dense delta they make."""

    def __init__(self, spec: AdapterSpec, *, device=None, dtype=None):
        super().__init__()
        self.kind = spec.kind
        for name, shape in spec.factors:
            self.register_parameter(name, nn.Parameter(torch.zeros(shape, device=device, dtype=dtype)))

    def delta(self, device: torch.device) -> Tensor:
        """The unscaled delta ``[out, in]`` in float32 on ``device``."""
        f = {n: p.detach().to(device=device, dtype=torch.float32) for n, p in self.named_parameters()}
        return lycoris_delta(self.kind, f)


class _LoRAFactor(_HiddenFromStateDict, nn.Linear):
    """One LoRA factor (A or B) as a bias-free Linear, invisible to the model's state dict.

    ``reset_parameters`` honours the factor's role (B starts at zero), also when the weights module
    materialises a meta-device model and re-initialises parameters that a file did not fill.
    """

    def __init__(self, in_features: int, out_features: int, *, zero: bool, device=None, dtype=None):
        self.zero = zero
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        if self.zero:
            nn.init.zeros_(self.weight)
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` carrying any number of named LoRA adapters (see the module docstring).

    Build with :meth:`from_linear` (shares the base Parameters, allocates nothing). Per-adapter state:
    ``specs[name]`` (:class:`AdapterSpec`), ``weights[name]`` (user strength), ``merged[name]`` (the
    coefficient folded into ``weight`` while merged).
    """

    def __init__(self, *args: Any, **kwargs: Any):  # pragma: no cover - use from_linear
        raise TypeError("build a LoRALinear with LoRALinear.from_linear(linear)")

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> LoRALinear:
        if type(linear) is not nn.Linear:
            raise TypeError(f"LoRA supports nn.Linear layers only, got {type(linear).__name__}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)  # a Parameter or None, registered like nn.Linear does
        self.training = linear.training
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lycoris = nn.ModuleDict()  # LyCORIS adapters (kind != "lora"): their factor tensors
        self.specs: dict[str, AdapterSpec] = {}
        self.weights: dict[str, float] = {}
        self.merged: dict[str, float] = {}
        # base values that rounding cannot give back while merged (host memory; see _apply_merged)
        self._merge_fix_idx: Tensor | None = None
        self._merge_fix_val: Tensor | None = None
        return self

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with this layer's (current, possibly merged) weight and bias Parameters."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        linear.bias = self.bias
        linear.train(self.training)
        return linear

    # -- adapters ---------------------------------------------------------------------------------------

    def add_adapter(
        self, name: str, spec: AdapterSpec, *, weight: float = 1.0, dtype: torch.dtype | None = None
    ) -> None:
        """Add a fresh adapter (A Kaiming-uniform, B zero; LyCORIS factors zero) on this layer's device, in
        ``dtype`` (default: the base weight's dtype)."""
        check_adapter_name(name)
        if name in self.specs:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        device = self.weight.device
        dtype = dtype or self.weight.dtype
        if spec.kind != "lora":
            shape = lycoris_shape(spec.kind, dict(spec.factors))
            if shape != (self.out_features, self.in_features):
                raise ValueError(
                    f"{spec.kind} factors make a {list(shape or ())} delta; this layer is "
                    f"[{self.out_features}, {self.in_features}]"
                )
            self.lycoris[name] = _LycorisFactors(spec, device=device, dtype=dtype)
            self.specs[name] = spec
            self.weights[name] = float(weight)
            return
        self.lora_A[name] = _LoRAFactor(self.in_features, spec.r, zero=False, device=device, dtype=dtype)
        self.lora_B[name] = _LoRAFactor(spec.r, self.out_features, zero=True, device=device, dtype=dtype)
        self.lora_dropout[name] = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.specs[name] = spec
        self.weights[name] = float(weight)

    def remove_adapter(self, name: str) -> None:
        """Unmerge (if merged) and delete adapter ``name``."""
        self._require(name)
        if name in self.merged:
            self.unmerge([name])
        if name in self.lycoris:
            del self.lycoris[name]
        else:
            del self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
        del self.specs[name], self.weights[name]

    def set_weight(self, name: str, weight: float) -> None:
        """Change the user strength; a merged adapter is re-folded into ``weight``."""
        self._require(name)
        weight = float(weight)
        if weight == self.weights[name]:
            return
        self.weights[name] = weight
        if name in self.merged:
            self._apply_merged({**self.merged, name: weight * self.specs[name].scale})

    def delta_weight(self, name: str) -> Tensor:
        """``weight * scale * B @ A`` (LyCORIS: ``weight * scale * delta``) in float32, ``[out, in]``: what
        merging adds to ``weight``."""
        self._require(name)
        return self._delta(name, self.weights[name] * self.specs[name].scale)

    def merge(self, names: Iterable[str] | None = None) -> None:
        """Fold the given (default: all unmerged) adapters into ``weight``."""
        coefs = dict(self.merged)
        for name in self._names(names):
            coefs.setdefault(name, self.weights[name] * self.specs[name].scale)
        if coefs != self.merged:
            self._apply_merged(coefs)

    def unmerge(self, names: Iterable[str] | None = None) -> None:
        """Take the given (default: all merged) adapters out of ``weight`` again."""
        drop = set(self._names(names))
        if drop & set(self.merged):
            self._apply_merged({n: c for n, c in self.merged.items() if n not in drop})

    def base_weight(self) -> Tensor:
        """The weight without any merged adapter (a new tensor; exactly the pre-merge values, see
        :meth:`_apply_merged`)."""
        with torch.no_grad():
            w = self.weight
            total = self._total(self.merged)
            if total is None:
                return w.detach().clone()
            base = (w.to(torch.float32) - total).to(w.dtype)
            if self._merge_fix_idx is not None:
                idx = self._merge_fix_idx.to(device=w.device, dtype=torch.long)
                base.view(-1)[idx] = self._merge_fix_val.to(w.device)
            elif self._merge_fix_val is not None:
                base.copy_(self._merge_fix_val)
            return base

    def _names(self, names: Iterable[str] | None) -> list[str]:
        names = list(self.specs) if names is None else list(names)
        for name in names:
            self._require(name)
        return names

    def _require(self, name: str) -> None:
        if name not in self.specs:
            raise KeyError(f"no LoRA adapter {name!r} on this layer (has: {sorted(self.specs)})")

    def factor_parameters(self, name: str) -> list[nn.Parameter]:
        """Adapter ``name``'s tensors on this layer (A and B, or the LyCORIS factors)."""
        self._require(name)
        if name in self.lycoris:
            return list(self.lycoris[name].parameters())
        return [self.lora_A[name].weight, self.lora_B[name].weight]

    def _delta(self, name: str, coef: float) -> Tensor:
        if name in self.lycoris:
            return cast(_LycorisFactors, self.lycoris[name]).delta(self.weight.device) * coef
        a = self.lora_A[name].weight.detach().to(device=self.weight.device, dtype=torch.float32)
        b = self.lora_B[name].weight.detach().to(device=self.weight.device, dtype=torch.float32)
        return (b @ a) * coef

    def _total(self, coefs: Mapping[str, float]) -> Tensor | None:
        """Sum of the merged deltas in float32, in ``coefs`` order (so it is recomputed bit-identically)."""
        total = None
        for name, coef in coefs.items():
            if coef != 0.0:
                delta = self._delta(name, coef)
                total = delta if total is None else total + delta
        return total

    @torch.no_grad()
    def _apply_merged(self, coefs: Mapping[str, float]) -> None:
        """Set ``weight = round(W0 + sum of deltas)`` for the adapters and coefficients in ``coefs``.

        ``W0`` (the base) is recovered exactly: ``round(weight - total)`` differs from ``W0`` only in the
        few elements where the delta is large against the weight (the rounding of ``W0 + total`` lost bits
        there), and those elements' base values are kept in ``_merge_fix_idx``/``_merge_fix_val`` in host
        memory, so merging costs no accelerator memory (int32 index + value per element; a full copy
        when that is smaller; typically a few % of the elements: ~8% for deltas 10% of the weights in bf16).
        Recovery recomputes the same float32 sum, so it is bit-exact as long as the adapter tensors are
        unchanged and the module is on the device where it was merged (elsewhere: up to rounding).
        """
        w = self.weight
        base = self.base_weight()
        total = self._total(coefs)
        idx = val = None
        if total is None:
            w.copy_(base)
        else:
            new = (base.to(torch.float32) + total).to(w.dtype)
            wrong = ((new.to(torch.float32) - total).to(w.dtype) != base).view(-1)
            n_wrong = int(wrong.sum())
            if n_wrong * (4 + w.element_size()) >= w.numel() * w.element_size():
                val = base.cpu()
            elif n_wrong:
                idx = wrong.nonzero().view(-1).to(device="cpu", dtype=torch.int32)
                val = base.view(-1)[wrong].cpu()
            w.copy_(new)
        self._merge_fix_idx = idx
        self._merge_fix_val = val
        self.merged = {n: float(c) for n, c in coefs.items()}

    # -- forward ----------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        y = nn.functional.linear(x, self.weight, self.bias)
        for name, spec in self.specs.items():
            weight = self.weights[name]
            if weight == 0.0 or name in self.merged:
                continue
            if name in self.lycoris:  # a dense delta, in the input's dtype
                y = y + nn.functional.linear(x, self._delta(name, weight * spec.scale).to(x.dtype))
                continue
            a = self.lora_A[name]
            h = self.lora_dropout[name](x.to(a.weight.dtype))
            y = y + (self.lora_B[name](a(h)) * (weight * spec.scale)).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        adapters = ", ".join(
            f"{n}({'' if s.kind == 'lora' else s.kind + ', '}r={s.r}, scale={s.scale:g}, "
            f"weight={self.weights[n]:g}" + (", merged)" if n in self.merged else ")")
            for n, s in self.specs.items()
        )
        return f"{super().extra_repr()}, adapters=[{adapters}]"


# ---------------------------------------------------------------------------------------------------------
# model-level helpers
# ---------------------------------------------------------------------------------------------------------


def matches_target(module_name: str, target_modules: str | Iterable[str]) -> bool:
    """PEFT's rule: a list entry matches the name itself or a ``.``-separated suffix of it; a string is a
    regular expression matched against the whole name."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in target_modules)


def find_targets(model: nn.Module, target_modules: str | Iterable[str]) -> list[str]:
    """Qualified names of the modules ``target_modules`` selects (any type), in model order."""
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
    return [name for name, _ in model.named_modules() if name and matches_target(name, target_modules)]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def _as_lora(model: nn.Module, name: str) -> LoRALinear:
    """The LoRALinear at ``name``, wrapping a plain ``nn.Linear`` there first if needed."""
    module = model.get_submodule(name)
    if isinstance(module, LoRALinear):
        return module
    if type(module) is not nn.Linear:
        raise TypeError(f"LoRA target {name!r} is a {type(module).__name__}; only nn.Linear is supported")
    wrapped = LoRALinear.from_linear(module)
    _replace(model, name, wrapped)
    return wrapped


def add_adapter_at(
    model: nn.Module,
    specs: Mapping[str, AdapterSpec],
    name: str,
    *,
    weight: float = 1.0,
    dtype: torch.dtype | None = None,
) -> dict[str, LoRALinear]:
    """Add adapter ``name`` with a per-layer spec ``{qualified layer name: AdapterSpec}``.

    Validates every layer first (exists, is ``nn.Linear``, has no adapter ``name``) so that a failure leaves
    the model unchanged. Returns ``{layer name: LoRALinear}``.
    """
    check_adapter_name(name)
    if not specs:
        raise ValueError("no layers given for the LoRA adapter")
    problems = []
    for layer in specs:
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            problems.append(f"{layer}: no such module")
            continue
        if isinstance(module, LoRALinear):
            if name in module.specs:
                problems.append(f"{layer}: already has adapter {name!r}")
        elif type(module) is not nn.Linear:
            problems.append(f"{layer}: is a {type(module).__name__}, only nn.Linear is supported")
    if problems:
        raise ValueError(f"cannot add LoRA adapter {name!r}: " + "; ".join(problems[:10]))
    out: dict[str, LoRALinear] = {}
    try:
        for layer, spec in specs.items():
            out[layer] = module = _as_lora(model, layer)
            module.add_adapter(name, spec, weight=weight, dtype=dtype)
    except BaseException:
        for layer, module in out.items():
            if name in module.specs:
                module.remove_adapter(name)
            if not module.specs:
                _replace(model, layer, module.to_linear())
        raise
    return out


def inject(
    model: nn.Module,
    target_modules: str | Iterable[str],
    *,
    name: str = "default",
    r: int = 8,
    alpha: float | None = None,
    use_rslora: bool = False,
    dropout: float = 0.0,
    weight: float = 1.0,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Add a fresh adapter ``name`` (A Kaiming-uniform, B = 0) to every ``nn.Linear`` that ``target_modules``
    selects (PEFT matching, see :func:`matches_target`). ``alpha`` defaults to ``r`` (scale 1).

    Raises ValueError when nothing matches or a matched module is not an ``nn.Linear``. Returns the
    qualified names of the adapted layers.
    """
    names = find_targets(model, target_modules)
    if not names:
        raise ValueError(f"no module of {type(model).__name__} matches target_modules {target_modules!r}")
    spec = AdapterSpec(
        r=r, alpha=float(r if alpha is None else alpha), use_rslora=use_rslora, dropout=dropout
    )
    add_adapter_at(model, dict.fromkeys(names, spec), name, weight=weight, dtype=dtype)
    return names


def lora_modules(model: nn.Module, name: str | None = None) -> dict[str, LoRALinear]:
    """``{qualified name: LoRALinear}`` of layers carrying any adapter (or adapter ``name``)."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, LoRALinear) and (name is None or name in m.specs)
    }


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters attached anywhere in ``model``, in order of first appearance."""
    seen: dict[str, None] = {}
    for module in lora_modules(model).values():
        seen.update(dict.fromkeys(module.specs))
    return list(seen)


def _modules_of(model: nn.Module, name: str) -> dict[str, LoRALinear]:
    modules = lora_modules(model, name)
    if not modules:
        raise KeyError(f"no LoRA adapter {name!r} in the model (has: {adapter_names(model)})")
    return modules


def adapter_specs(model: nn.Module, name: str) -> dict[str, AdapterSpec]:
    """``{layer name: AdapterSpec}`` of adapter ``name``."""
    return {n: m.specs[name] for n, m in _modules_of(model, name).items()}


def is_merged(model: nn.Module, name: str) -> bool:
    return any(name in m.merged for m in _modules_of(model, name).values())


def _each(model: nn.Module, names: Iterable[str] | str | None) -> Iterator[tuple[LoRALinear, list[str]]]:
    if isinstance(names, str):
        names = [names]
    wanted = None if names is None else list(names)
    if wanted is not None:
        for n in wanted:
            _modules_of(model, n)  # raises KeyError for an unknown name
    for module in lora_modules(model).values():
        yield module, [n for n in module.specs if wanted is None or n in wanted]


def merge(model: nn.Module, names: Iterable[str] | str | None = None) -> None:
    """Fold adapters (default: all) into the base weights; merged adapters cost nothing in forward."""
    for module, here in _each(model, names):
        module.merge(here)


def unmerge(model: nn.Module, names: Iterable[str] | str | None = None) -> None:
    """Undo :func:`merge` for the given adapters (default: all merged ones)."""
    for module, here in _each(model, names):
        module.unmerge(here)


def set_adapter_weight(model: nn.Module, name: str, weight: float) -> None:
    """Set the user strength of adapter ``name`` everywhere (merged adapters are re-folded in place)."""
    for module in _modules_of(model, name).values():
        module.set_weight(name, weight)


def remove_adapter(model: nn.Module, name: str, *, missing_ok: bool = False) -> int:
    """Unmerge and delete adapter ``name``; layers left without adapters become plain ``nn.Linear`` again.

    Returns the number of layers it was removed from (KeyError if none, unless ``missing_ok``).
    """
    modules = lora_modules(model, name)
    if not modules and not missing_ok:
        raise KeyError(f"no LoRA adapter {name!r} in the model (has: {adapter_names(model)})")
    for layer, module in modules.items():
        module.remove_adapter(name)
        if not module.specs:
            _replace(model, layer, module.to_linear())
    return len(modules)


def adapter_state_dict(model: nn.Module, name: str) -> dict[str, Tensor]:
    """Adapter ``name``'s tensors in the saved PEFT/diffusers layout ``<layer>.lora_A.weight`` ``[r, in]`` and
    ``<layer>.lora_B.weight`` ``[out, r]`` (detached; they share storage with the parameters); a LyCORIS
    adapter's as ``<layer>.<factor name>``."""
    out: dict[str, Tensor] = {}
    for layer, module in _modules_of(model, name).items():
        if name in module.lycoris:
            out.update({f"{layer}.{n}": p.detach() for n, p in module.lycoris[name].named_parameters()})
            continue
        out[f"{layer}.{LORA_A}.weight"] = module.lora_A[name].weight.detach()
        out[f"{layer}.{LORA_B}.weight"] = module.lora_B[name].weight.detach()
    return out


def trainable_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """Make adapter ``name`` the only trainable part of ``model`` and return its parameters.

    Sets ``requires_grad=False`` on every other parameter of the model (base weights and other adapters) and
    ``True`` on this adapter's A and B. A merged adapter cannot be trained (ValueError): unmerge it first.
    """
    modules = _modules_of(model, name)
    if any(name in m.merged for m in modules.values()):
        raise ValueError(f"LoRA adapter {name!r} is merged into the base weights; unmerge it before training")
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for module in modules.values():
        for param in module.factor_parameters(name):
            param.requires_grad_(True)
            params.append(param)
    return params


def compact_target_modules(model: nn.Module, layers: Iterable[str]) -> list[str]:
    """The shortest PEFT ``target_modules`` list that selects exactly ``layers`` in ``model``.

    Each layer contributes its shortest dotted suffix that selects no module outside ``layers`` (e.g. the
    official rap LoRA's layers give ``speaker_embedder, linear_q, ..., to_q, to_out.0``).
    """
    chosen = set(layers)
    all_names = [n for n, _ in model.named_modules() if n]
    out: list[str] = []
    for layer in chosen:
        parts = layer.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if suffix in out:
                break
            if all(n in chosen for n in all_names if matches_target(n, [suffix])):
                out.append(suffix)
                break
    return sorted(out)
