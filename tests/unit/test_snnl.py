"""The soft nearest-neighbour loss: value against a direct definition, gradients, invariances, limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dknn_lab.snnl import SoftNearestNeighborLoss, pairwise_distances, snnl_of_layers, soft_nearest_neighbor_loss

FAST = settings(max_examples=40, deadline=None)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def reference_snnl(x: np.ndarray, y: np.ndarray, temperature: float, distance: str = "euclidean") -> float:
    """The definition read literally: loops over points and pairs, float64, no log-sum-exp tricks.

    Points with no other point of their class are skipped (the convention of dknn_lab.snnl).
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    b = len(x)

    def dist(i: int, j: int) -> float:
        if distance == "euclidean":
            return float(sum((x[i, f] - x[j, f]) ** 2 for f in range(x.shape[1])))
        cos = float(x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])))
        return 1.0 - cos

    terms = []
    for i in range(b):
        numerator = sum(math.exp(-dist(i, j) / temperature) for j in range(b) if j != i and y[j] == y[i])
        denominator = sum(math.exp(-dist(i, k) / temperature) for k in range(b) if k != i)
        if any(y[j] == y[i] for j in range(b) if j != i):
            terms.append(-math.log(numerator / denominator))
    return sum(terms) / len(terms) if terms else 0.0


def batch(
    seed: int, b: int = 12, d: int = 5, classes: int = 3, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=generator, dtype=torch.float64) * scale
    y = torch.arange(b) % classes
    return x, y


# -- value -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0, 3.0, 10.0, 100.0])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_matches_direct_computation(temperature: float, distance: str) -> None:
    x, y = batch(seed=1)
    # A mild temperature for cosine distances (∈ [0, 2]) keeps the reference's plain exp from underflowing.
    t = temperature / 10 if distance == "cosine" else temperature
    got = soft_nearest_neighbor_loss(x, y, t, distance=distance).item()
    assert got == pytest.approx(reference_snnl(x.numpy(), y.numpy(), t, distance), rel=1e-9, abs=1e-12)


@FAST
@given(
    b=st.integers(2, 9),
    d=st.integers(1, 4),
    classes=st.integers(1, 4),
    log_t=st.floats(-1.0, 2.0),
    seed=st.integers(0, 2**16),
)
def test_matches_direct_computation_property(b: int, d: int, classes: int, log_t: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, d))
    y = rng.integers(0, classes, size=b)
    t = 10.0**log_t
    got = soft_nearest_neighbor_loss(torch.as_tensor(x), torch.as_tensor(y), t).item()
    assert got == pytest.approx(reference_snnl(x, y, t), rel=1e-8, abs=1e-10)


def test_flattens_trailing_dimensions() -> None:
    x, y = batch(seed=2, d=12)
    flat = soft_nearest_neighbor_loss(x, y, 2.0)
    shaped = soft_nearest_neighbor_loss(x.reshape(12, 3, 2, 2), y, 2.0)
    assert shaped.item() == pytest.approx(flat.item(), rel=1e-12)


def test_points_without_partner_are_excluded_from_the_mean() -> None:
    x, y = batch(seed=3, b=7)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3])  # labels 2 and 3 occur once
    keep = y < 2
    with_singletons = soft_nearest_neighbor_loss(x, y, 1.0)
    assert torch.isfinite(with_singletons)
    assert with_singletons.item() == pytest.approx(reference_snnl(x.numpy(), y.numpy(), 1.0), rel=1e-10)
    # The singletons still count in the denominators of the others, so the value differs from the
    # loss of the batch with them removed, but only by their presence as distractors.
    without = soft_nearest_neighbor_loss(x[keep], y[keep], 1.0)
    assert with_singletons.item() >= without.item() - 1e-12


@pytest.mark.parametrize("y", [[0], [0, 1, 2, 3], []])
def test_no_pairs_at_all_gives_zero_with_a_usable_graph(y: list[int]) -> None:
    x = torch.randn(len(y), 3, requires_grad=True)
    loss = soft_nearest_neighbor_loss(x, torch.tensor(y, dtype=torch.long), 1.0)
    loss.backward()
    assert loss.item() == 0.0
    assert x.grad is not None and torch.all(x.grad == 0)


