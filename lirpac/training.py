"""Certified training from a plain PyTorch loop: robust losses from bounds, eps schedules and
the clean / verified error.

    net = lirpac.compile(model, x[:1])              # once; weight updates are read at each call
    for step, (x, y) in enumerate(loader):
        eps = schedule(step)
        ball = lirpac.LpBall(eps=eps, lower=0.0, upper=1.0)
        loss, stats = robust_loss(net, x, y, ball, method="crown-ibp", beta=crown_ibp_beta(eps, max_eps))
        opt.zero_grad(); loss.backward(); opt.step()

The robust loss is the cross-entropy of the worst logits the bounds allow (Wong & Kolter 2018,
Gowal et al. 2018): with margin lower bounds lb_j <= z_y - z_j, the logits (0, -lb_j) with the
true class first. CROWN-IBP (Zhang et al. 2020) mixes the CROWN-IBP and IBP margin bounds,
beta * crown_ibp + (1 - beta) * ibp, beta falling from 1 to 0 as eps ramps up.

Loss fusion (``fused=True``, the default for crown-ibp and crown) bounds the cross-entropy
itself: CE = log sum_j exp(d_j) with d_j = z_j - z_y (d_y = 0). Each exp is bounded above by
its chord over the margins' interval (IBP for crown-ibp: one cheap pass with the spec folded
into the last layer), the sum of chords is one linear function s . d + t of the logits, and
its upper bound needs ONE backward row per sample instead of n_classes - 1. log is increasing,
so log of that upper bound bounds the loss. The result is intersected with the interval
loss bound (min of two upper bounds), so it is never looser than the unfused IBP loss; with
method="ibp" fused and unfused are the same number.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from lirpac.errors import InputError
from lirpac.specs import margin_spec

ROBUST_METHODS = ("ibp", "crown-ibp", "crown")


# -- losses --------------------------------------------------------------------------------------

def worst_case_ce(margin_lower: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the worst logits (0 for the true class, -lb_j for the others): an upper
    bound of the cross-entropy over the set when lb_j <= z_y - z_j holds there."""
    logits = torch.cat([torch.zeros_like(margin_lower[:, :1]), -margin_lower], dim=1)
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction=reduction)


def _interval_ce(net, x, margin_lower: torch.Tensor) -> torch.Tensor:
    """``worst_case_ce(margin_lower, "none")``, through the fused kernel when the bound call ran
    on the Triton backend (codegen/triton/ce_bound.py)."""
    from lirpac.codegen import triton as triton_backend
    backend = getattr(net, "backend", "torch")
    if backend != "torch" and triton_backend.resolve(backend, x) == "triton":
        from lirpac.codegen.triton import ce_bound
        if ce_bound.fusable(margin_lower):
            return ce_bound.ce_bound(margin_lower)
    return worst_case_ce(margin_lower, reduction="none")


def _check_method(method: str) -> str:
    name = method.lower() if isinstance(method, str) else method
    if name not in ROBUST_METHODS:
        raise InputError(f"robust training method must be one of {', '.join(ROBUST_METHODS)}, "
                         f"got {method!r}")
    return name


def _n_classes(net) -> int:
    n = 1
    for s in net.output_shape:
        n *= s
    return n


def margin_lower_bounds(net, x, y, perturbation, method: str = "crown-ibp", beta: float = 1.0):
    """Lower bounds of the margins z_y - z_j (batch, n_classes - 1). crown-ibp mixes its bound
    with IBP's: beta * crown_ibp + (1 - beta) * ibp (beta = 1: pure CROWN-IBP)."""
    method = _check_method(method)
    C = margin_spec(y, _n_classes(net), dtype=x.dtype)
    if method == "crown" or (method == "crown-ibp" and beta >= 1.0):
        return net.bounds(x, perturbation, method=method, C=C, bound_upper=False)[0]
    ibp = net.bounds(x, perturbation, method="ibp", C=C, bound_upper=False)[0]
    if method == "ibp" or beta <= 0.0:
        return ibp
    crown_ibp = net.bounds(x, perturbation, method="crown-ibp", C=C, bound_upper=False)[0]
    return beta * crown_ibp + (1.0 - beta) * ibp


