"""Seeded synthetic retrieval benchmark with a landmark-like, manifold-shaped geometry.

Why it exists: re-rankers (query expansion, diffusion, CSA, ...) only show
their worth where plain cosine ranking misses relevant images that are
reachable through chains of close neighbours. Random Gaussian blobs do not
have that structure; real landmark sets do, but their features are not
shipped here. This generator builds such a set from a seed in a fraction of
a second, at any size (ROxford's 70 x 4,993 and well beyond).

What it models, in a ``dim``-dimensional space (all rows L2-normalised,
float32, similarity = dot product):

* **Classes (landmarks)** are smooth curves on the unit sphere, each in its
  own random 3-d subspace: the angle from the curve's start grows linearly
  with the curve parameter ``t`` in [0, 1] up to ``arc`` radians while the
  direction of travel turns by up to ``bend`` radians. Database members are
  spread uniformly along the curve. Members far along the curve (other
  viewpoints of the landmark) have a low cosine to the start, but every
  member has close neighbours on either side.
* **Queries** sit at the start of their class's curve (``t`` below
  ``query_spread``), like a query image showing one particular view.
* **Hard negatives**: one "confuser" curve per class (another building that
  looks alike) starts ``confuser_gap`` radians from the query end and runs
  away from the class curve. Its start beats the far half of the class in
  plain cosine, but it is not linked to the class by a chain of neighbours.
  Confusers carry their own label ``num_classes + c`` (no query has it).
* **Distractors** (label -1), like the +1M sets: a ``distractor_scatter``
  share spread uniformly, the rest in tight clusters of about
  ``distractor_cluster_size`` images (many photos of other places).
* **Observation**: every row also has a common component (``global_weight``;
  CNN descriptors of unrelated images still have a positive cosine) and
  isotropic noise of norm about ``noise`` (varying per image by a log-normal
  factor); a ``junk_fraction`` of each class's members gets ``junk_noise``
  times more noise: ambiguous images, marked junk in the ground truth.

Ground truth follows Revisited Oxford/Paris: per query ``easy`` = members
with ``t < easy_fraction`` (near the query's view), ``hard`` = the rest,
``junk`` = the noisy members, all as sorted int64 database indices, so the
Easy/Medium/Hard protocols apply unchanged. The database order is shuffled.

Measured with the defaults (mAP over the full ranking as Medium / Hard
protocol, mean of seeds 0-2; "diffusion" is the plain mutual-kNN random walk
of ``tests/test_synthetic.py``: k=15, weights s^3, alpha=0.95, 30 iterations
from the top 10; "alpha-QE" is alpha=3 over the top 5; generation on a
2-core CPU):

=======  =====================  =============  =============  =============  ==========
preset   queries x db (dim)     cosine         alpha-QE       diffusion      generation
=======  =====================  =============  =============  =============  ==========
small    20 x 1,000 (64)        0.659 / 0.317  0.712 / 0.390  0.838 / 0.642  5 ms
roxford  70 x 4,993 (128)       0.643 / 0.276  0.701 / 0.348  0.849 / 0.667  30 ms
rparis   70 x 6,322 (128)       0.636 / 0.269  0.694 / 0.336  0.834 / 0.644  30 ms
large    500 x 100,000 (128)    0.570 / 0.195  0.641 / 0.271  0.801 / 0.628  0.5-1 s
=======  =====================  =============  =============  =============  ==========

Over seeds 0-9 of roxford, cosine Medium mAP stayed within 0.59-0.69 and
diffusion gained at least +0.14; the gain barely moves with the diffusion's
own settings (k 10-50, alpha 0.9-0.99: 0.81-0.92 on seeds 0 and 1). For
comparison, R-GeM on the real ROxford scores 0.673 / 0.443 without
re-ranking: the hard half of a synthetic class is harder for cosine than
ROxford's hard images, and diffusion gains more here than on real photos.

Everything is drawn from independent child streams of one
``numpy.random.SeedSequence(seed)``: the same seed and arguments give
bit-identical arrays (on one platform), and changing ``num_db`` leaves the
class curves and the queries unchanged.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields, replace

import numpy as np

__all__ = [
    "DISTRACTOR",
    "HARD_NEGATIVE",
    "MEMBER",
    "PRESETS",
    "SyntheticConfig",
    "SyntheticRetrieval",
    "make_retrieval",
    "make_retrieval_preset",
]

# Codes of ``SyntheticRetrieval.db_kind``.
MEMBER, HARD_NEGATIVE, DISTRACTOR = 0, 1, 2


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator; ``make_retrieval`` takes the same names.

    Angles are in radians on the unit sphere, before the common component and
    the noise are added.
    """

    num_queries: int = 70
    num_db: int = 5000
    dim: int = 128
    num_classes: int | None = None
    """None: one class per ``queries_per_class`` queries (rounded up)."""
    queries_per_class: int = 5
    positive_fraction: float = 0.3
    """Share of the database that are class members."""
    hard_negative_fraction: float = 0.15
    """Share of the database on the confuser curves; the rest are distractors."""
    arc: float = 1.7
    """Angle between a curve's start (the query end) and its far end."""
    arc_jitter: float = 0.2
    """Each class's arc is ``arc * (1 + U(-arc_jitter, arc_jitter))``."""
    bend: float = 2.0
    """Largest turn of a curve's direction of travel over its length; each
    curve draws between half and all of it, turning either way."""
    confuser_gap: float = 0.45
    """Angle from a class's query end to the start of its confuser curve."""
    confuser_arc: float = 1.2
    query_spread: float = 0.05
    """Queries lie at curve parameter ``t`` in ``[0, query_spread]``."""
    easy_fraction: float = 0.4
    """Members with ``t < easy_fraction`` are easy, the others hard."""
    junk_fraction: float = 0.05
    junk_noise: float = 2.0
    noise: float = 0.7
    """Norm of the isotropic noise relative to the unit-norm clean vector."""
    noise_spread: float = 0.15
    """Standard deviation of the log of each image's noise factor."""
    global_weight: float = 0.25
    """Squared share of the component common to every image."""
    distractor_cluster_size: int = 50
    distractor_scatter: float = 0.3
    """Share of the distractors that belong to no cluster."""
    distractor_radius: float = 0.4
    """Angular spread of a distractor cluster."""
    class_size_spread: float = 0.4
    """Standard deviation of the log of the classes' relative sizes."""