def test_well_separated_classes_give_near_zero() -> None:
    generator = torch.Generator().manual_seed(4)
    y = torch.arange(30) % 3
    # Centres in different directions from the origin, so cosine distance separates them too.
    centres = torch.tensor([[100.0, 0.0], [0.0, 100.0], [-100.0, -100.0]], dtype=torch.float64)
    x = centres[y] + 0.1 * torch.randn(30, 2, generator=generator, dtype=torch.float64)
    assert soft_nearest_neighbor_loss(x, y, 1.0).item() < 1e-12
    # Cosine distances live in [0, 2]: the temperature must be small on that scale.
    assert soft_nearest_neighbor_loss(x, y, 0.01, distance="cosine").item() < 1e-12


@pytest.mark.parametrize("counts", [[2, 2], [3, 3, 3], [5, 2], [4, 1, 3]])
def test_identical_points_give_the_label_count_value(counts: list[int]) -> None:
    """All points equal ⇒ every exp(−0/T) = 1, so point i's ratio is (n_{y_i} − 1)/(b − 1).

    Hence SNNL = (1/|V|) Σ_{i∈V} log((b − 1)/(n_{y_i} − 1)), V = points with n_{y_i} ≥ 2, at every
    temperature; for C balanced classes of m points it is log((Cm − 1)/(m − 1)).
    """
    y = torch.tensor([label for label, n in enumerate(counts) for _ in range(n)])
    b = len(y)
    terms = [math.log((b - 1) / (n - 1)) for n in counts if n >= 2 for _ in range(n)]
    expected = sum(terms) / len(terms)
    x = torch.full((b, 4), 3.25, dtype=torch.float64)
    for temperature in (1e-6, 1.0, 1e6):
        assert soft_nearest_neighbor_loss(x, y, temperature).item() == pytest.approx(expected, rel=1e-12)


def test_balanced_identical_points_closed_form() -> None:
    classes, m = 4, 5
    y = torch.arange(classes).repeat_interleave(m)
    x = torch.zeros(classes * m, 7)
    expected = math.log((classes * m - 1) / (m - 1))
    assert soft_nearest_neighbor_loss(x, y, 0.3).item() == pytest.approx(expected, rel=1e-6)


def test_infinite_temperature_limit_is_the_count_value() -> None:
    """As T → ∞ distances stop mattering: the value tends to the identical-points value."""
    x, y = batch(seed=5, b=9, classes=3)
    expected = math.log(8 / 2)
    assert soft_nearest_neighbor_loss(x, y, 1e12).item() == pytest.approx(expected, rel=1e-9)


# -- invariances -------------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**16), shift=st.floats(-50.0, 50.0), t=st.floats(0.2, 20.0))
def test_translation_invariance(seed: int, shift: float, t: float) -> None:
    x, y = batch(seed)
    offset = shift * torch.linspace(-1.0, 1.0, x.shape[1], dtype=torch.float64)
    a = soft_nearest_neighbor_loss(x, y, t).item()
    b = soft_nearest_neighbor_loss(x + offset, y, t).item()
    assert b == pytest.approx(a, rel=1e-9, abs=1e-12)


@FAST
@given(seed=st.integers(0, 2**16), t=st.floats(0.2, 20.0), distance=st.sampled_from(["euclidean", "cosine"]))
def test_permutation_invariance(seed: int, t: float, distance: str) -> None:
    x, y = batch(seed)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    a = soft_nearest_neighbor_loss(x, y, t, distance=distance).item()
    b = soft_nearest_neighbor_loss(x[perm], y[perm], t, distance=distance).item()
    assert b == pytest.approx(a, rel=1e-10, abs=1e-12)


@FAST
@given(seed=st.integers(0, 2**16), log_s=st.floats(-3.0, 3.0), t=st.floats(0.2, 20.0))
def test_scale_invariance_with_squared_temperature(seed: int, log_s: float, t: float) -> None:
    x, y = batch(seed)
    s = 10.0**log_s
    a = soft_nearest_neighbor_loss(x, y, t).item()
    b = soft_nearest_neighbor_loss(s * x, y, t * s * s).item()
    assert b == pytest.approx(a, rel=1e-9, abs=1e-12)