def _exp_chords(lower: torch.Tensor, upper: torch.Tensor):
    """(slope, intercept) of the chord of exp over [lower, upper] (ends <= 0 here): exp(d) <=
    slope d + intercept there (exp is convex). A narrow interval uses exp(l) expm1(w) / w, which
    has no cancellation; each branch is finite wherever it is evaluated, so that neither the
    value nor the gradient of the other branch can be NaN."""
    width = (upper - lower).clamp(min=0.0)
    narrow = width < 1.0
    w_narrow = torch.where(narrow & (width > 0), width, torch.ones_like(width))
    w_wide = torch.where(narrow, torch.ones_like(width), width)
    exp_l, exp_u = torch.exp(lower), torch.exp(upper)
    slope_narrow = torch.where(width > 0, exp_l * (torch.expm1(w_narrow) / w_narrow), exp_l)
    slope = torch.where(narrow, slope_narrow, (exp_u - exp_l) / w_wide)
    return slope, exp_u - slope * upper


def _fused(net, x, y, perturbation, method):
    """(fused bound, interval bound, margins' lower bounds) per sample (fused_ce_bound)."""
    n = _n_classes(net)
    C = margin_spec(y, n, dtype=x.dtype)
    # intervals of d_j = z_j - z_y = -margin_j: IBP (crown-ibp, ibp) or CROWN (crown)
    interval = "crown" if method == "crown" else "ibp"
    margin_lower, margin_upper = net.bounds(x, perturbation, method=interval, C=C)
    d_lower, d_upper = -margin_upper, -margin_lower
    interval_bound = _interval_ce(net, x, margin_lower)
    if method == "ibp":
        return interval_bound, interval_bound, margin_lower
    # shift by m = max_j u_j (exact: log sum exp(d) = m + log sum exp(d - m)) so nothing overflows
    shift = d_upper.max(dim=1, keepdim=True).values.clamp(min=0.0).detach()
    slope, intercept = _exp_chords(d_lower - shift, d_upper - shift)
    # sum_j slope_j (d_j - m) + intercept_j = row . z + const, with d = -C z
    row = -(slope.unsqueeze(2) * C).sum(dim=1, keepdim=True)          # (batch, 1, n)
    linear_upper = net.bounds(x, perturbation, method=method, C=row, bound_lower=False)[1][:, 0]
    const = (intercept - slope * shift).sum(dim=1)
    total = linear_upper + const + torch.exp(-shift[:, 0])             # + exp(d_y - m), d_y = 0
    # the true sum is >= exp(-m) > 0; the clamp only guards rounding
    fused = shift[:, 0] + torch.log(torch.maximum(total, torch.exp(-shift[:, 0])))
    return torch.minimum(fused, interval_bound), interval_bound, margin_lower


def fused_ce_bound(net, x, y, perturbation, method: str = "crown-ibp", return_margins=False):
    """Upper bound, per sample, of the cross-entropy CE(f(x'), y) over the set (batch,), with
    loss fusion: one backward row per sample (module docstring). ``return_margins``: also the
    margins' lower bounds the chords used (IBP's, or CROWN's for method="crown")."""
    fused, _, margins = _fused(net, x, y, perturbation, _check_method(method))
    return (fused, margins) if return_margins else fused


def robust_loss(net, x, y, perturbation, method: str = "crown-ibp", beta: float = 1.0,
                fused: bool | None = None, reduction: str = "mean", return_margins: bool = False):
    """An upper bound of the cross-entropy over the perturbation set, as a training loss
    (differentiable in the model's parameters). crown-ibp: beta * CROWN-IBP + (1 - beta) * IBP
    (on the margins' bounds unfused, on the loss bounds fused). ``fused`` defaults to True for
    crown-ibp and crown (one backward row per sample instead of n_classes - 1).
    ``return_margins``: (loss, margin lower bounds) with the margins bounds computed on the way
    (mixed unfused; IBP's fused, or CROWN's for crown), e.g. for a running verified error."""
    method = _check_method(method)
    if not 0.0 <= beta <= 1.0:
        raise InputError(f"beta must lie in [0, 1], got {beta!r}")
    if reduction not in ("mean", "sum", "none"):
        raise InputError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    fused = method != "ibp" if fused is None else fused
    if not fused:
        margins = margin_lower_bounds(net, x, y, perturbation, method, beta)
        loss = _interval_ce(net, x, margins)
    elif method == "crown-ibp" and beta <= 0.0:
        loss, _, margins = _fused(net, x, y, perturbation, "ibp")
    else:
        loss, ibp, margins = _fused(net, x, y, perturbation, method)
        if method == "crown-ibp" and beta < 1.0:
            loss = beta * loss + (1.0 - beta) * ibp
    loss = loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss
    return (loss, margins) if return_margins else loss


# -- schedules -----------------------------------------------------------------------------------

