"""Benchmark: flatcomp_tutorial.sharpness against PyHessian 0.1 and curvlinops on a small trained MLP.

Model: MLP 64-128-128-10 tanh (``make_model("mlp", (64,), 10, width=128, depth=2)``) trained for 300
full-batch GD steps (lr 0.1, MSE) on the 1797 scikit-learn digits (standardised features, one-hot targets);
full batch, float32, CPU. Loss convention everywhere: L = (1/n) Σ_i ½ ||f(x_i) − y_i||²; the baselines get a
criterion with exactly that scale (checked: all report the same λ_max).

Targets: λ_max to 1e-3 relative error (against a tight Lanczos reference) and Tr H from the same number of
Rademacher probes (hence the same standard error), ours at least 2× faster than each baseline; one public HVP at
most 2.5× one full gradient (issue 12; earlier 3×). Run ``python benchmarks/bench_sharpness.py``; ``main(threads)`` returns Markdown.
"""
from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch

from flatcomp_tutorial import curvature as C
from flatcomp_tutorial import sharpness as S
from flatcomp_tutorial.models import make_model

REPEATS = 3
HVP_ROUNDS = 15  # alternating rounds for the single-product rows (each: a block of 8 calls of every variant)
PROBES = 100
CV_PROBES = 8
# eigsh settings (ncv, tol) tried for the top eigenvalue; the cheapest that meets 1e-3 relative error is timed
EIG_SETTINGS = [(ncv, tol) for ncv in (4, 6, 8, 12, 20) for tol in (1e-1, 1e-2, 1e-3)]
HVP_TARGET = 2.5  # issue 12: one public Hessian-vector product at most 2.5× one full-batch gradient


def _timed_together(fns: dict, rounds: int, block: int = 8) -> dict:
    """Median seconds per call of each of ``fns`` ({name: callable}). Each of ``rounds`` rounds runs every function
    in turn as a block of ``block`` consecutive calls, the first of which (a warm-up after the previous function)
    is discarded. Blocks keep each function in its steady state, as in real use; alternating them over the rounds
    exposes all functions to the same drift in machine load, so their ratios are side-by-side measurements."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            for j in range(block):
                t = time.perf_counter()
                f()
                if j:
                    times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _timed(fn, repeats=REPEATS, warmup=True):
    """(median seconds, last result) over ``repeats`` calls after one warm-up call."""
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def train_full_batch(model, x, y, steps: int, lr: float = 0.1):
    """``steps`` full-batch GD steps on (1/n) Σ ½||f − y||²: ``(model in eval mode, x, y, final training loss)``."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((model(x) - y) ** 2).sum() / x.shape[0]
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y, float(loss.detach())