def test_cosine_distance_ignores_the_scale_of_each_point() -> None:
    x, y = batch(seed=6)
    scales = torch.linspace(0.01, 100.0, len(y), dtype=torch.float64)[:, None]
    a = soft_nearest_neighbor_loss(x, y, 0.5, distance="cosine").item()
    assert soft_nearest_neighbor_loss(x * scales, y, 0.5, distance="cosine").item() == pytest.approx(a, rel=1e-10)


# -- gradients and numerical stability ---------------------------------------------------------------


def finite_loss_and_grad(
    x: torch.Tensor, y: torch.Tensor, t: float | torch.Tensor, distance: str = "euclidean"
) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    loss = soft_nearest_neighbor_loss(x, y, t, distance=distance)
    loss.backward()
    assert torch.isfinite(loss), loss
    assert x.grad is not None and torch.isfinite(x.grad).all()
    return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
@pytest.mark.parametrize("temperature", [1e-8, 1e-3, 1.0, 1e3, 1e8])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_gradients_finite_across_scales(dtype: torch.dtype, scale: float, temperature: float, distance: str) -> None:
    x, y = batch(seed=7, scale=scale)
    loss = finite_loss_and_grad(x.to(dtype), y, temperature, distance)
    assert loss.item() >= 0.0


def test_gradients_finite_with_duplicate_points_and_zero_rows() -> None:
    x, y = batch(seed=8)
    x[1] = x[0]
    x[4] = x[0]
    x[5] = 0.0
    for distance in ("euclidean", "cosine"):
        for t in (1e-6, 1.0, 1e6):
            finite_loss_and_grad(x, y, t, distance)
            finite_loss_and_grad(x.float(), y, t, distance)


def test_overflowing_logits_stay_finite() -> None:
    """d/T beyond float32's range: logits saturate instead of turning the loss into NaN."""
    x, y = batch(seed=9, scale=1e15)
    finite_loss_and_grad(x.float(), y, 1e-30)


def test_gradient_matches_finite_differences() -> None:
    x, y = batch(seed=10, b=8, d=3)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: soft_nearest_neighbor_loss(v, y, 0.7), (x,))
    assert torch.autograd.gradcheck(lambda v: soft_nearest_neighbor_loss(v, y, 0.2, distance="cosine"), (x,))


def test_gradient_with_respect_to_temperature() -> None:
    x, y = batch(seed=11)
    t = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda temp: soft_nearest_neighbor_loss(x, y, temp), (t,))


def test_gradient_descent_on_x_separates_classes() -> None:
    """Minimising SNNL pulls same-class points together: the loss must fall."""
    x, y = batch(seed=12, b=24, d=2)
    x = x.float().requires_grad_(True)
    first = soft_nearest_neighbor_loss(x, y, 1.0).item()
    for _ in range(50):  # plain gradient descent (torch.optim's first import alone costs seconds)
        (gradient,) = torch.autograd.grad(soft_nearest_neighbor_loss(x, y, 1.0), x)
        x = (x - 0.5 * gradient).detach().requires_grad_(True)
    assert soft_nearest_neighbor_loss(x, y, 1.0).item() < 0.5 * first


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_rejects_bad_temperatures(bad: float) -> None:
    x, y = batch(seed=13)
    with pytest.raises(ValueError):
        soft_nearest_neighbor_loss(x, y, bad)
    with pytest.raises(ValueError):
        soft_nearest_neighbor_loss(x, y, torch.tensor(bad))


def test_rejects_temperature_whose_inverse_overflows() -> None:
    x, y = batch(seed=13)
    with pytest.raises(ValueError, match="too small"):
        soft_nearest_neighbor_loss(x.float(), y, 1e-40)
    finite_loss_and_grad(x, y, 1e-40)  # fine in float64


def test_rejects_mismatched_labels_and_unknown_distance() -> None:
    x, y = batch(seed=14)
    with pytest.raises(ValueError):
        soft_nearest_neighbor_loss(x, y[:-1], 1.0)
    with pytest.raises(ValueError):
        soft_nearest_neighbor_loss(x, y, 1.0, distance="manhattan")  # type: ignore[arg-type]