class LinearSchedule:
    """eps(step): 0 before ``start``, a straight ramp to ``max_eps`` over ``length`` steps, then
    held."""

    def __init__(self, max_eps: float, start: int = 0, length: int = 1):
        if max_eps < 0 or start < 0 or length < 0:
            raise InputError(f"LinearSchedule needs max_eps, start, length >= 0, got "
                             f"{max_eps}, {start}, {length}")
        self.max_eps, self.start, self.length = float(max_eps), int(start), int(length)

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 0.0
        if self.length == 0:
            return self.max_eps
        return self.max_eps * min(1.0, (step - self.start) / self.length)


class SmoothedSchedule(LinearSchedule):
    """The warm-up / ramp / hold schedule of the CROWN-IBP papers (after Gowal et al.'s IBP
    code): 0 before ``start``; then eps grows as alpha t^p (p = ``power``, default 4) up to the
    fraction ``mid`` of the ramp, then linearly to ``max_eps`` at ``start + length``, where the
    two pieces meet with the same slope; then held. The slow start keeps the first bounded
    steps from destroying the naturally learnt features."""

    def __init__(self, max_eps: float, start: int = 0, length: int = 1, mid: float = 0.25,
                 power: float = 4.0):
        super().__init__(max_eps, start, length)
        if not 0.0 <= mid <= 1.0 or power < 2.0:
            raise InputError(f"SmoothedSchedule needs 0 <= mid <= 1 and power >= 2, got mid={mid}, "
                             f"power={power}")
        self.mid, self.power = float(mid), float(power)

    def __call__(self, step: int) -> float:
        t = step - self.start
        if t <= 0:
            return 0.0
        if t >= self.length:
            return self.max_eps
        t_mid = int(self.length * self.mid)
        # alpha such that alpha t_mid^p + the linear piece of slope alpha p t_mid^(p-1) reaches
        # max_eps at the end
        denom = (self.length - t_mid) * self.power * t_mid ** (self.power - 1) + t_mid ** self.power
        if t_mid == 0 or denom == 0:
            return super().__call__(step)
        alpha = self.max_eps / denom
        if t < t_mid:
            return alpha * t ** self.power
        mid_value = alpha * t_mid ** self.power
        return min(self.max_eps, mid_value + (self.max_eps - mid_value) * (t - t_mid) / (self.length - t_mid))


def crown_ibp_beta(eps: float, max_eps: float) -> float:
    """CROWN-IBP's mixing weight: 1 (all CROWN-IBP) at eps = 0, falling linearly to 0 (all IBP)
    when eps reaches max_eps (Zhang et al. 2020)."""
    if max_eps <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - eps / max_eps))


# -- metrics -------------------------------------------------------------------------------------

def clean_error(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples misclassified."""
    return (logits.argmax(dim=1) != y).float().mean().item()


@torch.no_grad()
def verified_error(net, x, y, perturbation, method: str = "crown", logits=None) -> float:
    """Fraction of samples NOT certified: misclassified at x, or some margin's lower bound <= 0
    over the set. ``method`` is any bound method name ("ibp", "crown", ...), "crown-intersect"
    (CROWN keeping each intermediate bound the intersection of its CROWN and IBP bounds: much
    tighter than CROWN on IBP-trained networks), or "best": certified when any of IBP,
    CROWN-IBP, CROWN and crown-intersect certifies (each is sound, so their best is)."""
    return (~certified(net, x, y, perturbation, method, logits)).float().mean().item()


@torch.no_grad()
def certified(net, x, y, perturbation, method: str = "crown", logits=None) -> torch.Tensor:
    """(batch,) bool: correct at x and every margin's lower bound > 0 over the set."""
    if logits is None:
        logits = net(x)
    C = margin_spec(y, _n_classes(net), dtype=x.dtype)
    methods = ROBUST_METHODS + ("crown-intersect",) if method == "best" else (method,)
    lower = None
    for m in methods:
        options = {"intersect": True} if m == "crown-intersect" else None
        lb = net.bounds(x, perturbation, method="crown" if options else m, C=C,
                        bound_upper=False, options=options)[0]
        lower = lb if lower is None else torch.maximum(lower, lb)
    return (logits.argmax(dim=1) == y) & (lower > 0).all(dim=1)


__all__ = ["robust_loss", "fused_ce_bound", "margin_lower_bounds", "worst_case_ce",
           "LinearSchedule", "SmoothedSchedule", "crown_ibp_beta", "clean_error",
           "verified_error", "certified", "ROBUST_METHODS"]
