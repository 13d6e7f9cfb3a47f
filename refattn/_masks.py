"""Attention masks in one canonical form.

refattn accepts, on every method that can honour them:

- ``mask``: a boolean array broadcastable to ``(..., n, m)``, ``True`` = keep (the torch SDPA and
  JAX convention), or a real floating *additive* mask of that shape added to the scaled logits
  (``-inf`` entries remove a key; ``+inf`` and NaN are rejected). The mask is a constant: no
  gradient is returned for it.
- ``causal``: ``False``; ``True`` or ``"top_left"`` keeps key ``j`` for query ``i`` iff ``j <= i``
  (the alignment of ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``), and
  ``"bottom_right"`` keeps ``j <= i + (m - n)`` (the alignment of FlashAttention 2 and of decoding
  with a key/value cache, where the last query sees every key). For ``n == m`` they coincide.
  A causal mask is never materialised as an ``(n, m)`` array: each block computes its own piece.
- ``key_lengths``: an integer array broadcastable to the batch shape ``(...)``; key ``j`` is kept
  iff ``j < key_lengths`` (key-padding masks). It must be a scalar or have the batch's rank: a
  ``(b,)`` array against a ``(b, h)`` batch would broadcast against the heads, so a non-scalar
  ``key_lengths`` (or ``query_lengths``) of lower rank (other than all-ones shapes) raises
  ``ValueError`` naming the axes.

All three combine by logical AND (the additive mask is added where the others keep).

Exact attention adds (issue 25): ``query_lengths`` (query padding: rows ``i >= query_lengths`` see
no key, so their output and gradients are zero) and a ``mask_mod`` (:mod:`refattn.mods`), evaluated
per block on broadcastable index arrays and AND-ed in; with a document mask mod, ``causal`` is taken
per segment (the caller folds it into the mask mod, see :func:`refattn.mods.with_causal`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._xp import broadcasts_to, is_floating, is_lazy

__all__ = ["MaskSpec", "make_mask", "mask_block", "key_padding_keep", "CAUSAL_CHOICES"]

CAUSAL_CHOICES = (False, True, "top_left", "bottom_right")


class MaskSpec(NamedTuple):
    """Canonical mask: every piece may be ``None`` (absent)."""

    keep: Any  # bool, broadcastable to (..., n, m)
    bias: Any  # float additive, broadcastable to (..., n, m)
    causal_offset: int | None  # keep j <= i + offset
    key_lengths: Any  # integer (...,), keep j < key_lengths
    n: int
    m: int
    query_lengths: Any = None  # integer (...,), keep rows i < query_lengths
    mask_mod: Any = None  # a refattn.mods.MaskMod, evaluated per block
    index: Any = None  # (b, h): the index arrays a mask mod sees, shaped for the batch layout

    @property
    def empty(self) -> bool:
        return (self.keep is None and self.bias is None and self.causal_offset is None
                and self.key_lengths is None and self.query_lengths is None and self.mask_mod is None)


def _causal_offset(causal: Any, n: int, m: int) -> int | None:
    if causal is False or causal is None:
        return None
    if causal is True or causal == "top_left":
        return 0
    if causal == "bottom_right":
        return m - n
    msg = f"causal must be one of {CAUSAL_CHOICES}, got {causal!r}"
    raise ValueError(msg)


def make_mask(xp: Any, *, mask: Any, causal: Any, key_lengths: Any, n: int, m: int,
              batch: tuple[int, ...], dtype: Any, query_lengths: Any = None) -> MaskSpec:
    """Validate the mask arguments of an attention call and return their canonical form.

    ``batch`` is the broadcast leading shape of q, k, v; ``dtype`` the working float dtype.
    """
    offset = _causal_offset(causal, n, m)
    keep = bias = None
    target = (*batch, n, m)
    if mask is not None:
        if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
            msg = f"mask must be a boolean or floating array broadcastable to {target}, got {type(mask).__name__}"
            raise TypeError(msg)
        if not broadcasts_to(mask.shape, target):
            msg = (f"mask must be broadcastable to (..., n, m) = {target} without enlarging it, "
                   f"got shape {tuple(mask.shape)}")
            raise ValueError(msg)
        if mask.ndim < 2:  # (m,) and 0-D masks broadcast as (1, m) and (1, 1): every block slices 2 axes
            mask = xp.reshape(mask, (1,) * (2 - mask.ndim) + tuple(mask.shape))
        if mask.dtype == xp.bool:
            keep = mask
        elif is_floating(xp, mask.dtype):
            nan = xp.any(xp.isnan(mask))
            if not is_lazy(nan) and (bool(nan) or bool(xp.any(mask == xp.inf))):
                msg = "mask (additive) must not contain NaN or +inf; use -inf to remove a key"
                raise ValueError(msg)
            bias = xp.astype(mask, dtype)
            big = xp.any(bias == xp.inf)
            if not is_lazy(big) and bool(big):  # finite in its own dtype, beyond the working one
                msg = (f"mask (additive) has entries too large for the working dtype {dtype} (they become +inf "
                       "and every logit of their row NaN); clip it to that dtype's range")
                raise ValueError(msg)
        else:
            msg = f"mask must have dtype bool (True = keep) or a real floating dtype (additive), got {mask.dtype}"
            raise TypeError(msg)
    if key_lengths is not None:
        _check_lengths(xp, "key_lengths", key_lengths, batch, m, "m")
    if query_lengths is not None:
        _check_lengths(xp, "query_lengths", query_lengths, batch, n, "n")
    return MaskSpec(keep, bias, offset, key_lengths, n, m, query_lengths)


def _check_lengths(xp: Any, name: str, lengths: Any, batch: tuple[int, ...], size: int, letter: str) -> None:
    if not hasattr(lengths, "dtype") or not xp.isdtype(lengths.dtype, "integral"):
        msg = (f"{name} must be an integer array broadcastable to the batch shape {batch}, "
               f"got {getattr(lengths, 'dtype', type(lengths).__name__)}")
        raise TypeError(msg)
    if not broadcasts_to(lengths.shape, batch):
        msg = f"{name} must be broadcastable to the batch shape {batch}, got shape {tuple(lengths.shape)}"
        raise ValueError(msg)
    if 0 < lengths.ndim < len(batch) and any(s != 1 for s in lengths.shape):
        # trailing broadcasting would align a (b,) array with the *last* batch axis (the heads of a
        # (b, h) batch), silently wrong when b == h
        axes = ", ".join(f"axis {i} (size {s})" for i, s in enumerate(batch))
        msg = (f"{name} of shape {tuple(lengths.shape)} is ambiguous against the batch shape {batch}: "
               f"broadcasting aligns its axes with the last {lengths.ndim} batch axes, not the first; "
               f"give it the batch's rank {len(batch)} (its axes match {axes}, size 1 to broadcast), "
               f"e.g. shape {(batch[0],) + (1,) * (len(batch) - 1)} for one length per leading batch element")
        raise ValueError(msg)
    low = xp.any(lengths < 0)
    if not is_lazy(low) and (bool(low) or bool(xp.any(lengths > size))):
        msg = f"{name} must lie in [0, {letter}] = [0, {size}]"
        raise ValueError(msg)


def _slice2(a: Any, i0: int, i1: int, j0: int, j1: int) -> Any:
    rows = slice(i0, i1) if a.shape[-2] != 1 else slice(None)
    cols = slice(j0, j1) if a.shape[-1] != 1 else slice(None)
    return a[..., rows, cols]


def mask_block(xp: Any, spec: MaskSpec, i0: int, i1: int, j0: int, j1: int,
               dev: Any) -> tuple[Any, Any]:
    """``(keep, bias)`` for query rows ``i0:i1`` and key columns ``j0:j1`` (either may be ``None``).

    ``keep`` is boolean and broadcastable to ``(..., i1 - i0, j1 - j0)``.
    """
    keep = None if spec.keep is None else _slice2(spec.keep, i0, i1, j0, j1)
    if spec.causal_offset is not None:
        i = xp.arange(i0, i1, device=dev)[:, None]
        j = xp.arange(j0, j1, device=dev)[None, :]
        c = j <= i + spec.causal_offset
        keep = c if keep is None else keep & c
    if spec.key_lengths is not None:
        j = xp.arange(j0, j1, device=dev)
        lengths = xp.astype(spec.key_lengths, xp.int64)
        pad = j < lengths[..., None, None]
        keep = pad if keep is None else keep & pad
    if spec.query_lengths is not None:
        i = xp.arange(i0, i1, device=dev)[:, None]
        pad = i < xp.astype(spec.query_lengths, xp.int64)[..., None, None]
        keep = pad if keep is None else keep & pad
    if spec.mask_mod is not None:
        b, h = spec.index
        i = xp.arange(i0, i1, dtype=xp.int64, device=dev)[:, None]
        j = xp.arange(j0, j1, dtype=xp.int64, device=dev)[None, :]
        mm = spec.mask_mod._keep(b, h, i, j, (i, j, spec.m - spec.n))
        keep = mm if keep is None else keep & mm
    bias = None if spec.bias is None else _slice2(spec.bias, i0, i1, j0, j1)
    return keep, bias


def key_padding_keep(xp: Any, spec: MaskSpec, dev: Any, *, method: str) -> Any:
    """The mask as a per-key keep vector ``(..., m)`` for methods that only honour key padding.

    Methods that never form the ``(n, m)`` attention matrix (linear attention, Linformer,
    random features, Nystrom) can drop keys but cannot let each query see a different key set.
    A boolean mask whose query axis has size 1, or ``key_lengths``, is accepted; anything else
    (a per-query mask, an additive mask) raises ``ValueError`` saying why. Causal masks are the
    caller's business (some methods have a prefix-sum form).
    """
    if spec.bias is not None:
        msg = (f"{method} cannot honour an additive (float) mask: it never forms the attention "
               "logits; pass a boolean key-padding mask of shape (..., 1, m) or key_lengths")
        raise ValueError(msg)
    keep = None
    if spec.keep is not None:
        if spec.keep.ndim >= 2 and spec.keep.shape[-2] != 1:
            msg = (f"{method} cannot honour a mask that differs between queries (shape "
                   f"{tuple(spec.keep.shape)}): it never forms the (n, m) attention matrix; only "
                   "key-padding masks of shape (..., 1, m) or key_lengths are supported")
            raise ValueError(msg)
        keep = spec.keep if spec.keep.ndim < 2 else spec.keep[..., 0, :]
        if keep.shape[-1] != spec.m:  # a mask broadcast along the keys (e.g. 0-D): one entry per key
            keep = xp.broadcast_to(keep, (*keep.shape[:-1], spec.m))
    if spec.key_lengths is not None:
        j = xp.arange(spec.m, device=dev)
        pad = j < xp.astype(spec.key_lengths, xp.int64)[..., None]
        keep = pad if keep is None else keep & pad
    return keep