def test_pairwise_distances_match_direct_differences() -> None:
    x, _ = batch(seed=15, scale=3.0)
    x = x + 1e3  # far from the origin: the centring keeps the Gram expansion accurate
    expected = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # direct differences, no expansion
    assert torch.allclose(pairwise_distances(x), expected, rtol=1e-9, atol=1e-8)
    assert torch.all(pairwise_distances(x).diagonal() == 0)


# -- helpers -----------------------------------------------------------------------------------------


def test_snnl_of_layers() -> None:
    x, y = batch(seed=16, d=6)
    activations = {"fc1": x, "conv": x.reshape(12, 2, 3), "logits": 5 * x[:, :3]}
    per_layer = snnl_of_layers(activations, y, 2.0)
    assert set(per_layer) == set(activations)
    assert per_layer["conv"].item() == pytest.approx(per_layer["fc1"].item(), rel=1e-12)
    per_layer_t = snnl_of_layers(activations, y, {"fc1": 2.0, "conv": 2.0, "logits": 50.0})
    assert per_layer_t["logits"].item() == pytest.approx(soft_nearest_neighbor_loss(x[:, :3], y, 2.0).item(), rel=1e-9)


# -- the module --------------------------------------------------------------------------------------


def test_module_with_fixed_temperature_matches_function() -> None:
    x, y = batch(seed=17)
    module = SoftNearestNeighborLoss(temperature=2.5)
    assert module(x, y).item() == pytest.approx(soft_nearest_neighbor_loss(x, y, 2.5).item(), rel=1e-12)
    assert module.temperature == pytest.approx(2.5)
    assert list(module.parameters()) == []


def entangled_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes side by side: SNNL(T) has an interior minimum near the within-class scale."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(40) % 2
    x = torch.randn(40, 2, generator=generator) + torch.stack([3.0 * y.float(), torch.zeros(40)], dim=1)
    return x, y


@pytest.mark.parametrize("start", [1e-3, 1.0, 1e3])
def test_learned_temperature_moves_downhill_and_stays_positive(start: float) -> None:
    x, y = entangled_batch(seed=18)
    module = SoftNearestNeighborLoss(temperature=start, learn_temperature=True)
    before = soft_nearest_neighbor_loss(x, y, start).item()
    temperatures = []
    for _ in range(30):
        loss = module(x, y)
        temperatures.append(module.temperature)
        assert torch.isfinite(loss)
    assert module.temperature != pytest.approx(start)
    # The search moves log T by at most the bracket half-width (1) per batch.
    steps = np.abs(np.diff(np.log([start, *temperatures])))
    assert steps.max() <= 1.0 + 1e-9
    assert all(t > 0 and math.isfinite(t) for t in temperatures)
    after = soft_nearest_neighbor_loss(x, y, module.temperature).item()
    assert after < before
    # It approaches the minimiser found by a coarse grid over log T.
    grid = np.logspace(-3, 3, 121)
    best = min(soft_nearest_neighbor_loss(x, y, float(t)).item() for t in grid)
    assert after <= best + 1e-4


def test_learned_temperature_minimises_even_when_the_loss_is_maximised() -> None:
    """Training maximises SNNL (CE − w·SNNL); T must still go to argmin_T, not run off to ∞."""
    x, y = entangled_batch(seed=19)
    x = x.requires_grad_(True)
    module = SoftNearestNeighborLoss(temperature=1.0, learn_temperature=True)
    for _ in range(20):
        (-module(x, y)).backward()  # an outer objective of −SNNL
    assert list(module.parameters()) == []
    assert module.temperature < 100.0
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_learned_temperature_frozen_in_eval_and_saved_in_state_dict() -> None:
    x, y = entangled_batch(seed=20)
    module = SoftNearestNeighborLoss(temperature=10.0, learn_temperature=True).eval()
    module(x, y)
    assert module.temperature == pytest.approx(10.0)
    module.train()
    module(x, y)
    moved = module.temperature
    assert moved != pytest.approx(10.0)
    restored = SoftNearestNeighborLoss(temperature=1.0, learn_temperature=True)
    restored.load_state_dict(module.state_dict())
    assert restored.temperature == pytest.approx(moved)


def test_learned_temperature_ignores_batches_without_pairs() -> None:
    module = SoftNearestNeighborLoss(temperature=2.0, learn_temperature=True)
    loss = module(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    assert module.temperature == pytest.approx(2.0)
