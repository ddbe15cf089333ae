"""Regression references: the gradient-flow limit of diagonal (ODN) networks by the mirror map.

Setting (Yun, Krishnan & Mobahi, ICLR 2021; Woodworth et al., COLT 2020). A network that is
diagonal in a transformed input space predicts f(x) = <S x, rho>, rho_j = prod_l a_lj, trained by gradient
flow on the squared loss. For the loss normalisation L = (1/2n) sum_i (f(x_i) - y_i)^2 the residual
derivative is r = (f(X) - y)/n and

    da_lj/dt = -(prod_{k != l} a_kj) g_j,   g = S X^T r.

With z_j(t) = -int_0^t g_j, each coordinate solves the autonomous ODE  da_l/dz = prod_{k != l} a_k  from a(0),
so rho_j(t) = Phi_j(z_j(t)) with Phi_j increasing, and z = S X^T lam with lam = -int r. If the flow reaches
zero loss, the limit is rho = Phi(S X^T lam) with X S^T Phi(S X^T lam) = y. Any other loss normalisation
(sum instead of mean, no 1/2) or positive time reparametrisation only rescales lam, so the limit is the same.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.integrate
from jaxtyping import ArrayLike, Float

from .._checks import as_choice, as_int, as_positive_float, as_real_matrix, as_transform, as_vector

_BLOWUP = 1e50  # |a_lj| beyond this counts as the finite-z blow-up of the ODE (outside Phi_j's domain)
_METHODS = ("auto", "ode")


class InterpolationLimit(NamedTuple):
    """The mirror-map limit of gradient flow on the squared loss (see `interpolation_limit`).

    Fields: rho (m,) transformed coordinates; beta (d,) = S^T rho, the input-space predictor; lam (n,) the
    dual variable (z = S X^T lam); potential = sum_j psi_j(rho_j), the value of the Bregman potential the limit
    minimises among interpolators (psi_j' = Phi_j^{-1}, psi_j >= 0, psi_j(rho_j(0)) = 0); residual
    = ||X beta - y||_2 / ||y||_2; iterations (Newton steps).
    """

    rho: Float[np.ndarray, " m"]
    beta: Float[np.ndarray, " d"]
    lam: Float[np.ndarray, " n"]
    potential: float
    residual: float
    iterations: int


def _as_init(a0, m: int | None = None) -> np.ndarray:
    a0 = np.asarray(a0)
    if a0.ndim != 2:
        raise ValueError(f"a0 must be a real array of shape (L, m) (layers x coordinates); got shape {a0.shape}.")
    if a0.shape[0] < 2:
        raise ValueError(f"a0 must have L >= 2 rows (the depth); got L = {a0.shape[0]}.")
    if m is not None and a0.shape[1] != m:
        raise ValueError(f"a0 must have shape (L, {m}) (one column per coordinate of rho); got shape {a0.shape}.")
    if np.iscomplexobj(a0) or not np.issubdtype(a0.dtype, np.number):
        raise TypeError(f"a0 must be real-valued; got dtype {a0.dtype}.")
    a0 = a0.astype(np.float64)
    if not np.all(np.isfinite(a0)):
        raise ValueError("a0 contains non-finite values (nan or inf).")
    return a0


def _others_product(a: np.ndarray) -> np.ndarray:
    """(L, g) -> (L, g): prod_{k != l} a_k, without dividing (a may contain zeros)."""
    ones = np.ones((1,) + a.shape[1:])
    before = np.cumprod(np.concatenate([ones, a[:-1]]), axis=0)
    after = np.cumprod(np.concatenate([ones, a[:0:-1]]), axis=0)[::-1]
    return before * after


def _phi_ode(a0: np.ndarray, z: np.ndarray, rtol: float, bound: float):
    """Integrate da_l/ds = z prod_{k != l} a_k, dw/ds = z prod_k a_k over s in [0, 1] for all columns at once.

    Returns ((Phi(z), Phi'(z), psi*(z)), None) with Phi = prod a(1), Phi' = sum_l (prod_{k != l} a_k)^2 and
    psi* = w(1) = int_0^z Phi; or (None, (j, z_j*)) if some |a_lj| exceeds `bound` before s = 1 (z outside the
    domain, or beyond the region of interest), where z_j* = s* z_j is where coordinate j crossed it.
    A cheap probe at rtol 1e-5 detects the blow-up first (creeping up to a pole at rtol 1e-13 costs thousands
    of steps); then DOP853 at `rtol` (default 1e-13): Phi accurate to ~1e-12 relative (checked against the
    closed forms).
    """
    L, g = a0.shape
    scale = np.max(np.abs(a0), axis=0)

    def rhs(_s, state):
        a = state[: L * g].reshape(L, g)
        others = _others_product(a)
        return np.concatenate([(z * others).ravel(), z * np.prod(a, axis=0)])

    def blowup(_s, state):
        return bound - np.max(np.abs(state[: L * g]))

    blowup.terminal = True
    sol = None
    for tol in (1e-5, rtol):
        atol = np.concatenate([np.tile(1e-3 * tol * scale, L), 1e-3 * tol * scale**L])
        with np.errstate(over="ignore", invalid="ignore"):
            sol = scipy.integrate.solve_ivp(
                rhs, (0.0, 1.0), np.concatenate([a0.ravel(), np.zeros(g)]), method="DOP853",
                rtol=tol, atol=atol, events=blowup,
            )
        if sol.status == 1:
            a_ev = np.abs(sol.y_events[0][0][: L * g].reshape(L, g))
            j = int(np.argmax(np.max(a_ev, axis=0)))
            return None, (j, float(sol.t_events[0][0] * z[j]))
        if sol.status != 0 or not np.all(np.isfinite(sol.y[:, -1])):
            return None, None
    state = sol.y[:, -1]
    a = state[: L * g].reshape(L, g)
    return (np.prod(a, axis=0), np.sum(_others_product(a) ** 2, axis=0), state[L * g :]), None


def mirror_map(
    a0: Float[ArrayLike, "L m"],
    z: Float[ArrayLike, " m"],
    method: str = "auto",
    rtol: float = 1e-13,
) -> tuple[Float[np.ndarray, " m"], Float[np.ndarray, " m"], Float[np.ndarray, " m"]]:
    """The per-coordinate mirror map: (Phi(z), Phi'(z), psi*(z)) with psi*(z) = int_0^z Phi.

    rho_j = Phi_j(z_j) = prod_l a_l(z_j), where a solves da_l/dz = prod_{k != l} a_k, a(0) = a0[:, j].
    Closed forms (method="auto"):
      L = 2, any init: with u = a1 + a2, v = a1 - a2 at 0,  Phi(z) = (u^2 e^{2z} - v^2 e^{-2z})/4
          = c sinh(phi + 2z), c = |a1^2 - a2^2|/2, phi = asinh(rho(0)/c);
      L = 3, a1 = a2 = alpha, a3 = 0:  Phi(z) = alpha^3 tan(alpha z) sec^2(alpha z), |alpha z| < pi/2,
          psi*(z) = alpha^2 tan^2(alpha z)/2.
    Otherwise (or method="ode"): the ODE integrated with DOP853 at `rtol`. Coordinates with two or more zero
    entries in a0 never move: Phi = 0. Entries outside Phi_j's domain (finite-z blow-up for L >= 3) are inf.

    **Arguments:** `a0` (L, m) real, L ≥ 2; `z` (m,); `method` "auto" or "ode"; `rtol` > 0.

    **Returns:** (Phi(z), Phi'(z), psi*(z)), each of shape (m,).
    """
    a0 = _as_init(a0)
    z = as_vector("z", z, a0.shape[1])
    method = as_choice("method", method, _METHODS)
    rtol = as_positive_float("rtol", rtol)
    return _mirror(a0, z, method, rtol)


def _mirror(a0: np.ndarray, z: np.ndarray, method: str, rtol: float, bound: float = _BLOWUP, domain=None):
    L, m = a0.shape
    phi, dphi, psi = np.zeros(m), np.zeros(m), np.zeros(m)
    todo = np.count_nonzero(a0 == 0.0, axis=0) < 2  # else the coordinate is frozen at 0
    with np.errstate(over="ignore", invalid="ignore"):
        if method == "auto" and L == 2:
            # u^2 - v^2 = 4 rho(0); written so that no digits cancel at small z (large scales)
            u2, v2, r0 = (a0[0] + a0[1]) ** 2, (a0[0] - a0[1]) ** 2, a0[0] * a0[1]
            ep, em = np.exp(2 * z), np.exp(-2 * z)
            phi = r0 * ep + v2 * np.sinh(2 * z) / 2
            dphi = (u2 * ep + v2 * em) / 2
            psi = np.expm1(2 * z) * (4 * r0 - v2 * np.expm1(-2 * z)) / 8
            bad = ~np.isfinite(psi)
            phi[bad] = dphi[bad] = psi[bad] = np.inf
            return phi, dphi, psi
        if method == "auto" and L == 3:
            tan3 = todo & (a0[0] == a0[1]) & (a0[2] == 0.0)
            al, th = a0[0, tan3], a0[0, tan3] * z[tan3]
            t, sec2 = np.tan(th), 1.0 / np.cos(th) ** 2
            inside = np.abs(th) < math.pi / 2
            phi[tan3] = np.where(inside, al**3 * t * sec2, np.inf)
            dphi[tan3] = np.where(inside, al**4 * (sec2**2 + 2 * t**2 * sec2), np.inf)
            psi[tan3] = np.where(inside, al**2 * t**2 / 2, np.inf)
            todo &= ~tan3
    todo &= z != 0.0
    if np.any(todo) and domain is not None and np.any((z[todo] <= domain[0][todo]) | (z[todo] >= domain[1][todo])):
        phi[todo] = dphi[todo] = psi[todo] = np.inf  # known to be outside from an earlier evaluation
    elif np.any(todo):
        out, event = _phi_ode(a0[:, todo], z[todo], rtol, bound)
        if out is None:
            phi[todo] = dphi[todo] = psi[todo] = np.inf
            if event is not None and domain is not None:  # remember where coordinate j left the region
                j, z_star = int(np.flatnonzero(todo)[event[0]]), event[1]
                side = 1 if z_star > 0 else 0
                domain[side][j] = min(domain[1][j], z_star) if side else max(domain[0][j], z_star)
        else:
            phi[todo], dphi[todo], psi[todo] = out
    zero_z = (z == 0.0) & (np.count_nonzero(a0 == 0.0, axis=0) < 2)
    if np.any(zero_z):  # at z = 0: Phi = rho(0), psi* = 0, Phi' = sum_l (prod_{k != l} a_k(0))^2
        phi[zero_z] = np.prod(a0[:, zero_z], axis=0)
        dphi[zero_z] = np.sum(_others_product(a0[:, zero_z]) ** 2, axis=0)
        psi[zero_z] = 0.0
    return phi, dphi, psi


def interpolation_limit(
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    a0: Float[ArrayLike, "L m"],
    transform: Float[ArrayLike, "m d"] | None = None,
    *,
    method: str = "auto",
    rtol: float = 1e-13,
    max_iter: int = 500,
) -> InterpolationLimit:
    """Gradient-flow limit of a diagonal network in the transformed space, squared loss, underdetermined X.

    The network: f(x) = <S x, rho>, rho_j = prod_l a_lj, initial values a0 (shape (L, m), real), S real of
    shape (m, d) (identity when None); loss L = (1/2n) sum_i (f(x_i) - y_i)^2 (the limit does not depend on this
    normalisation or on time scaling; see the module docstring). Returns rho = Phi(S X^T lam), where lam
    minimises the convex dual  D(lam) = sum_j psi*_j((S X^T lam)_j) - lam^T y  (psi*_j' = Phi_j, see
    `mirror_map`), so X S^T rho = y. Equivalently rho minimises the potential sum_j psi_j(rho_j) over the
    interpolators: for L = 2, psi_j(rho) = [c_j h(rho/c_j) - phi_j rho]/2 + const, h(u) = u asinh u - sqrt(1+u^2) + 1
    (Woodworth et al. 2020: u(0) = v(0) = alpha in beta = u^2 - v^2 is a0 = (2 alpha, 0) and potential
    = Q_alpha(beta)/2); small scale -> min-l1 interpolator, large scale -> min-l2 (Gunasekar et al. 2018).

    D is minimised by Newton's method with backtracking from lam = 0 (the Hessian is X S^T diag(Phi') S X^T);
    it stops when the relative residual ||X beta - y|| / ||y|| reaches ~1e-13 or stalls, and raises RuntimeError
    above 1e-9. Accuracy: closed forms (L = 2; L = 3 with a1 = a2, a3 = 0) to ~1e-13; other inits use the ODE at
    `rtol` (~1e-12 in rho). It assumes the flow converges to an interpolator (true when the data can be fitted by
    rho in the range of Phi; balanced same-sign inits keep the sign of rho_j, for example).

    **Arguments:** `X` (n, d) with X Sᵀ of full row rank n; `y` (n,); `a0` (L, m) real, L ≥ 2;
    `transform` S (m, d) real or None; `method` "auto" or "ode"; `rtol` > 0; `max_iter` ≥ 1.

    **Returns:** an `InterpolationLimit`.
    """
    X = as_real_matrix("X", X)
    n, d = X.shape
    y = as_vector("y", y, n)
    S = as_transform("transform", transform, d)
    if np.iscomplexobj(S):
        raise ValueError("interpolation_limit needs a real transform S (e.g. a real orthogonal basis); got a complex one.")
    m = S.shape[0]
    a0 = _as_init(a0, m)
    method = as_choice("method", method, _METHODS)
    rtol = as_positive_float("rtol", rtol)
    max_iter = as_int("max_iter", max_iter, 1)
    A = X @ S.T  # predictions are A @ rho
    if n > m or np.linalg.matrix_rank(A) < n:
        raise ValueError(
            f"interpolation_limit needs an underdetermined problem: X S^T (shape {A.shape}) must have full row rank n = {n} "
            f"(rank {np.linalg.matrix_rank(A)})."
        )
    if not np.any(y != 0):
        raise ValueError("y is identically zero; the limit is then the initialisation's own fit, not a reference.")
    ynorm = np.linalg.norm(y)
    # Trial points of the line search whose layers exceed `bound` count as outside the domain: the limit's
    # layers are far below it (1e8 times the scale of the initialisation and of the min-l2 interpolator), and
    # the ODE would otherwise spend thousands of steps creeping up to the finite-z blow-up.
    rho_scale = np.max(np.abs(np.linalg.pinv(A) @ y)) * m
    bound = 1e8 * max(1.0, float(np.max(np.abs(a0))), rho_scale ** (1.0 / a0.shape[0]))

    domain = (np.full(m, -np.inf), np.full(m, np.inf))  # per-coordinate region found so far (ODE coordinates)

    def dual(lam):
        phi, dphi, psi = _mirror(a0, A.T @ lam, method, rtol, bound, domain)
        if not np.all(np.isfinite(psi)):
            return math.inf, None, None, None
        return float(np.sum(psi) - lam @ y), A @ phi - y, phi, dphi

    lam = np.zeros(n)
    D, grad, phi, dphi = dual(lam)
    gnorm = np.linalg.norm(grad)
    it = 0
    while it < max_iter:
        it += 1
        if gnorm <= 1e-13 * ynorm:
            break
        H = (A * dphi) @ A.T
        try:
            step = np.linalg.solve(H, -grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(H, -grad, rcond=None)[0]
        slope = grad @ step
        if not slope < 0:
            step, slope = -grad, -(grad @ grad)
        # Backtracking: shrink by 10 while the trial point is outside the domain (huge first steps at small
        # scales, where the Hessian is tiny), by 2 while it fails the Armijo test (at most 40 times).
        t, accepted, halvings = 1.0, False, 0
        while t > 1e-30 and halvings < 40:
            Dn, gn, phin, dphin = dual(lam + t * step)
            if not math.isfinite(Dn):
                t *= 0.1
                continue
            with np.errstate(over="ignore"):
                gn_norm = np.linalg.norm(gn)
            armijo = Dn <= D + 1e-4 * t * slope
            flat = Dn <= D + 1e-12 * (abs(D) + 1.0) and gn_norm < gnorm  # Armijo lost in round-off
            if armijo or flat:
                accepted = True
                break
            t *= 0.5
            halvings += 1
        if not accepted:
            break
        lam, D, grad, phi, dphi, gnorm_old, gnorm = lam + t * step, Dn, gn, phin, dphin, gnorm, gn_norm
        if gnorm <= 1e-9 * ynorm and gnorm >= 0.5 * gnorm_old:
            break  # at the round-off floor
    residual = float(gnorm / ynorm)
    if not residual <= 1e-9:
        raise RuntimeError(
            f"interpolation_limit: Newton on the dual stopped at relative residual {residual:.3e} after {it} steps; "
            "the targets may not be reachable by rho in the range of Phi (e.g. a same-sign balanced init keeps "
            "sign(rho_j)), or the flow does not converge to an interpolator."
        )
    z = A.T @ lam
    _, _, psi = _mirror(a0, z, method, rtol, bound)
    potential = float(np.sum(phi * z - psi))
    beta = S.T @ phi
    return InterpolationLimit(phi, beta, lam, potential, float(np.linalg.norm(X @ beta - y) / ynorm), it)
