"""Claims of paper 002 (Yorsh & Kovalenko, "Linear Self-Attention Approximation via Trainable Feedforward
Kernel").

Each check exercises :mod:`refattn.methods.kernels` (``kernel_attention``, ``feature_map``,
``parameter_count``, ``init_params``, ``orthogonality_penalty``, ``cost``); deterministic, tolerances
stated in the evidence; ``ctx.quick`` shrinks the sweeps.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

import refattn
from refattn.methods import kernels as K

from ._verdict import Figure, Meta, claim

U = 2.0**-53
PAPER = "002"


@claim("glu-param", paper=PAPER, source="002 (Yorsh & Kovalenko), 'Gating' paragraph",
       statement="We used the matrices of rank r = n/4 to approximate the gate, reducing the layer "
                 "parametrization by 25%")
def glu_param(ctx):
    ds = [4, 8, 16, 32, 64] if ctx.quick else list(range(4, 1025, 4))
    exact = all(Fraction(K.parameter_count("glu", d) - K.parameter_count("aoglu", d), K.parameter_count("glu", d))
                == Fraction(1, 4) for d in ds)
    d = 64
    glu, aoglu, ffn = (K.parameter_count(k, d) for k in ("glu", "aoglu", "ffn"))
    odd = [(dd, float(Fraction(K.parameter_count("glu", dd) - K.parameter_count("aoglu", dd, rank=dd // 4),
                               K.parameter_count("glu", dd)))) for dd in (6, 10, 30)]
    evidence = (f"refattn.methods.kernels.parameter_count (no biases; the paper's units have none): GLU/OGLU "
                f"2n², AOGLU n² + 2nr = 1.5n² at r = n/4 -- exactly 25% fewer than the GLU/OGLU unit it "
                f"approximates, for every n divisible by 4 in {ds[0]}..{ds[-1]} ({exact}); e.g. n = {d}: {glu} vs "
                f"{aoglu}. The reference matters: relative to the gate W_g alone the saving is 50%, relative to the "
                f"FFN kernel ({ffn}) AOGLU has 50% more. For n not divisible by 4 with r = floor(n/4) the saving is "
                + ", ".join(f"{v:.1%} (n = {dd})" for dd, v in odd) + ".")
    return ("holds" if exact else "fails"), evidence, f"{glu} -> {aoglu} (n = {d}): 25%"


@claim("ffn-pos", paper=PAPER, source="002 (Yorsh & Kovalenko), 'Kernelized Model' and 'Feedforward Kernel'",
       statement="φ is required to be positive to maintain numeric stability; φ(X) = Softplus(XW) (and the "
                 "Softplus-gated GLU output unit) is positive")
def ffn_pos(ctx):
    rs = np.random.default_rng(0)
    trials = 20 if ctx.quick else 400
    kinds = ["ffn", "glu", "oglu", "aoglu", ("glu", "glu"), ("aoglu",) * 3]
    min_den = np.inf
    nonpos = 0
    for t in range(trials):
        kern = kinds[t % len(kinds)]
        scale = 10.0 ** rs.uniform(-3, 1)
        d = 8
        q, k, v = (scale * rs.standard_normal((2, 16, d)) for _ in range(3))
        params = K.init_params(kern, d, rng=int(rs.integers(2**31)), backend=ctx.backend)
        for causal in (False, True):
            _, res = K.forward(*(ctx.asarray(a) for a in (q, k, v)), *params, kernel=kern, causal=causal)
            den = ctx.to_host(res.den1)
            pos = ctx.to_host(res.pos)
            nonpos += int(np.sum(~pos))
            min_den = min(min_den, float(den.min()))
    # the float64 edge: Softplus(x) = log1p(exp(x)) underflows to 0 below about -745
    edge = []
    for x in (-700.0, -745.0, -746.0):
        phi = K.feature_map(ctx.asarray([[x]]), ctx.asarray([[1.0]]), kernel="ffn")
        edge.append((x, float(ctx.to_host(phi)[0, 0])))
    qn = np.full((4, 2), -800.0)
    out = ctx.to_host(K.kernel_attention(ctx.asarray(qn), ctx.asarray(qn), ctx.asarray(np.ones((4, 1))),
                                         ctx.asarray(np.eye(2)), kernel="ffn"))
    ok = nonpos == 0
    evidence = (f"Softplus(x) = log(1 + eˣ) > 0 and sigmoid(x) > 0 for every real x, so every feature of the FFN and "
                f"of the output GLU/OGLU/AOGLU unit is positive and the normaliser φ(q_i)ᵀΣ_j φ(k_j) is a sum of "
                f"positive terms. refattn: {trials} random draws (scales 1e-3..10, every kernel incl. stacks, causal "
                f"and not) -> {nonpos} non-positive normalisers (smallest {min_den:.3g}). In float64 the positivity is "
                f"conditional: Softplus underflows, " + ", ".join(f"Softplus({x:.0f}) = {y:.3g}" for x, y in edge)
                + f", so pre-activations below about −745 (or products of features below 2.2e-308) give φ = 0 and a "
                  f"zero normaliser; refattn then returns zeros with zero gradient (got {np.abs(out).max()} for "
                  f"pre-activations −800), never NaN. Condition: pre-activations above the underflow threshold.")
    return ("holds-conditionally" if ok else "fails"), evidence, \
        f"{nonpos} non-positive normalisers in {2 * trials} runs; Softplus(-746) = {edge[-1][1]:.0g}", \
        Meta(condition="pre-activations above the float64 underflow of Softplus (about -745)")


@claim("glu-double", paper=PAPER, source="002 (Yorsh & Kovalenko), 'GLU Kernel' paragraph",
       statement="GLU requires a doubled parametrization compared to a linear one")
def glu_double(ctx):
    ds = [4, 8, 64] if ctx.quick else list(range(1, 513))
    ok = all(K.parameter_count("glu", d) == 2 * K.parameter_count("ffn", d) for d in ds)
    evidence = (f"parameter_count: GLU (W_f, W_g) = 2 n², the single linear layer W of the FFN kernel = n², ratio "
                f"exactly 2 for n in {ds[0]}..{ds[-1]} ({ok}); the same for rectangular n x m weights (2nm vs nm).")
    return ("holds" if ok else "fails"), evidence, "2n² vs n²"


@claim("aoglu-rhalf", paper=PAPER, source="002 (Yorsh & Kovalenko), AOGLU definition",
       statement="W_g is approximated by two low-rank matrices n x r and r x n where r < n/2 is the approximation "
                 "rank")
def aoglu_rhalf(ctx):
    ds = range(1, 65) if ctx.quick else range(1, 257)
    ok = all((K.parameter_count("aoglu", d, rank=r) < K.parameter_count("glu", d)) == (2 * r < d)
             for d in ds for r in range(1, d + 1))
    evidence = ("AOGLU has n² + 2nr weights against GLU's 2n², fewer iff r < n/2 -- the bound the paper states is "
                f"exactly the break-even rank (checked for every n <= {max(ds)} and every r <= n: {ok}). At r = n/2 "
                "the two are equal; the factorised gate is also rank-deficient for every r < n.")
    return ("holds" if ok else "fails"), evidence, "fewer parameters iff r < n/2"


@claim("kern-factor", paper=PAPER, source="002 (Yorsh & Kovalenko), 'Kernelized Model' equation",
       statement="Att(q_i, K, V) = Σ_j κ(q_i,k_j) v_j / Σ_j' κ(q_i,k_j') ≈ φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / "
                 "(φ(q_i)ᵀ Σ_j φ(k_j)), with κ(q, k) = exp(qᵀk) for a base Transformer")
def kern_factor(ctx):
    rs = np.random.default_rng(1)
    n, d, dv = 12, 8, 4
    worst = 0.0
    for kern in ("ffn", "glu", "aoglu", ("glu", "glu")):
        params = K.init_params(kern, d, rng=2, backend=ctx.backend)
        q, k, v = rs.standard_normal((n, d)), rs.standard_normal((n, d)), rs.standard_normal((n, dv))
        aq, ak, av = (ctx.asarray(a) for a in (q, k, v))
        fq, fk = (ctx.to_host(K.feature_map(a, *params, kernel=kern)) for a in (aq, ak))
        for causal in (False, True):
            kap = fq @ fk.T
            if causal:
                kap = np.tril(kap)
            want = (kap @ v) / kap.sum(-1, keepdims=True)
            got = ctx.to_host(K.kernel_attention(aq, ak, av, *params, kernel=kern, causal=causal))
            gamma = (d + n) * U / (1 - (d + n) * U)
            bound = 4 * gamma * (kap @ np.abs(v)) / kap.sum(-1, keepdims=True)
            worst = max(worst, float(np.max(np.abs(got - want) / bound)))
    evidence = (f"With κ(q, k) = φ(q)ᵀφ(k) the factorised right-hand side is an identity (associativity), not an "
                f"approximation: refattn.kernel_attention (prefix sums / φ(K)ᵀ[V, 1] products) against the explicit "
                f"normalised quadratic form, every kernel, causal and not: worst error {worst:.2f} of the rounding "
                f"bound 4γ_(d+n)(W|V|)/den. The '≈' is the modelling step κ(q, k) = exp(qᵀk) ≈ φ(q)ᵀφ(k); note "
                f"the base Transformer's kernel is exp(qᵀk/√d) (the paper drops the 1/√d).")
    return ("holds" if worst <= 1 else "fails"), evidence, f"error/bound {worst:.2f}"


@claim("kern-on", paper=PAPER, source="002 (Yorsh & Kovalenko), Table 1, 'Complexity' column",
       statement="The GLU / OGLU / AOGLU kernel models have complexity O(CL) in the sequence length L")
def kern_on(ctx):
    d = 64
    ns = 2 ** np.arange(8, 13) if ctx.quick else 2 ** np.arange(8, 17)
    source = "closed forms of refattn.methods.kernels.cost (refattn.cost.measure not available)"
    measure = getattr(refattn.cost, "measure", None)
    if measure is not None:
        rs = np.random.default_rng(3)
        agree = True
        for kern in ("ffn", "glu", "aoglu"):
            params = K.init_params(kern, 8, rng=4)
            q, k, v = (rs.standard_normal((16, 8)) for _ in range(3))
            for causal in (False, True):
                got = measure(K.kernel_attention, q, k, v, *params, kernel=kern, causal=causal, chunk=4)
                want = K.cost(16, 16, 8, 8, kernel=kern, causal=causal, chunk=4)
                agree &= (got.flops, got.transcendentals) == (want.flops, want.transcendentals)
        source = (f"refattn.cost.measure (counted FLOPs {'equal' if agree else 'DIFFER from'} the closed forms at "
                  f"n = 16), extrapolated with the closed forms")
    series, slopes = {}, {}
    for kern in ("ffn", "glu", "aoglu", ("glu", "glu"), ("aoglu",) * 3):
        name = kern if isinstance(kern, str) else f"{len(kern)}x{kern[0]}"
        for causal in (False, True):
            fl = np.array([K.cost(int(n), int(n), d, d, kernel=kern, causal=causal).flops for n in ns], dtype=float)
            key = f"{name}{' causal' if causal else ''}"
            series[key] = fl.tolist()
            slopes[key] = float(np.polyfit(np.log(ns), np.log(fl), 1)[0])
    per_token = {k: v[-1] / ns[-1] for k, v in series.items()}
    ok = all(abs(s - 1) < 0.02 for s in slopes.values())
    evidence = (f"Source: {source}. d = {d} (per-head), n = m over {ns.min()}..{ns.max()}, chunk 128: fitted "
                f"exponents " + ", ".join(f"{k} {v:.3f}" for k, v in slopes.items())
                + ". The constant C (FLOPs per token at the largest n): "
                + ", ".join(f"{k} {v:.3g}" for k, v in per_token.items())
                + " -- O(d² + d·dv) per token for the feature maps and the d x dv state; the causal prefix sums add "
                  "O(chunk·(d + dv)) per token.")
    first = np.exp(np.mean(np.log([v[0] for v in series.values()])))  # through the middle of the series
    fig = Figure("Trainable kernels: forward FLOPs vs n (d = 64)", "n", "FLOPs", [float(n) for n in ns], series,
                 lines={"∝ n (the O(CL) claim)": [float(first * n / ns[0]) for n in ns]}, loglog=True)
    key = f"FLOPs ~ n^{min(slopes.values()):.3f}..n^{max(slopes.values()):.3f}"
    agree = measure is None or "equal" in source
    return (("holds" if ok else "fails") if agree else "not-checkable"), evidence, key, fig


@claim("oglu-init", paper=PAPER, source="002 (Yorsh & Kovalenko), 'Feedforward Kernel' (following Jia et al.)",
       statement="Orthogonality of W_f is forced via orthogonal initialization and regularization "
                 "‖W_fᵀW_f − I‖ (OGLU)")
def oglu_init(ctx):
    ds = [4, 16, 64] if ctx.quick else [4, 8, 16, 32, 64, 128, 256]
    worst = 0.0
    for d in ds:
        w = K.init_params("oglu", d, rng=d, backend=ctx.backend)[0]
        pen = float(ctx.to_host(K.orthogonality_penalty(w)))
        worst = max(worst, pen / (d**2 * (8 * d * U) ** 2))
    h2 = np.array([[1.0, 1.0], [1.0, -1.0]])
    h8 = np.kron(np.kron(h2, h2), h2) / np.sqrt(8)
    exact = float(ctx.to_host(K.orthogonality_penalty(ctx.asarray(np.kron(h2, h2) / 2))))
    g = ctx.to_host(refattn.vjp(K.orthogonality_penalty, ctx.asarray(h8))[1](ctx.asarray(1.0)).dw)
    evidence = (f"refattn.methods.kernels.init_params draws W_f Haar-orthogonal (refattn.random.orthogonal, sign-fixed "
                f"QR): the regulariser ‖W_fᵀW_f − I‖_F² is at most {worst:.2g} of the rounding bound d²(8du)² for d in "
                f"{ds}; it is exactly 0 for exactly representable orthogonal matrices (H₄/2: {exact}) and its "
                f"gradient 4W(WᵀW − I) vanishes at orthogonal W (max |grad| at H₈/√8: {np.abs(g).max():.1e}). The "
                f"paper does not state the norm or the weight of the regulariser; refattn uses the squared Frobenius "
                f"norm.")
    return ("holds" if worst <= 1 and exact == 0.0 else "fails"), evidence, f"penalty/bound {worst:.2g}"


@claim("glu-stack10", paper=PAPER, source="002 (Yorsh & Kovalenko), 'Gating' paragraph",
       statement="The doubled parametrization will not allow stacking more than two [OGLU] units without going "
                 "beyond the 10% of additional parameters; approximating the gate allows stacking more units")
def glu_stack10(ctx):
    d = 64
    per = {k: K.parameter_count((k,) * s, d) for k in ("glu", "aoglu") for s in (1,)}
    g2, g3 = K.parameter_count(("oglu",) * 2, d), K.parameter_count(("oglu",) * 3, d)
    a3 = K.parameter_count(("aoglu",) * 3, d)
    evidence = (f"Per head and layer at head dimension n = {d}: one OGLU unit {per['glu']} weights, two {g2}, three "
                f"{g3}; three AOGLU (r = n/4) {a3}. The statement is true iff the model's parameter budget P (10% of "
                f"it) satisfies 2·{per['glu']}·h·l <= 0.1·P < 3·{per['glu']}·h·l for h heads and l layers, and three "
                f"AOGLU units fit iff 0.1·P >= {a3}·h·l (more than two OGLU units: {a3} > {g2}). The paper gives "
                f"neither the model size nor h, l for its LRA runs, so the claim cannot be checked from the paper.")
    return "not-checkable", evidence, f"2 OGLU {g2}, 3 OGLU {g3}, 3 AOGLU {a3} per head-layer"


@claim("aoglu-cost", paper=PAPER, source="002 (Yorsh & Kovalenko), 'Gating' paragraph and Table 1",
       statement="stacking approximated-gate units (3 x AOGLU) brings no advantage with the higher computational "
                 "costs")
def aoglu_cost(ctx):
    """Counted forward FLOPs (refattn.cost.measure of kernel_attention) of every kernel of Table 1 at the
    paper's head dimension (n = 64 per head) and L = 1024 tokens: is 3 x AOGLU more expensive than each?"""
    d, n_tok = 64, 256 if ctx.quick else 1024
    rs = np.random.default_rng(5)
    q, k, v = (0.1 * rs.standard_normal((n_tok, d)) for _ in range(3))
    kinds = {"linear (FFN)": "ffn", "1xGLU": "glu", "2xGLU": ("glu",) * 2, "3xGLU": ("glu",) * 3,
             "1xOGLU": "oglu", "2xOGLU": ("oglu",) * 2, "3xAOGLU": ("aoglu",) * 3}
    flops = {}
    for name, kern in kinds.items():
        params = K.init_params(kern, d, rng=6)
        flops[name] = refattn.cost.measure(K.kernel_attention, q, k, v, *params, kernel=kern).flops
    a3 = flops["3xAOGLU"]
    cheaper = [nm for nm, f in flops.items() if nm != "3xAOGLU" and f < a3]
    dearer = [nm for nm, f in flops.items() if nm != "3xAOGLU" and f >= a3]
    evidence = (f"Counted forward FLOPs, d = {d} per head, L = {n_tok}: "
                + ", ".join(f"{nm} {f:.4g}" for nm, f in flops.items())
                + f". 3xAOGLU costs more than {', '.join(cheaper) or 'none'}"
                + (f" and less than {', '.join(dearer)}" if dearer else "")
                + " (per token and unit: W_f n^2 plus the low-rank gate 2 n r = n^2/2 multiply-adds, 1.5 n^2; three "
                  "units 4.5 n^2 against 2 x OGLU's 4 n^2 and 3 x GLU's 6 n^2). 'Higher' than what the paper does not "
                  "say; against the 1- and 2-unit models it holds.")
    status = "holds" if not dearer else ("holds-conditionally" if cheaper else "fails")
    return status, evidence, f"3xAOGLU {a3 / flops['2xOGLU']:.3f}x 2xOGLU, {a3 / flops['3xGLU']:.3f}x 3xGLU FLOPs", \
        Meta(condition="compared with the 1- and 2-unit kernels (" + ", ".join(cheaper) + "); 3xGLU costs more")
