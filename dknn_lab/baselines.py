"""Baseline out-of-distribution / adversarial scores to compare DkNN credibility against.

Every score follows credibility's convention: **higher = more in-distribution**, so one AUROC
routine ranks them all the same way. Inputs are float32 feature arrays that the caller extracted
with `agent.engine.taps.ActivationTap` (logits for `softmax_max`, a hidden layer for the other two).

(The softmax maximum and the energy score, which read only the logits, are in
`agent.evaluation.metrics`: a user's evaluation reports them too.)
- `MahalanobisScorer`: Lee et al. 2018, "A simple unified framework for detecting
  out-of-distribution samples and adversarial attacks" — plain version, one layer, no input
  preprocessing, no feature ensemble, so it measures the density model itself.
- `DeepKnnScorer`: Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors" —
  distance to the k-th nearest L2-normalised training feature.
"""

from __future__ import annotations

import numpy as np

from agent.engine.index import EXACT_CHUNK_ELEMENTS, ExactBackend
from agent.engine.preprocess import unit_rows
from agent.errors import ConfigError, InputError

# Rows per chunk when scoring; bounds the temporary (chunk, classes) / (chunk, n_train) matrices.
_MAHALANOBIS_CHUNK = 8192


def _as_2d(features: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """Checks the shape early so a wrong layer gives a clear message, not a matmul traceback."""
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D (n, features), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(f"{name} has {arr.shape[1]} features, the scorer was fitted on {dim}")
    return arr


class MahalanobisScorer:
    """Class-conditional Gaussians with one shared (tied) covariance, as in Lee et al. 2018.

    `score(x) = -min_c (x - mu_c)^T Sigma^{-1} (x - mu_c)`. The covariance is tied because that
    is what makes the generative classifier equivalent to the softmax (LDA) view the paper uses,
    and because per-class covariances are poorly estimated in high dimensions.

    A ridge `ridge * I` is added before inversion: penultimate-layer features (post-ReLU, or after
    PCA to a lower rank) are often rank-deficient, and an exact inverse would then be dominated by
    numerical noise in near-zero directions. The default ridge is `1e-6 * trace(Sigma) / d`,
    i.e. relative to the average variance, so it is scale-free.

    Internally the precision is factored as `W W^T` via `eigh`, and the distance is computed as
    a squared Euclidean distance between whitened points `x W` and whitened means `mu_c W`; this
    is stable (an SPD eigendecomposition) and lets one matmul serve every class.
    """

    def __init__(self, ridge: float | None = None, chunk_size: int = _MAHALANOBIS_CHUNK) -> None:
        if ridge is not None and ridge < 0:
            raise ConfigError(f"ridge must be >= 0, got {ridge}")
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        self.ridge = ridge
        self.chunk_size = chunk_size
        self.means_: np.ndarray | None = None  # (classes_present, d) float64
        self.classes_: np.ndarray | None = None  # labels of the rows of means_
        self.covariance_: np.ndarray | None = None  # (d, d) float64, ridge included
        self.precision_: np.ndarray | None = None  # (d, d) float64, inverse of covariance_
        self.ridge_: float | None = None  # the ridge actually used
        self._whiten: np.ndarray | None = None  # (d, d): precision_ = _whiten @ _whiten.T
        self._white_means: np.ndarray | None = None  # (classes_present, d)

    @property
    def dim(self) -> int:
        if self.means_ is None:
            raise ConfigError("MahalanobisScorer is not fitted; call fit() first")
        return int(self.means_.shape[1])

    def fit(self, features: np.ndarray, labels: np.ndarray, num_classes: int) -> MahalanobisScorer:
        """Estimates class means and the tied covariance from training features and true labels.

        Classes with no training rows are left out (their mean is undefined); the minimum is
        taken over the classes that were seen. Returns `self` for chaining.
        """
        x = _as_2d(features, "features").astype(np.float64, copy=False)
        y = np.asarray(labels).astype(np.int64, copy=False).reshape(-1)
        if len(y) != len(x):
            raise InputError(f"{len(x)} feature rows but {len(y)} labels")
        if len(x) < 2:
            raise InputError("need at least 2 training rows to estimate a covariance")
        if y.min() < 0 or y.max() >= num_classes:
            raise InputError(f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")

        counts = np.bincount(y, minlength=num_classes)
        sums = np.zeros((num_classes, x.shape[1]), dtype=np.float64)
        np.add.at(sums, y, x)
        present = np.flatnonzero(counts > 0)
        means = sums[present] / counts[present, None]

        # Tied covariance: pooled within-class scatter, divided by n (the MLE used by Lee et al.).
        index_of = np.full(num_classes, -1, dtype=np.int64)
        index_of[present] = np.arange(len(present))
        centered = x - means[index_of[y]]
        d = x.shape[1]
        cov = centered.T @ centered / len(x)
        ridge = self.ridge if self.ridge is not None else 1e-6 * float(np.trace(cov)) / d
        if ridge == 0.0 and self.ridge is None:
            ridge = 1e-12  # all-constant features: keep the matrix invertible
        cov = cov + ridge * np.eye(d)

        eigvals, eigvecs = np.linalg.eigh(cov)
        # eigh of an SPD matrix can still return tiny negatives from rounding; floor at the ridge.
        floor = max(ridge, np.finfo(np.float64).tiny)
        eigvals = np.maximum(eigvals, floor)
        whiten = eigvecs / np.sqrt(eigvals)[None, :]

        self.means_ = means
        self.classes_ = present
        self.covariance_ = cov
        self.precision_ = whiten @ whiten.T
        self.ridge_ = ridge
        self._whiten = whiten
        self._white_means = means @ whiten
        return self

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of every row to every seen class mean, `(n, classes)`.

        Useful for diagnostics (which class is closest); `score` is minus the row-wise minimum.
        """
        if self._whiten is None or self._white_means is None:
            raise ConfigError("MahalanobisScorer is not fitted; call fit() first")
        x = _as_2d(features, "features", self.dim)
        m = self._white_means
        m_sq = (m * m).sum(axis=1)
        out = np.empty((len(x), len(m)), dtype=np.float64)
        for start in range(0, len(x), self.chunk_size):
            z = x[start : start + self.chunk_size].astype(np.float64) @ self._whiten
            d2 = (z * z).sum(axis=1)[:, None] - 2.0 * (z @ m.T) + m_sq[None, :]
            out[start : start + len(z)] = np.maximum(d2, 0.0)  # expansion can dip below 0
        return out

    def score(self, features: np.ndarray) -> np.ndarray:
        """`-min_c` squared Mahalanobis distance, `(n,)` float64; higher = more in-distribution."""
        return -self.distances(features).min(axis=1)


class DeepKnnScorer:
    """Distance to the k-th nearest normalised training feature, as in Sun et al. 2022.

    Normalisation matters: the paper shows that without it the k-NN distance is much weaker,
    because feature norms vary a lot within the in-distribution data. The search is the engine's
    exact backend (`agent.engine.index.ExactBackend`) over the unit-length training rows: exact
    neighbours, no approximate index needed at these sizes. `k=50` is the paper's choice for
    CIFAR-10 with the full training set.

    Search runs in float32; distances near zero therefore carry an absolute error around
    `sqrt(float32 eps)` ~ 3e-4, irrelevant for ranking OOD inputs.
    """

    def __init__(self, k: int = 50, chunk_elements: int = EXACT_CHUNK_ELEMENTS) -> None:
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if chunk_elements < 1:
            raise ConfigError(f"chunk_elements must be >= 1, got {chunk_elements}")
        self.k = k
        self.chunk_elements = chunk_elements
        self._index: ExactBackend | None = None  # over the unit-length training rows

    @property
    def n_items(self) -> int:
        return 0 if self._index is None else self._index.n_items

    @property
    def dim(self) -> int:
        if self._index is None:
            raise ConfigError("DeepKnnScorer is not fitted; call fit() first")
        return self._index.dim

    def fit(self, features: np.ndarray) -> DeepKnnScorer:
        """Indexes the L2-normalised training features; labels are not used by this method."""
        x = _as_2d(features, "features")
        if len(x) < self.k:
            raise ConfigError(f"k={self.k} exceeds the {len(x)} training rows")
        self._index = ExactBackend(unit_rows(x.astype(np.float32)), chunk_elements=self.chunk_elements)
        return self

    def kth_distance(self, features: np.ndarray) -> np.ndarray:
        """Euclidean distance from each normalised row to its k-th nearest training row, `(n,)`."""
        if self._index is None:
            raise ConfigError("DeepKnnScorer is not fitted; call fit() first")
        x = _as_2d(features, "features", self.dim)
        distances, _ = self._index.search(unit_rows(x.astype(np.float32)), self.k)
        return distances[:, -1].astype(np.float64)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Minus the k-th neighbour distance, `(n,)` float64; higher = more in-distribution."""
        return -self.kth_distance(features)