@dataclass
class SyntheticRetrieval:
    """A generated benchmark. Database rows are in shuffled order."""

    queries: np.ndarray
    """q x dim float32, L2-normalised rows."""
    database: np.ndarray
    """n x dim float32, L2-normalised rows."""
    query_labels: np.ndarray
    """q int64 class ids in ``[0, num_classes)``."""
    db_labels: np.ndarray
    """n int64: class id for members, ``num_classes + c`` for the confusers
    of class c, -1 for distractors."""
    gnd: list[dict]
    """Per query ``{"easy", "hard", "junk"}``: sorted int64 database indices."""
    num_classes: int
    db_kind: np.ndarray
    """n int8: ``MEMBER``, ``HARD_NEGATIVE`` or ``DISTRACTOR``."""
    db_position: np.ndarray
    """n float32 curve parameter ``t`` in [0, 1]; NaN for distractors."""
    query_position: np.ndarray
    """q float32 curve parameter of each query."""
    seed: int
    config: SyntheticConfig = field(default_factory=SyntheticConfig)

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    @property
    def num_db(self) -> int:
        return self.database.shape[0]

    @property
    def dim(self) -> int:
        return self.database.shape[1]

    def as_revisited(self) -> dict:
        """The ground truth in the layout of the Revisited Oxford/Paris ``gnd_*.pkl`` files."""
        return {
            "imlist": [f"db_{i:07d}" for i in range(self.num_db)],
            "qimlist": [f"query_{i:05d}" for i in range(self.num_queries)],
            "gnd": [{k: v.copy() for k, v in g.items()} for g in self.gnd],
        }


# Sizes of the named presets; every other knob keeps its default.
PRESETS: dict[str, dict] = {
    # Unit tests: generated in milliseconds, dense n x n checks are cheap. The
    # lower dimension makes unrelated images collide more often, so that a
    # thousand images are about as hard for plain cosine as ROxford's five.
    "small": dict(num_queries=20, num_db=1000, dim=64),
    # The shape of Revisited Oxford: 70 queries of 11 landmarks, 4,993 images.
    "roxford": dict(num_queries=70, num_db=4993, dim=128, num_classes=11),
    # The shape of Revisited Paris: 70 queries of 11 landmarks, 6,322 images.
    "rparis": dict(num_queries=70, num_db=6322, dim=128, num_classes=11),
    # Scale tests, standing in for a +100k distractor set.
    "large": dict(num_queries=500, num_db=100_000, dim=128, num_classes=100),
}


