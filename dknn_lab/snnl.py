"""Soft nearest-neighbour loss (SNNL) of Frosst, Papernot & Hinton (ICML 2019, arXiv 1902.01889).

Why it is here (docs/design.md §1): the SNNL measures how *entangled* the classes are in a representation.
Low SNNL means every point's close neighbours share its label (classes separated); high SNNL means
neighbours are drawn from all classes (entangled). The project uses it two ways:

* as a **training aid** for reference models: total loss = cross-entropy − weight × Σ_layers SNNL, so a
  positive weight *maximises* entanglement in hidden layers, which the paper reports makes
  DkNN-style outlier detection better;
* as a **representation-quality metric** reported per layer (:func:`snnl_of_layers`).

For a batch of b representations x_i (flattened to d features), labels y_i and temperature T > 0::

    SNNL = −(1/|V|) Σ_{i∈V} log( Σ_{j≠i, y_j=y_i} exp(−D_ij / T) / Σ_{k≠i} exp(−D_ik / T) )

where D is the squared Euclidean distance (the paper's choice) or the cosine distance 1 − cos(x_i, x_j).

**Points without a same-class partner.** A point i whose label occurs only once in the batch has an
empty numerator: its term is log 0 = −∞ and would make the whole loss +∞ (and its gradient NaN). Such
a point carries no information about entanglement in this batch, so it is *excluded from the mean*:
V is the set of points with at least one other point of their class in the batch, and the mean is
over |V|, not b. If V is empty (b < 2, or every label distinct) the loss is 0, still attached to the
graph so that ``backward()`` works and contributes nothing. With the usual batch sizes (≥ 32 for ten
classes) V is almost always the whole batch.

**Numerical stability.** Each log of a ratio of sums of exponentials is computed as the difference of
two ``torch.logsumexp`` over the logits −D_ij/T, with excluded pairs (the diagonal, and other-class
pairs in the numerator) set to −∞. logsumexp subtracts the row maximum, so neither tiny temperatures
(huge logits) nor huge distances underflow to 0/0. Rows that are excluded from the mean have their
numerator replaced by a finite dummy *before* logsumexp, because the backward pass of a logsumexp over
an all −∞ row is NaN, and NaN × 0 is still NaN. Logits that overflow to −∞ in the working dtype are
clamped to the most negative finite value for the same reason.

**Pairwise distances.** Squared Euclidean distances use ‖a‖² + ‖b‖² − 2a·b (one matrix product, no
(b, b, d) difference tensor, so large conv activations fit in memory) after subtracting the batch
mean — distances are translation invariant, and centring removes most of the cancellation that the
expansion suffers when all points sit far from the origin. Tiny negative results of rounding are
clamped to 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

Distance = Literal["euclidean", "cosine"]

__all__ = ["Distance", "SoftNearestNeighborLoss", "pairwise_distances", "soft_nearest_neighbor_loss", "snnl_of_layers"]


def pairwise_distances(x: Tensor, distance: Distance = "euclidean") -> Tensor:
    """(b, b) matrix of squared Euclidean or cosine distances between the rows of x flattened to (b, d).

    Squared Euclidean: centred Gram-matrix expansion, clamped at 0 (see the module docstring for why).
    Cosine: 1 − x̂_i·x̂_j with rows normalised to unit length; an all-zero row is treated as having
    cosine similarity 0 with every other point (distance 1) rather than producing NaN. Either way the
    diagonal is exactly 0: the expansions leave rounding residue there, and a point is at distance 0
    from itself.
    """
    flat = x.flatten(1) if x.dim() > 1 else x.unsqueeze(1)
    if distance == "euclidean":
        centred = flat - flat.mean(dim=0, keepdim=True)
        squared_norms = (centred * centred).sum(dim=1)
        gram = centred @ centred.T
        distances = (squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram).clamp_min(0.0)
    elif distance == "cosine":
        unit = nn.functional.normalize(flat, p=2.0, dim=1, eps=torch.finfo(flat.dtype).tiny ** 0.5)
        distances = (1.0 - unit @ unit.T).clamp(0.0, 2.0)
    else:
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
    diagonal = torch.eye(len(flat), dtype=torch.bool, device=flat.device)
    return distances.masked_fill(diagonal, 0.0)


def _snnl_from_distances(distances: Tensor, y: Tensor, inverse_temperature: Tensor | float) -> Tensor:
    """Mean SNNL over points that have a same-class partner, from a (b, b) distance matrix.

    Takes 1/T rather than T so callers that parametrise the temperature as log T can pass exp(−log T)
    and never divide by a T that underflowed.
    """
    b = distances.shape[0]
    if b < 2:
        return distances.sum() * 0.0
    finite_floor = -torch.finfo(distances.dtype).max
    logits = (-distances * inverse_temperature).clamp_min(finite_floor)  # −∞ from overflow → finite

    not_self = ~torch.eye(b, dtype=torch.bool, device=distances.device)
    same_class = (y[:, None] == y[None, :]) & not_self
    has_partner = same_class.any(dim=1)
    if not bool(has_partner.any()):
        return distances.sum() * 0.0

    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    log_denominator = torch.logsumexp(torch.where(not_self, logits, neg_inf), dim=1)
    # Rows without partners get a finite dummy row (all zeros) so logsumexp's backward stays finite.
    numerator_logits = torch.where(same_class, logits, neg_inf)
    numerator_logits = torch.where(has_partner[:, None], numerator_logits, torch.zeros_like(logits))
    log_numerator = torch.logsumexp(numerator_logits, dim=1)

    per_point = log_denominator - log_numerator  # = −log(ratio) ≥ 0
    return per_point[has_partner].mean()


def _check_batch(x: Tensor, y: Tensor) -> Tensor:
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension")
    y = torch.as_tensor(y, device=x.device)
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    return y


def soft_nearest_neighbor_loss(
    x: Tensor,
    y: Tensor,
    temperature: float | Tensor,
    distance: Distance = "euclidean",
) -> Tensor:
    """SNNL of the batch x (b, ...) with labels y (b,) at temperature T > 0; a scalar tensor.

    Differentiable in x (and in ``temperature`` if it is a tensor that requires grad). T must be
    finite, positive and large enough that 1/T is finite in x's dtype (ValueError otherwise). Points whose
    label occurs once in the batch are left out of the mean; a batch with no such pairs gives 0.
    Invariances worth knowing (they are unit-tested): translating every point, permuting the batch,
    and — for the Euclidean distance — scaling x by s together with T by s² leave the value unchanged.
    """
    y = _check_batch(x, y)
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError("temperature must be a scalar")
        value = float(temperature.detach())
    else:
        value = float(temperature)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"temperature must be finite and > 0, got {value}")
    # 1/T must be finite in x's dtype: an infinite 1/T turns the 0 · ∞ on the diagonal into NaN
    # gradients. (T ≥ ~3e-39 for float32; no sensible representation needs a smaller one.)
    if value < 1.0 / torch.finfo(x.dtype).max:
        raise ValueError(f"temperature {value} is too small for {x.dtype}: 1/T overflows")
    inverse_temperature: Tensor | float
    if isinstance(temperature, Tensor):
        inverse_temperature = 1.0 / temperature.to(x.dtype)
    else:
        inverse_temperature = 1.0 / value
    return _snnl_from_distances(pairwise_distances(x, distance), y, inverse_temperature)


def snnl_of_layers(
    activations: Mapping[str, Tensor],
    y: Tensor,
    temperature: float | Mapping[str, float],
    distance: Distance = "euclidean",
) -> dict[str, Tensor]:
    """SNNL per layer for activations captured on one batch (e.g. by the model taps).

    ``temperature`` is one value for all layers or one per layer name: layers differ in scale and
    dimension, and a squared-distance temperature that suits a 10-dim logit layer is far too small for
    an 800-dim hidden layer. Returned tensors keep their graph, so the result can be summed into a
    training loss as well as logged as a metric.
    """
    result: dict[str, Tensor] = {}
    for name, activation in activations.items():
        layer_temperature = temperature[name] if isinstance(temperature, Mapping) else temperature
        result[name] = soft_nearest_neighbor_loss(activation, y, layer_temperature, distance=distance)
    return result


class SoftNearestNeighborLoss(nn.Module):
    """SNNL as a module, with a fixed temperature or one optimised to minimise the SNNL of each batch.

    Fixed (``learn_temperature=False``): forward(x, y) = SNNL(x, y, T).

    Optimised (``learn_temperature=True``): the paper removes the dependence on an arbitrary T by using
    the temperature that *minimises* the loss, SNNL*(x, y) = min_T SNNL(x, y, T). What this class
    implements: T is stored as log T (so it is always positive) in a **buffer**, not a parameter. On
    every forward call in training mode, log T moves to the minimiser of the batch's SNNL over the
    bracket [log T − w, log T + w] (w = ``search_width``, default 1, i.e. T/e … T·e), found by a
    golden-section search of ``search_iterations`` evaluations on the *detached* pairwise distances
    (computed once; each evaluation is one pass over the b × b matrix, cheap next to the network's
    forward pass). The search warm-starts from the previous batch's value, so over training T tracks
    argmin_T SNNL and can travel a factor e per batch from a poor initial value. The loss returned is
    then SNNL at the updated T, with gradients flowing only to x.

    Why a line search rather than gradient steps on log T: SNNL is flat in T at both ends (as T → ∞ it
    tends to the label-count value, as T → 0 to a nearest-neighbour value), so the gradient in log T
    vanishes far from the optimum and fixed-step descent stalls there; comparing values does not.
    Within the bracket the search finds a local minimiser (SNNL need not be unimodal in log T).

    Why a buffer and not a parameter in the model's optimiser: the project trains with cross-entropy
    **−** weight × SNNL. An outer optimiser minimising that total would move T to *maximise* SNNL — the
    opposite of the paper's min over T, and T → ∞ trivially reaches the entangled maximum. Keeping the
    T update separate makes it minimise SNNL whatever sign the SNNL term gets. In eval mode T is not
    updated. log T is clamped to ±``LOG_TEMPERATURE_LIMIT`` so 1/T stays finite in float32 (the
    minimiser runs to T → 0 when every point's nearest neighbour shares its label).
    """

    LOG_TEMPERATURE_LIMIT = 40.0
    _GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0

    log_temperature: Tensor

    def __init__(
        self,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        distance: Distance = "euclidean",
        search_width: float = 1.0,
        search_iterations: int = 12,
    ) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        if not (search_width > 0 and search_iterations >= 1):
            raise ValueError("search_width must be > 0 and search_iterations ≥ 1")
        self.learn_temperature = learn_temperature
        self.distance: Distance = distance
        self.search_width = float(search_width)
        self.search_iterations = int(search_iterations)
        log_t = min(max(math.log(temperature), -self.LOG_TEMPERATURE_LIMIT), self.LOG_TEMPERATURE_LIMIT)
        self.register_buffer("log_temperature", torch.tensor(log_t, dtype=torch.float64))

    @property
    def temperature(self) -> float:
        """Current temperature T = exp(log T)."""
        return float(self.log_temperature.exp())

    @torch.no_grad()
    def _update_temperature(self, distances: Tensor, y: Tensor) -> None:
        """Golden-section search for argmin SNNL over log T in the bracket around the current value."""
        distances = distances.to(torch.float64)
        not_self = ~torch.eye(len(y), dtype=torch.bool, device=distances.device)
        if not bool(((y[:, None] == y[None, :]) & not_self).any()):
            return  # no same-class pair: the batch says nothing about the temperature

        def snnl_at(log_t: float) -> float:
            return float(_snnl_from_distances(distances, y, math.exp(-log_t)))

        limit = self.LOG_TEMPERATURE_LIMIT
        centre = float(self.log_temperature)
        low, high = max(centre - self.search_width, -limit), min(centre + self.search_width, limit)
        inner_low = high - self._GOLDEN * (high - low)
        inner_high = low + self._GOLDEN * (high - low)
        value_low, value_high = snnl_at(inner_low), snnl_at(inner_high)
        for _ in range(self.search_iterations):
            if value_low <= value_high:
                high, inner_high, value_high = inner_high, inner_low, value_low
                inner_low = high - self._GOLDEN * (high - low)
                value_low = snnl_at(inner_low)
            else:
                low, inner_low, value_low = inner_low, inner_high, value_high
                inner_high = low + self._GOLDEN * (high - low)
                value_high = snnl_at(inner_high)
        # Keep the best point seen among the final candidates (the bracket ends are never evaluated
        # except as candidates, so a minimiser at the edge is approached to within the bracket width).
        best = inner_low if value_low <= value_high else inner_high
        self.log_temperature.fill_(best)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """SNNL of the batch at the current (possibly just updated) temperature; gradients flow to x."""
        y = _check_batch(x, y)
        distances = pairwise_distances(x, self.distance)
        if self.learn_temperature and self.training:
            self._update_temperature(distances.detach(), y)
        inverse_temperature = torch.exp(-self.log_temperature).to(distances.dtype)
        return _snnl_from_distances(distances, y, inverse_temperature)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature:.4g}, learn_temperature={self.learn_temperature}, "
            f"distance={self.distance!r}"
        )