def _data_and_model(seed=0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    x = torch.tensor(x)
    y = torch.nn.functional.one_hot(torch.tensor(digits.target), 10).float()
    model = make_model("mlp", (64,), 10, width=128, depth=2, seed=seed)
    return train_full_batch(model, x, y, 300)


def _half_sse(n):
    def criterion(out, target):
        return 0.5 * ((out - target) ** 2).sum() / n
    return criterion


class _HalfSSE(torch.nn.Module):
    """curvlinops wants an nn.Module loss with a ``reduction``; 'sum' = no extra normalisation (one batch)."""

    reduction = "sum"

    def __init__(self, n):
        super().__init__()
        self.n = n

    def forward(self, out, target):
        return 0.5 * ((out - target) ** 2).sum() / self.n


def _row(name, t, matvecs, value, extra=""):
    mv = "" if matvecs is None else str(matvecs)
    return f"| {name} | {t * 1e3:.1f} | {mv} | {value} | {extra} |"


def curvlinops_top_eigenvalue(make_op, P: int, ncv, tol, limit_blas: bool = False) -> tuple[float, int]:
    """(λ_max, products) from curvlinops' operator (``make_op()``) and SciPy's eigsh, start vector N(0, I) seed 0;
    ``limit_blas``: ARPACK's BLAS on one thread (the fix our top_hessian_eigenvalues applies)."""
    from scipy.sparse.linalg import LinearOperator, eigsh
    from threadpoolctl import threadpool_limits

    A = make_op().to_scipy()
    count = [0]

    def mv(w):
        count[0] += 1
        return A @ w

    L = LinearOperator(A.shape, matvec=mv, dtype=np.float32)
    v0 = np.random.default_rng(0).standard_normal(P)
    with threadpool_limits(limits=1 if limit_blas else None, user_api="blas"):
        val = eigsh(L, k=1, which="LA", tol=tol, ncv=ncv, v0=v0)[0][0]
    return float(val), count[0]


def main(threads: int = 2) -> str:
    torch.set_num_threads(threads)
    model, x, y, final_loss = _data_and_model()
    n = x.shape[0]
    P = sum(p.numel() for p in model.parameters())
    lines = [
        "## Sharpness: speed against PyHessian and curvlinops",
        "",
        f"MLP 64-128-128-10 tanh, P = {P}, digits n = {n}, float32, CPU, {threads} threads, after 300 GD steps "
        f"(training loss {final_loss:.4f}); L = (1/n) Σ ½||f − y||². Median of {REPEATS} runs after a warm-up.",
        "",
    ]

    # ------------------------------------------------------------------ HVP versus gradient
    params = list(model.parameters())

    def gradient():
        loss = 0.5 * ((model(x) - y) ** 2).sum() / n
        return torch.autograd.grad(loss, params)

    v = torch.randn(P, generator=torch.Generator().manual_seed(0))
    v_parts = [t.reshape(p.shape) for t, p in zip(v.split([p.numel() for p in params]), params)]

    def plain_double_backward():
        loss = 0.5 * ((model(x) - y) ** 2).sum() / n
        g = torch.autograd.grad(loss, params, create_graph=True)
        return torch.autograd.grad(g, params, grad_outputs=v_parts)

    op = C.hessian_operator(model, x, y).matmat  # cached gradient graph, as inside the estimators
    fwd = C.hessian_operator(model, x, y, method="forward-over-reverse").matmat
    together = _timed_together({"grad": gradient, "hvp": lambda: S.hvp(model, x, y, v), "plain": plain_double_backward,
                                "cached": lambda: op(v[None]), "fwd": lambda: fwd(v[None])}, HVP_ROUNDS)
    t_grad, t_hvp, t_plain, t_cached, t_fwd = (together[k] for k in ("grad", "hvp", "plain", "cached", "fwd"))
    V = torch.randn(PROBES // 4, P)
    t_batch, _ = _timed(lambda: op(V), 3)
    lines += [
        "### One Hessian-vector product versus one full-batch gradient",
        "",
        f"Medians per call over {HVP_ROUNDS} alternating rounds; in each round every single-product variant runs a "
        "block of 8 calls (the first discarded as warm-up), so all rows see the same drift in machine load; the "
        "batched row is timed separately.",
        "",
        "| product | ms | × gradient |",
        "|---|---|---|",
        f"| gradient (autograd) | {t_grad * 1e3:.1f} | 1.00 |",
        f"| `hvp()` public call: double backward, graph built each call | {t_hvp * 1e3:.1f} | {t_hvp / t_grad:.2f} |",
        f"| bare double backward on the module (no input checks, no flattening) | {t_plain * 1e3:.1f} | "
        f"{t_plain / t_grad:.2f} |",
        f"| forward-over-reverse `jvp(grad)` (torch.func) | {t_fwd * 1e3:.1f} | {t_fwd / t_grad:.2f} |",
        f"| inside estimators: cached gradient graph, one vector | {t_cached * 1e3:.1f} | {t_cached / t_grad:.2f} |",
        f"| inside estimators: cached graph, {V.shape[0]} vectors batched, per vector | "
        f"{t_batch / V.shape[0] * 1e3:.1f} | {t_batch / V.shape[0] / t_grad:.2f} |",
        "",
        f"Target one public HVP ≤ {HVP_TARGET:g}× one gradient: "
        f"{'met' if t_hvp <= HVP_TARGET * t_grad else 'MISSED'} ({t_hvp / t_grad:.2f}× for the public call; "
        f"{'met' if t_cached <= HVP_TARGET * t_grad else 'missed'} inside the estimators, "
        f"{t_cached / t_grad:.2f}×, where the gradient graph is built once and reused by every product). "
        "Why about 3× and not Pearlmutter's 2×: counting matrix products, a dense layer costs 3 in a gradient "
        "(forward, two backward) and 9 in an exact HVP (the R-op doubles each of them and adds the forward; double "
        "backward needs as many); without the input-side products of the first layer this MLP needs 22 against 8, a "
        "floor of 2.75× before elementwise work, above the 2.5× target, so a one-shot HVP that builds its own "
        "gradient graph cannot meet it on this network. The bare double-backward row (no package code around it) shows how "
        "much of the public call is the method itself; the rest is input validation (finiteness and shape checks) "
        "and flattening.",
        "",
    ]

    # ------------------------------------------------------------------ λ_max
    ref = float(S.top_hessian_eigenvalues(model, x, y, k=1, tol=1e-10, ncv=40)[0])
    lam_rows = ["| method | ms | HVPs | λ_max | rel. error |", "|---|---|---|---|---|"]


    def cheapest(run):
        """The eigsh setting (ncv, tol) with the fewest HVPs whose answer is within 1e-3 of the reference. Both
        eigsh users (ours, curvlinops) get this search, as PyHessian gets its tolerance tightened until it meets the
        target, so no method is charged for surplus accuracy. ``run(ncv, tol) -> (value, matvecs)``."""
        ok = []
        for ncv, tol in EIG_SETTINGS:
            val, mv = run(ncv, tol)
            if abs(float(val) - ref) / ref <= 1e-3:
                ok.append((mv, ncv, tol))
        return min(ok)[1:] if ok else EIG_SETTINGS[-1]

    def run_ours(ncv, tol):
        pairs = S.top_hessian_eigenpairs(model, x, y, k=1, tol=tol, ncv=ncv)
        return float(pairs.values[0]), pairs.matvecs

    ncv_ours, tol_ours = cheapest(run_ours)
    t_ours, (lam, mv_ours) = _timed(lambda: run_ours(ncv_ours, tol_ours))
    lam_rows.append(_row(f"ours: Lanczos (eigsh), ncv {ncv_ours}, tol {tol_ours:g}", t_ours, mv_ours, f"{lam:.5f}",
                         f"{abs(lam - ref) / ref:.1e}"))
    ratios_eig, ratios_tr, notes = {}, {}, []

    # PyHessian (power iteration; its tol is a relative-change stopping rule, so we tighten it until the
    # answer is within 1e-3 of the reference and time that setting)
    try:
        import sys

        import pyhessian  # noqa: F401  (the package re-exports the class under the module's name)
        ph = sys.modules["pyhessian.hessian"]

        counter = [0]
        original = ph.hessian_vector_product

        def counted(*a, **k):
            counter[0] += 1
            return original(*a, **k)

        ph.hessian_vector_product = counted
        try:
            crit = _half_sse(n)
            for tol in (1e-3, 1e-4, 1e-5, 1e-6):
                def run_ph(tol=tol):
                    m = copy.deepcopy(model)
                    torch.manual_seed(0)
                    return ph.hessian(m, crit, data=(x, y), cuda=False).eigenvalues(maxIter=1000, tol=tol,
                                                                                    top_n=1)[0][0]
                counter[0] = 0
                lam_ph = run_ph()
                mv_ph = counter[0]
                if abs(lam_ph - ref) / ref <= 1e-3:
                    break
            t_ph, lam_ph = _timed(run_ph)
            lam_rows.append(_row(f"PyHessian 0.1: power iteration, tol {tol:g}", t_ph, mv_ph, f"{lam_ph:.5f}",
                                 f"{abs(lam_ph - ref) / ref:.1e}"))
            ratios_eig["PyHessian"] = t_ph / t_ours

            def run_ph_trace():
                m = copy.deepcopy(model)
                torch.manual_seed(0)
                return ph.hessian(m, crit, data=(x, y), cuda=False).trace(maxIter=PROBES, tol=0.0)

            counter[0] = 0
            t_ph_tr, samples_ph = _timed(run_ph_trace, warmup=False)
        finally:
            ph.hessian_vector_product = original
        tr_ph = (float(np.mean(samples_ph)), float(np.std(samples_ph, ddof=1) / np.sqrt(len(samples_ph))),
                 len(samples_ph), t_ph_tr)
    except Exception as err:  # pragma: no cover - depends on the environment
        notes.append(f"PyHessian could not be run: `{type(err).__name__}: {err}`")
        tr_ph = None

    # curvlinops (Lanczos through its scipy adapter, and its Hutchinson estimator)
    try:
        from curvlinops import HessianLinearOperator, hutchinson_trace

        def make_op():
            return HessianLinearOperator(model, _HalfSSE(n), params, [(x, y)], check_deterministic=False)

        def run_cl(ncv=None, tol=None, limit_blas=False):
            return curvlinops_top_eigenvalue(make_op, P, ncv, tol, limit_blas)

        ncv_cl, tol_cl = cheapest(run_cl)
        t_cl, (lam_cl, mv_cl) = _timed(lambda: run_cl(ncv_cl, tol_cl))
        lam_rows.append(_row(f"curvlinops 3: HessianLinearOperator + eigsh, ncv {ncv_cl}, tol {tol_cl:g}", t_cl, mv_cl,
                             f"{lam_cl:.5f}",
                             f"{abs(lam_cl - ref) / ref:.1e}"))
        ratios_eig["curvlinops (as shipped)"] = t_cl / t_ours
        t_clb, (lam_clb, mv_clb) = _timed(lambda: run_cl(ncv_cl, tol_cl, limit_blas=True))
        lam_rows.append(_row("curvlinops 3, same, with our fix (eigsh's BLAS limited to 1 thread)", t_clb, mv_clb,
                             f"{lam_clb:.5f}", f"{abs(lam_clb - ref) / ref:.1e}"))
        ratios_eig["curvlinops (with our BLAS fix)"] = t_clb / t_ours

        def run_cl_trace():
            torch.manual_seed(0)
            return float(hutchinson_trace(make_op(), PROBES))

        t_cl_tr, tr_cl_val = _timed(run_cl_trace, warmup=False)
        tr_cl = (tr_cl_val, t_cl_tr)
    except Exception as err:  # pragma: no cover - depends on the environment
        notes.append(f"curvlinops could not be run: `{type(err).__name__}: {err}`")
        tr_cl = None

    lines += ["### Top eigenvalue λ_max (target: relative error ≤ 1e-3)", "",
              f"Reference λ_max = {ref:.6f} (Lanczos, tol 1e-10).", ""] + lam_rows + [""]

    # ------------------------------------------------------------------ trace
    t_tr, est = _timed(lambda: S.hessian_trace(model, x, y, probes=PROBES, method="hutchinson"), warmup=False)
    t_hpp, est_pp = _timed(lambda: S.hessian_trace(model, x, y, probes=PROBES, method="hutch++"), 1, warmup=False)
    t_cv, est_cv = _timed(lambda: S.hessian_trace(model, x, y, probes=CV_PROBES, method="gn-control"))
    t_gn, trG = _timed(lambda: S.gauss_newton_trace(model, x))
    tr_rows = ["| method | ms | HVPs | Tr H | stderr |", "|---|---|---|---|---|",
               _row("ours: Hutchinson, batched probes", t_tr, est.matvecs, f"{est.mean:.3f}", f"{est.stderr:.3f}"),
               _row("ours: Hutch++ (same budget)", t_hpp, est_pp.matvecs, f"{est_pp.mean:.3f}", f"{est_pp.stderr:.3f}"),
               _row(f"ours: exact Tr G + Hutchinson on H − G ('gn-control'), {CV_PROBES} probes", t_cv,
                    est_cv.matvecs, f"{est_cv.mean:.3f}", f"{est_cv.stderr:.3f}")]
    # the baselines use PROBES Rademacher probes: their standard error is that of our Hutchinson row
    same_error = est_cv.stderr <= est.stderr
    t_best = t_cv if same_error else t_tr
    if tr_ph is not None:
        tr_rows.append(_row("PyHessian 0.1: trace (Hutchinson)", tr_ph[3], tr_ph[2], f"{tr_ph[0]:.3f}",
                            f"{tr_ph[1]:.3f}"))
        ratios_tr["PyHessian"] = tr_ph[3] / t_best
        ratios_tr["PyHessian (ours plain Hutchinson)"] = tr_ph[3] / t_tr
    if tr_cl is not None:
        tr_rows.append(_row("curvlinops 3: hutchinson_trace", tr_cl[1], PROBES, f"{tr_cl[0]:.3f}",
                            f"≈ {est.stderr:.3f} (same probes; not reported)"))
        ratios_tr["curvlinops"] = tr_cl[1] / t_best
        ratios_tr["curvlinops (ours plain Hutchinson)"] = tr_cl[1] / t_tr
    tr_rows.append(_row("ours: exact Tr G (Gauss–Newton part, no probes)", t_gn, None, f"{trG:.3f}", "0"))
    lines += [f"### Trace Tr H: baselines with {PROBES} Rademacher probes; ours at that standard error or below",
              "", "The control variate needs the exact Tr G (in its time) and 2 products per probe; with "
              f"{CV_PROBES} probes its standard error is {'at most' if same_error else 'ABOVE'} that of "
              f"{PROBES}-probe Hutchinson, so the speed-up rows without a qualifier use it.", ""] + tr_rows + [""]

    # ------------------------------------------------------------------ verdict
    lines += ["### Speed-ups (baseline time / our time; target ≥ 2)", "", "| task | baseline | speed-up | target |",
              "|---|---|---|---|"]
    for task, ratios in (("λ_max", ratios_eig), ("Tr H", ratios_tr)):
        for name, r in ratios.items():
            verdict = "met" if r >= 2 else f"MISSED by {2 / r:.2f}×"
            lines.append(f"| {task} | {name} | {r:.2f}× | {verdict} |")
    lines.append("")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main())