def make_retrieval_preset(name: str, seed: int = 0, **overrides) -> SyntheticRetrieval:
    """``make_retrieval`` with the sizes of a named preset (see ``PRESETS``); keywords override them."""
    if name not in PRESETS:
        raise ValueError(f"name: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return make_retrieval(**{**PRESETS[name], **overrides}, seed=seed)


def make_retrieval(
    num_queries: int = 70,
    num_db: int = 5000,
    dim: int = 128,
    num_classes: int | None = None,
    *,
    seed: int = 0,
    **options,
) -> SyntheticRetrieval:
    """Generate a benchmark; ``options`` are the other fields of ``SyntheticConfig``.

    Raises ``ValueError`` (naming the argument) for sizes or shares that
    cannot be honoured, ``TypeError`` for an unknown option.
    """
    known = {f.name for f in fields(SyntheticConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        valid = sorted(known - {"num_queries", "num_db", "dim", "num_classes"})
        raise TypeError(f"make_retrieval: unknown option(s) {unknown}; valid: {valid}")
    cfg = SyntheticConfig(num_queries=num_queries, num_db=num_db, dim=dim, num_classes=num_classes, **options)
    _validate(cfg, seed)
    return _generate(cfg, seed)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")


def _check_float(name: str, value, low: float, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if value < low or (low_open and value == low) or value > high or (high_open and value == high):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name}: must lie in {lo}{low}, {high}{hi}, got {value}")


def _class_count(cfg: SyntheticConfig) -> int:
    if cfg.num_classes is not None:
        return int(cfg.num_classes)
    return max(1, -(-cfg.num_queries // cfg.queries_per_class))


def _counts(cfg: SyntheticConfig) -> tuple[int, int, int]:
    """Members, confusers and distractors in the database."""
    n_pos = int(round(cfg.positive_fraction * cfg.num_db))
    n_hn = min(int(round(cfg.hard_negative_fraction * cfg.num_db)), cfg.num_db - n_pos)
    return n_pos, n_hn, cfg.num_db - n_pos - n_hn


def _validate(cfg: SyntheticConfig, seed) -> None:
    _check_int("seed", seed, 0)
    _check_int("num_queries", cfg.num_queries, 1)
    _check_int("num_db", cfg.num_db, 1)
    # A class needs 5 orthonormal directions besides the common one.
    _check_int("dim", cfg.dim, 8)
    _check_int("queries_per_class", cfg.queries_per_class, 1)
    if cfg.num_classes is not None:
        _check_int("num_classes", cfg.num_classes, 1)
        if cfg.num_classes > cfg.num_db:
            raise ValueError(f"num_classes: {cfg.num_classes} classes cannot fit in num_db={cfg.num_db} database items")
    _check_int("distractor_cluster_size", cfg.distractor_cluster_size, 1)
    _check_float("positive_fraction", cfg.positive_fraction, 0.0, 1.0, low_open=True)
    _check_float("hard_negative_fraction", cfg.hard_negative_fraction, 0.0, 1.0)
    if cfg.positive_fraction + cfg.hard_negative_fraction > 1.0 + 1e-12:
        raise ValueError("hard_negative_fraction: positive_fraction + hard_negative_fraction must not exceed 1, "
                         f"got {cfg.positive_fraction} + {cfg.hard_negative_fraction}")
    _check_float("arc", cfg.arc, 0.0, math.pi, low_open=True)
    _check_float("arc_jitter", cfg.arc_jitter, 0.0, 1.0, high_open=True)
    _check_float("bend", cfg.bend, 0.0)
    _check_float("confuser_gap", cfg.confuser_gap, 0.0, math.pi)
    _check_float("confuser_arc", cfg.confuser_arc, 0.0, math.pi)
    _check_float("query_spread", cfg.query_spread, 0.0, 1.0)
    _check_float("easy_fraction", cfg.easy_fraction, 0.0, 1.0, low_open=True, high_open=True)
    _check_float("junk_fraction", cfg.junk_fraction, 0.0, 1.0, high_open=True)
    _check_float("junk_noise", cfg.junk_noise, 0.0)
    _check_float("noise", cfg.noise, 0.0)
    _check_float("noise_spread", cfg.noise_spread, 0.0)
    _check_float("global_weight", cfg.global_weight, 0.0, 1.0, high_open=True)
    _check_float("distractor_scatter", cfg.distractor_scatter, 0.0, 1.0)
    _check_float("distractor_radius", cfg.distractor_radius, 0.0, math.pi)
    _check_float("class_size_spread", cfg.class_size_spread, 0.0)
    n_pos = _counts(cfg)[0]
    n_classes = _class_count(cfg)
    if n_pos < 2 * n_classes:
        raise ValueError(f"num_classes: {n_classes} classes need at least 2 members each, but "
                         f"positive_fraction * num_db gives {n_pos} members; use fewer classes "
                         "or a larger num_db / positive_fraction")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x


def _split(total: int, weights: np.ndarray, minimum: int, rng: np.random.Generator) -> np.ndarray:
    """Integer sizes summing to ``total``, each at least ``minimum``, drawn in proportion to ``weights``."""
    return minimum + rng.multinomial(total - minimum * len(weights), weights / weights.sum())


def _frames(count: int, size: int, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``count`` random orthonormal ``size``-frames orthogonal to ``g``, as count x size x dim."""
    a = rng.standard_normal((count, g.shape[0], size))
    a -= g[None, :, None] * np.einsum("d,cdk->ck", g, a)[:, None, :]
    q, _ = np.linalg.qr(a)
    return np.ascontiguousarray(np.transpose(q, (0, 2, 1)))


def _curve(frames: np.ndarray, cols: tuple[int, int, int], which: np.ndarray, t: np.ndarray,
           start, length: np.ndarray, bend: np.ndarray) -> np.ndarray:
    """Points at parameter ``t`` on the curves ``which``: the angle from the
    frame's first column grows from ``start`` by ``length * t`` while the
    direction of travel turns by ``bend * t`` between the other two columns."""
    o, a, b = cols
    ang = start + length[which] * t
    phi = bend[which] * t
    out = np.cos(ang)[:, None] * frames[which, o]
    out += (np.sin(ang) * np.cos(phi))[:, None] * frames[which, a]
    out += (np.sin(ang) * np.sin(phi))[:, None] * frames[which, b]
    return out


def _generate(cfg: SyntheticConfig, seed: int) -> SyntheticRetrieval:
    d = cfg.dim
    n_classes = _class_count(cfg)
    n_pos, n_hn, n_dis = _counts(cfg)
    # One stream per block, so that e.g. the curves and the queries do not
    # depend on the database size (like adding a distractor set to a benchmark).
    r_layout, r_class, r_conf, r_dis, r_noise, r_perm, r_query = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7))

    g = r_layout.standard_normal(d)
    g /= np.linalg.norm(g)
    # Landmarks differ in popularity, hence in how many images they have.
    members_per_class = _split(n_pos, np.exp(cfg.class_size_spread * r_layout.standard_normal(n_classes)), 2, r_layout)
    confusers_per_class = _split(n_hn, np.ones(n_classes), 0, r_layout)
    queries_per_class = np.full(n_classes, cfg.num_queries // n_classes)
    queries_per_class[: cfg.num_queries % n_classes] += 1

    # Columns: 0 the query end, 1-2 the class curve's plane of travel, 3-4 the confuser's.
    frames = _frames(n_classes, 5, g, r_class)
    arcs = cfg.arc * (1.0 + cfg.arc_jitter * r_class.uniform(-1.0, 1.0, n_classes))
    bends = cfg.bend * r_class.uniform(0.5, 1.0, n_classes) * r_class.choice([-1.0, 1.0], n_classes)
    m_cls = np.repeat(np.arange(n_classes), members_per_class)
    m_t = r_class.uniform(0.0, 1.0, n_pos)
    q_cls = np.repeat(np.arange(n_classes), queries_per_class)
    q_t = r_query.uniform(0.0, cfg.query_spread, cfg.num_queries)

    h_cls = np.repeat(np.arange(n_classes), confusers_per_class)
    h_t = r_conf.uniform(0.0, 1.0, n_hn)
    conf_arcs = np.full(n_classes, cfg.confuser_arc)
    conf_bends = cfg.bend * r_conf.uniform(0.5, 1.0, n_classes) * r_conf.choice([-1.0, 1.0], n_classes)

    db = np.empty((cfg.num_db, d), np.float32)
    db[:n_pos] = _curve(frames, (0, 1, 2), m_cls, m_t, 0.0, arcs, bends)
    db[n_pos:n_pos + n_hn] = _curve(frames, (0, 3, 4), h_cls, h_t, cfg.confuser_gap, conf_arcs, conf_bends)
    queries = _curve(frames, (0, 1, 2), q_cls, q_t, 0.0, arcs, bends).astype(np.float32)

    n_scatter = int(round(cfg.distractor_scatter * n_dis))
    n_clustered = n_dis - n_scatter
    n_clusters = max(1, n_clustered // cfg.distractor_cluster_size) if n_clustered else 0
    lo = n_pos + n_hn
    if n_clusters:
        sizes = _split(n_clustered, np.exp(0.5 * r_dis.standard_normal(n_clusters)), 0, r_dis)
        centres = _frames(n_clusters, 4, g, r_dis)
        k = np.repeat(np.arange(n_clusters), sizes)
        # A cap around each centre, spread within the cluster's own 3-d subspace.
        radius = np.abs(r_dis.normal(0.0, cfg.distractor_radius, n_clustered))
        u = _unit_rows(r_dis.standard_normal((n_clustered, 3)))
        rows = np.cos(radius)[:, None] * centres[k, 0]
        for j in range(3):
            rows += (np.sin(radius) * u[:, j])[:, None] * centres[k, j + 1]
        db[lo:lo + n_clustered] = rows
        lo += n_clustered
    if n_scatter:
        rows = r_dis.standard_normal((n_scatter, d))
        rows -= np.outer(rows @ g, g)
        db[lo:] = _unit_rows(rows)

    kind = np.repeat(np.array([MEMBER, HARD_NEGATIVE, DISTRACTOR], np.int8), [n_pos, n_hn, n_dis])
    labels = np.concatenate([m_cls, n_classes + h_cls, np.full(n_dis, -1)]).astype(np.int64)
    position = np.concatenate([m_t, h_t, np.full(n_dis, np.nan)]).astype(np.float32)

    sigma = cfg.noise * np.exp(cfg.noise_spread * r_noise.standard_normal(cfg.num_db))
    junk = np.zeros(cfg.num_db, bool)
    # At least one member of every class stays a positive.
    n_junk = np.minimum(np.floor(cfg.junk_fraction * members_per_class + 0.5), members_per_class - 1).astype(np.int64)
    first = np.cumsum(members_per_class) - members_per_class
    for c in np.flatnonzero(n_junk):
        junk[first[c] + r_noise.choice(members_per_class[c], n_junk[c], replace=False)] = True
    sigma[junk] *= cfg.junk_noise
    q_sigma = cfg.noise * np.exp(cfg.noise_spread * r_query.standard_normal(cfg.num_queries))

    common, own = math.sqrt(cfg.global_weight), math.sqrt(1.0 - cfg.global_weight)
    gf = (common * g).astype(np.float32)
    for x, s, rng in ((db, sigma, r_noise), (queries, q_sigma, r_query)):
        # Noise of expected norm ``s`` per row, whatever the dimension.
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        noise *= (s / math.sqrt(d)).astype(np.float32)[:, None]
        x *= np.float32(own)
        x += gf
        x += noise
        _unit_rows(x)
        del noise

    perm = r_perm.permutation(cfg.num_db)
    db, kind, labels, position, junk = db[perm], kind[perm], labels[perm], position[perm], junk[perm]

    # Sorting by label once gives every class's members without a scan per class.
    by_label = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[by_label], np.arange(n_classes + 1))
    per_class = []
    for c in range(n_classes):
        idx = by_label[bounds[c]:bounds[c + 1]]  # ascending, thanks to the stable sort
        jk, easy = junk[idx], position[idx] < cfg.easy_fraction
        per_class.append({"easy": idx[~jk & easy], "hard": idx[~jk & ~easy], "junk": idx[jk]})
    gnd = [{k: v.astype(np.int64, copy=True) for k, v in per_class[c].items()} for c in q_cls]

    return SyntheticRetrieval(
        queries=queries,
        database=db,
        query_labels=q_cls.astype(np.int64),
        db_labels=labels,
        gnd=gnd,
        num_classes=n_classes,
        db_kind=kind,
        db_position=position,
        query_position=q_t.astype(np.float32),
        seed=int(seed),
        config=replace(cfg, num_classes=n_classes),
    )
