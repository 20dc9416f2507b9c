"""Float64 references with float32 error bounds, for kernels whose summation order is not
the test's to fix (our C kernels on AVX2 or AVX-512, BLAS, oneDNN, torch's SDPA).

A float32 kernel's result differs from the exact one by its rounding errors, and how much
depends on the machine's summation order. So a test computes the reference in float64
(its own error, about 1e-16 relative, is negligible) and allows, element by element, a
bound derived from the computation -- never a fixed number:

- a dot product of length n (any summation order, with or without FMA; Higham, *Accuracy
  and Stability of Numerical Algorithms*, 3.1):

      |fl(x . w) - x . w| <= gamma(n) * (|x| . |w|),   u = 2**-24 (float32's unit roundoff)

  where `gamma(n)` is the smaller of the rigorous `n*u / (1 - n*u)` and Higham & Mary's
  probabilistic `exp(LAMBDA * sqrt(n) * u + n * u**2 / (1 - u)) - 1` (SIAM J. Sci. Comput.
  41(5), 2019; it fails with probability below `2n * exp(-LAMBDA**2 / 2)` per element,
  about 1e-11 for n = 576). `|x| . |w|` is computed in float64.
- everything else by first-order propagation through the ops, in float64, on absolute
  values: each value carries an error bound (`Approx`); an op adds its own rounding (worst
  case, as above) and passes its inputs' bounds on through its derivative in absolute
  value -- where it sums inherited errors over an index (a matmul, the norm's mean, the
  attention's sums) they add in quadrature, sqrt(sum (w_i e_i)**2): rounding errors of
  different earlier sums are independent and zero-mean (added worst case, the bound on
  the tiny 2-layer test model's logits would be ~1e5 instead of ~0.05).
  Second-order terms (products of two bounds, ~u**2) are dropped.

These bounds are far above the typical error (10 to 300x for a kernel, ~5000x for the
tiny model's logits: they hold for every order and every input) but below what a wrong
kernel gives (a dropped term, a wrong row or head, a wrong
scale): test_native.py lists the breaks they were checked against.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

U = 2.0 ** -24
"""float32's unit roundoff."""

LAMBDA = 8.0
"""Confidence of the probabilistic dot-product bound (see `gamma`)."""

EXP_ULPS = 4.0
"""Relative error of a float32 `exp`, in units of u: Cephes' polynomial in the native
kernels and Sleef's in torch are about 1 ulp (2u); 4u with margin."""

SILU_SLOPE = 1.1
"""The largest |silu'(x)| (1.0998 at x = 2.4): how far an error in silu's input moves its output."""


class Approx(NamedTuple):
    """A float64 reference value and the bound on a float32 computation's distance from it."""

    value: torch.Tensor
    error: torch.Tensor


def gamma(n: int) -> float:
    """The relative bound of an n-term float32 dot product, against `|x| . |w|`."""
    rigorous = n * U / (1 - n * U)
    probabilistic = math.expm1(LAMBDA * math.sqrt(n) * U + n * U * U / (1 - U))
    return min(rigorous, probabilistic)


def exact(x: torch.Tensor) -> Approx:
    """A float32 input: exact in float64."""
    value = _f64(x)
    return Approx(value, torch.zeros_like(value))


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double()


def _approx(x: torch.Tensor | Approx) -> Approx:
    return x if isinstance(x, Approx) else exact(x)


def _quadrature(error: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """The bound of `(x + error) @ matrix - x @ matrix` for errors inherited from earlier ops:
    independent and zero-mean across the summed index, they add in quadrature."""
    return (error.pow(2) @ matrix.pow(2)).sqrt()


def linear(x: torch.Tensor | Approx, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Approx:
    """`x @ weight.T + bias`: the dot-product bound (n + 1 terms with a bias) plus the
    input's bound through `|weight|`."""
    x = _approx(x)
    w = _f64(weight)
    value = x.value @ w.T
    magnitude = x.value.abs() @ w.abs().T
    n = weight.shape[-1]
    if bias is not None:
        value = value + _f64(bias)
        magnitude = magnitude + _f64(bias).abs()
        n += 1
    return Approx(value, gamma(n) * magnitude + _quadrature(x.error, w.T))


def silu(x: torch.Tensor | Approx) -> Approx:
    """`x / (1 + exp(-x))`: exp's error, the add and the divide (relative), plus the input's
    bound times silu's largest slope."""
    x = _approx(x)
    value = torch.nn.functional.silu(x.value)
    return Approx(value, (EXP_ULPS + 2) * U * value.abs() + SILU_SLOPE * x.error)


def mul(a: Approx, b: Approx) -> Approx:
    value = a.value * b.value
    return Approx(value, a.value.abs() * b.error + b.value.abs() * a.error + U * value.abs())


def add(a: Approx, b: Approx) -> Approx:
    value = a.value + b.value
    return Approx(value, a.error + b.error + U * value.abs())


def gate_up_silu(x: torch.Tensor | Approx, gate: torch.Tensor, up: torch.Tensor) -> Approx:
    """A Llama MLP's first half, `silu(x @ gate.T) * (x @ up.T)`."""
    return mul(silu(linear(x, gate)), linear(x, up))


def rms_norm(x: torch.Tensor | Approx, weight: torch.Tensor, eps: float) -> Approx:
    """`weight * x / sqrt(mean(x**2) + eps)`.

    Rounding: the sum of squares is a dot product with |x|.|x| = sum(x**2), so relative
    gamma(n); the divide by n and the add of eps (2u), halved by the square root; the root
    and the reciprocal (2u); the two products (2u): relative `gamma(n) / 2 + 5u` of |y|.
    Input errors: dy_i/dx_j = w_i r (delta_ij - x_i x_j / (n ms)), ms = mean(x**2) + eps.
    """
    x = _approx(x)
    w = _f64(weight)
    n = x.value.shape[-1]
    ms = x.value.pow(2).mean(-1, keepdim=True) + eps
    r = ms.rsqrt()
    value = w * (x.value * r)
    inherited = (x.value * x.error).pow(2).sum(-1, keepdim=True).sqrt()
    through = (w.abs() * r) * (x.error + x.value.abs() * inherited / (n * ms))
    return Approx(value, (gamma(n) / 2 + 5 * U) * value.abs() + through)


def attention(query: torch.Tensor | Approx, key: torch.Tensor | Approx, value: torch.Tensor | Approx,
              mask: torch.Tensor | None, scale: float) -> Approx:
    """`softmax(query @ key.T * scale + mask) @ value`, grouped-query, `[batch, heads, new, dim]`
    (key and value `[batch, kv_heads, slots, dim]`; an additive mask `[batch, 1, new, slots]`).

    The scores z: a dot product of D terms plus the scaling (gamma(D + 1) of scale |q|.|k|),
    the mask's add (u |z|), the subtraction of the row's maximum m (u |z - m|) and the
    input bounds. The probabilities p_j = e_j / sum(e): each e_j is off by the relative
    error eps_j = (z's bound)_j + the exp's own; so p_j by `eps_j + sum_k p_k eps_k` plus the
    sum of S positive terms (gamma(S)) and the reciprocal and product (2u). The output
    sum_j p_j v_j: `sum_j p_j |delta_j| |v_j| + sum_j p_j (v's bound)_j + gamma(S) sum_j p_j |v_j|`.
    Masked slots have p_j = 0 and add nothing.
    """
    q, k, v = _approx(query), _approx(key), _approx(value)
    group = q.value.shape[1] // k.value.shape[1]

    def repeat(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(group, dim=1)

    k_value, k_error, v_value, v_error = repeat(k.value), repeat(k.error), repeat(v.value), repeat(v.error)
    dim, slots = q.value.shape[-1], k_value.shape[-2]
    z = q.value @ k_value.transpose(-1, -2) * scale
    if mask is not None:
        z = z + _f64(mask)
    top = z.amax(-1, keepdim=True)
    p = torch.softmax(z, -1)
    z_error = scale * (gamma(dim + 1) * (q.value.abs() @ k_value.abs().transpose(-1, -2))
                       + _quadrature(q.error, k_value.transpose(-1, -2))
                       + _quadrature(k_error, q.value.transpose(-1, -2)).transpose(-1, -2))
    z_error = z_error + U * (z.abs() + (z - top).abs())
    exp_error = torch.where(p > 0, z_error + EXP_ULPS * U, 0.0)  # masked slots: no error, not u * 3e38
    relative = exp_error + (p * exp_error).sum(-1, keepdim=True) + gamma(slots) + 2 * U
    out = p @ v_value
    bound = (p * relative) @ v_value.abs() + _quadrature(v_error.transpose(-1, -2), p.transpose(-1, -2)).transpose(-1, -2) \
        + gamma(slots) * (p @ v_value.abs())
    return Approx(out, bound)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(x: Approx, angles: torch.Tensor) -> Approx:
    """`x cos + rotate_half(x) sin` with float32's angles (positions times float32 inverse
    frequencies: off by u |angle|) and cos and sin (a few u): each of cos and sin is off by
    `u |angle| + 2u`; then two products and a sum (gamma(2))."""
    cos, sin = angles.cos(), angles.sin()
    rotated = _rotate_half(x.value)
    value = x.value * cos + rotated * sin
    trig_error = U * angles.abs() + 2 * U
    error = ((x.value.abs() + rotated.abs()) * trig_error + gamma(2) * (x.value.abs() * cos.abs() + rotated.abs() * sin.abs())
             + x.error * cos.abs() + _rotate_half(x.error).abs() * sin.abs())
    return Approx(value, error)


def _heads(x: Approx, head_dim: int) -> Approx:
    """`[batch, tokens, heads * head_dim]` -> `[batch, heads, tokens, head_dim]`."""
    return Approx(*(t.unflatten(-1, (-1, head_dim)).transpose(1, 2) for t in x))


def llama_logits(model, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> Approx:
    """A Llama-family causal LM's logits `[batch, tokens, vocab]` in float64, with the bound
    of a float32 forward (every op above, in the decoder's order; residual adds add u |y|).

    position_ids `[batch, tokens]` (default 0, 1, ...); mask: an additive `[batch, 1,
    tokens, tokens]` mask (default causal). SiLU MLPs and default rotary only.
    """
    config = model.config
    if config.hidden_act != "silu" or getattr(model.model.rotary_emb, "attention_scaling", 1.0) != 1.0:
        raise ValueError("numerics.llama_logits covers SiLU MLPs with default rotary embeddings only")
    batch, tokens = input_ids.shape
    if position_ids is None:
        position_ids = torch.arange(tokens).expand(batch, tokens)
    if mask is None:
        hidden_mask = torch.ones(tokens, tokens, dtype=torch.bool).tril()
        mask = torch.zeros(batch, 1, tokens, tokens).masked_fill_(~hidden_mask, torch.finfo(torch.float32).min)
    inv_freq = _f64(model.model.rotary_emb.inv_freq)
    angles = position_ids.double()[..., None] * inv_freq
    angles = torch.cat([angles, angles], -1)[:, None]  # [batch, 1, tokens, head_dim]
    h = exact(model.model.embed_tokens.weight[input_ids])
    for layer in model.model.layers:
        attn = layer.self_attn
        normed = rms_norm(h, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        q, k, v = (_heads(linear(normed, projection.weight, projection.bias), attn.head_dim)
                   for projection in (attn.q_proj, attn.k_proj, attn.v_proj))
        q, k = _rotary(q, angles), _rotary(k, angles)
        context = attention(q, k, v, mask, attn.scaling)
        context = Approx(*(t.transpose(1, 2).reshape(batch, tokens, -1) for t in context))
        h = add(h, linear(context, attn.o_proj.weight, attn.o_proj.bias))
        normed = rms_norm(h, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
        mlp = layer.mlp
        h = add(h, linear(gate_up_silu(normed, mlp.gate_proj.weight, mlp.up_proj.weight), mlp.down_proj.weight))
    normed = rms_norm(h, model.model.norm.weight, model.model.norm.variance_epsilon)
    return linear(normed, model.lm_head.weight, model.lm_head.bias)


def assert_within(got: torch.Tensor, reference: Approx, what: str = "") -> None:
    """Every element of the float32 `got` within the reference's bound (NaN never is)."""
    assert got.shape == reference.value.shape, (got.shape, reference.value.shape)
    error = (got.double() - reference.value).abs()
    bound = reference.error.expand_as(error)
    outside = ~(error <= bound)
    if outside.any():
        ratio = torch.where(outside, error / bound.clamp_min(1e-300), 0.0)
        worst = tuple(int(i) for i in torch.unravel_index(ratio.argmax(), ratio.shape))
        raise AssertionError(
            f"{what + ': ' if what else ''}{int(outside.sum())} of {error.numel()} elements beyond float32 rounding "
            f"of the float64 reference; worst at {worst}: got {got[worst].item()!r}, float64 "
            f"{reference.value[worst].item()!r}, error {error[worst].item():.3g} > bound {bound[worst].item():.3g}")


def error_ratio(got: torch.Tensor, reference: Approx) -> float:
    """The largest error / bound (below 1 when `assert_within` passes): how tight a bound is."""
    return ((got.double() - reference.value).abs() / reference.error.clamp_min(1e-300)).max().item()
