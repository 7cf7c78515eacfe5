"""Rank captioning models from pairwise judge battles (CapArena, arXiv 2503.12329).

- ``online_elo``: CapArena's sequential Elo (K = 4, scale 400, base 10, start 1000).
- ``elo_ratings``: CapArena's bootstrap of it (same resampling stream as its pandas code), as
  median ratings with 2.5/97.5 percentile intervals.
- ``bradley_terry`` / ``bt_ratings``: maximum likelihood Bradley–Terry with Davidson ties and a
  weak Gaussian prior, on the Elo scale, with bootstrap intervals.
- ``caparena_auto``: the CapArena-Auto score of one model against fixed baselines.
- ``spearman_kendall``: rank agreement of two rankings.

docs/ranking.md gives the formulas and where capbench deviates from the official code.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import optimize, stats

from capbench.errors import InputError
from capbench.portable import power_pair

ELO_K = 4.0
ELO_SCALE = 400.0
ELO_BASE = 10.0
ELO_INITIAL = 1000.0
# Standard deviation of the Gaussian prior on each natural-log strength (and on log ν), about
# 695 Elo points: weak next to a few dozen battles, yet it keeps an unbeaten model finite.
PRIOR_SD = 4.0
# Bootstrap indices held at once by elo_ratings (64 MB of int32): larger blocks mean fewer, longer
# numpy calls per battle, which is where the time goes.
_ELO_BLOCK = 16_000_000
_OUTCOME_FIX = "use 1.0 if model_a won, 0.0 if model_b won, 0.5 for a tie"
TieModel = Literal["davidson", "half"]


@dataclass(frozen=True)
class Battle:
    """One pairwise judgment: ``outcome`` is 1.0 if model_a won, 0.0 if model_b won, 0.5 for a tie."""

    model_a: str
    model_b: str
    outcome: float


@dataclass(frozen=True)
class Rating:
    """A model's rating with its bootstrap interval and its record on the original battles."""

    model: str
    rating: float
    low: float
    high: float
    battles: int
    wins: int
    losses: int
    ties: int


@dataclass(frozen=True)
class BTFit:
    """A Bradley–Terry fit: centred natural-log strengths and Davidson's tie parameter ν (0 without ties)."""

    log_strength: dict[str, float]
    nu: float


def _is_outcome(value: object) -> bool:
    """Tell whether ``value`` is a number equal to 0, 0.5 or 1 (booleans are not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return value in (0, 0.5, 1)


def _check_battle(battle: object, label: str) -> None:
    """Raise InputError naming ``label`` if ``battle`` is not a valid Battle."""
    if not isinstance(battle, Battle):
        raise InputError(f"{label} is a {type(battle).__name__}, not a Battle; build it with Battle(a, b, outcome)")
    for side in (battle.model_a, battle.model_b):
        if not isinstance(side, str) or not side:
            raise InputError(f"{label} has model name {side!r}; model names must be non-empty strings")
    if battle.model_a == battle.model_b:
        raise InputError(f"{label} pits {battle.model_a!r} against itself; drop it, a model cannot battle itself")
    if not _is_outcome(battle.outcome):
        raise InputError(
            f"{label} ({battle.model_a} vs {battle.model_b}) has outcome {battle.outcome!r}; {_OUTCOME_FIX}"
        )


def _checked(battles: Iterable[Battle], need: int = 0) -> list[Battle]:
    """Return ``battles`` as a list after validating each one (and that there are at least ``need``)."""
    checked = list(battles)
    for index, battle in enumerate(checked):
        _check_battle(battle, f"battle {index}")
    if len(checked) < need:
        raise InputError(f"ranking needs at least {need} battle(s), got {len(checked)}; pass the judged battles")
    return checked


def battles_from_records(rows: Iterable[Mapping[str, Any]]) -> list[Battle]:
    """Build battles from mappings with keys ``model_a``, ``model_b`` and ``outcome``.

    Args:
        rows: Records such as JSON lines; extra keys are ignored.

    Returns:
        One Battle per row, in order, with the outcome as a float.

    Raises:
        InputError: A row is not a mapping, lacks a key, or holds an invalid battle; the message names the row.
    """
    battles = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InputError(f"row {index} is a {type(row).__name__}; each row must be a mapping")
        missing = [key for key in ("model_a", "model_b", "outcome") if key not in row]
        if missing:
            raise InputError(f"row {index} lacks {', '.join(missing)}; each row needs model_a, model_b and outcome")
        battle = Battle(row["model_a"], row["model_b"], row["outcome"])
        _check_battle(battle, f"row {index}")
        battles.append(Battle(battle.model_a, battle.model_b, float(battle.outcome)))
    return battles


def _encode(battles: Sequence[Battle]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Return the models in order of first appearance and each battle's model indices and outcome."""
    index: dict[str, int] = {}
    for battle in battles:
        index.setdefault(battle.model_a, len(index))
        index.setdefault(battle.model_b, len(index))
    a = np.array([index[battle.model_a] for battle in battles], dtype=np.intp)
    b = np.array([index[battle.model_b] for battle in battles], dtype=np.intp)
    score = np.array([battle.outcome for battle in battles], dtype=float)
    return list(index), a, b, score


def online_elo(
    battles: Sequence[Battle],
    k: float = ELO_K,
    scale: float = ELO_SCALE,
    base: float = ELO_BASE,
    initial: float = ELO_INITIAL,
) -> dict[str, float]:
    """Run CapArena's online Elo over ``battles`` in the given order.

    A model starts at ``initial`` when it first appears. For each battle, with the ratings before it,
    E_a = 1 / (1 + base^((R_b - R_a) / scale)), E_b likewise, then R_a += k (S_a - E_a) and
    R_b += k (1 - S_a - E_b).

    Args:
        battles: The battles, processed one at a time; their order changes the result.
        k: Update step.
        scale: Rating difference that multiplies the odds by ``base``.
        base: Odds base.
        initial: Starting rating.

    Returns:
        Final ratings, keyed by model in order of first appearance.

    Raises:
        InputError: A battle is invalid.
    """
    ratings: dict[str, float] = {}
    for battle in _checked(battles):
        ra = ratings.setdefault(battle.model_a, initial)
        rb = ratings.setdefault(battle.model_b, initial)
        # (R_a - R_b)/scale is exactly -(R_b - R_a)/scale, so power_pair gives both odds from one call.
        ea, eb = 1 / (1 + power_pair(base, np.array([(rb - ra) / scale])))[:, 0]
        ratings[battle.model_a] = float(ra + k * (battle.outcome - ea))
        ratings[battle.model_b] = float(rb + k * (1 - battle.outcome - eb))
    return ratings


def _elo_rounds(
    a: np.ndarray,
    b: np.ndarray,
    score: np.ndarray,
    samples: np.ndarray,
    n_models: int,
    k: float = ELO_K,
    scale: float = ELO_SCALE,
    base: float = ELO_BASE,
    initial: float = ELO_INITIAL,
) -> np.ndarray:
    """Run online Elo on many resamples at once; ``samples[t, r]`` is the t-th battle of round r.

    The same arithmetic as ``online_elo``, vectorised across rounds so 1000 rounds cost one pass over
    the battles. Returns a (rounds, models) array, NaN where a model is absent from a round.
    """
    rounds = samples.shape[1]
    ratings = np.full(rounds * n_models, float(initial))
    drawn = np.zeros(rounds * n_models, dtype=bool)
    offset = np.arange(rounds) * n_models
    sides = np.stack([a, b])
    scores = np.stack([score, 1 - score])
    for rows in samples:
        # Row 0 is model_a's, row 1 model_b's: rating slots, ratings and scores S_a and 1 - S_a.
        slot = sides.take(rows, axis=1) + offset  # take: ten times faster than [:, rows] here
        r = ratings[slot]
        expected = 1 / (1 + power_pair(base, (r[1] - r[0]) / scale))
        ratings[slot] = r + k * (scores.take(rows, axis=1) - expected)
        drawn[slot] = True
    ratings[~drawn] = np.nan
    return ratings.reshape(rounds, n_models)


def _records(n_models: int, a: np.ndarray, b: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Return a (models, 3) array of wins, losses and ties on the given battles."""
    won_a, won_b, tie = score == 1, score == 0, score == 0.5
    wins = np.bincount(a[won_a], minlength=n_models) + np.bincount(b[won_b], minlength=n_models)
    losses = np.bincount(a[won_b], minlength=n_models) + np.bincount(b[won_a], minlength=n_models)
    ties = np.bincount(a[tie], minlength=n_models) + np.bincount(b[tie], minlength=n_models)
    return np.stack([wins, losses, ties], axis=1)


def _summarise(
    models: list[str], a: np.ndarray, b: np.ndarray, score: np.ndarray, point: np.ndarray, draws: np.ndarray
) -> list[Rating]:
    """Combine point estimates, bootstrap draws (rounds, models) and records into Ratings, best first."""
    with warnings.catch_warnings():
        # A model absent from every round has no interval; NaN says so, the warning adds nothing.
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(draws, [2.5, 97.5], axis=0)
    records = _records(len(models), a, b, score)
    ratings = [
        Rating(
            model=model,
            rating=float(point[i]),
            low=float(low[i]),
            high=float(high[i]),
            battles=int(records[i].sum()),
            wins=int(records[i, 0]),
            losses=int(records[i, 1]),
            ties=int(records[i, 2]),
        )
        for i, model in enumerate(models)
    ]
    # NaN ratings go last; equal ratings are ordered by name so the order is reproducible.
    return sorted(ratings, key=lambda r: (math.isnan(r.rating), -r.rating if not math.isnan(r.rating) else 0, r.model))


def elo_ratings(battles: Sequence[Battle], rounds: int = 1000, seed: int = 42, **elo: float) -> list[Rating]:
    """Rate models with CapArena's bootstrapped online Elo.

    One ``numpy.random.RandomState(seed)`` draws, per round, ``choice(n, size=n, replace=True)``: the
    stream that pandas' ``DataFrame.sample(frac=1.0, replace=True)`` draws after ``np.random.seed(seed)``
    in the official code. Online Elo then runs on the sampled battles in sampled order. numpy's global
    random state is not touched.

    Args:
        battles: The battles, in file order (the order fixes which battle each index draws).
        rounds: Bootstrap rounds.
        seed: Seed of the resampling stream (CapArena uses 42).
        **elo: ``k``, ``scale``, ``base`` or ``initial`` for ``online_elo``.

    Returns:
        One Rating per model, best first: the median over rounds (rounds where the model is absent
        are skipped), the 2.5/97.5 percentiles, and its record on the original battles.

    Raises:
        InputError: There are no battles, or a battle is invalid.
    """
    checked = _checked(battles, need=1)
    if rounds < 1:
        raise InputError(f"rounds is {rounds}; use at least 1 bootstrap round")
    models, a, b, score = _encode(checked)
    n = len(checked)
    state = np.random.RandomState(seed)
    block = max(1, min(rounds, _ELO_BLOCK // n))
    draws = []
    for start in range(0, rounds, block):
        samples = np.empty((n, min(block, rounds - start)), dtype=np.int32 if n < 2**31 else np.intp)
        for column in range(samples.shape[1]):
            samples[:, column] = state.choice(n, size=n, replace=True)
        draws.append(_elo_rounds(a, b, score, samples, len(models), **elo))
    draws_all = np.concatenate(draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        point = np.nanmedian(draws_all, axis=0)
    return _summarise(models, a, b, score, point, draws_all)


@dataclass(frozen=True)
class _PairCounts:
    """Sufficient statistics of Davidson's model for one set of battles."""

    first: np.ndarray  # model index i of each compared pair, i < j
    second: np.ndarray  # model index j of each compared pair
    games: np.ndarray  # battles of each pair
    credit: np.ndarray  # per model: wins + ties / 2
    ties: float  # total ties


def _cells(n_models: int, a: np.ndarray, b: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Map each battle to a cell of the stacked (wins[winner, loser], ties[low, high]) matrices, flattened."""
    winner = np.where(score == 0, b, a)
    loser = np.where(score == 0, a, b)
    tie_cell = n_models * n_models + np.minimum(a, b) * n_models + np.maximum(a, b)
    return np.where(score == 0.5, tie_cell, winner * n_models + loser)


def _pair_counts(cell_counts: np.ndarray, n_models: int, first: np.ndarray, second: np.ndarray) -> _PairCounts:
    """Reduce per-cell counts (see ``_cells``) to the statistics of the pairs (first, second)."""
    wins = cell_counts[: n_models * n_models].reshape(n_models, n_models)
    ties = cell_counts[n_models * n_models :].reshape(n_models, n_models)
    games = (wins + wins.T + ties + ties.T)[first, second]
    credit = wins.sum(1) + (ties.sum(0) + ties.sum(1)) / 2
    return _PairCounts(first, second, games.astype(float), credit.astype(float), float(ties.sum()))


def _neg_log_posterior(
    x: np.ndarray, counts: _PairCounts, precision: float, davidson: bool
) -> tuple[float, np.ndarray]:
    """Return minus the log posterior of Davidson's model and its gradient.

    ``x`` holds the log-strengths θ, then log ν when ``davidson``. Per battle, with D = π_i + π_j +
    ν √(π_i π_j), a win of i adds θ_i - log D and a tie adds log ν + (θ_i + θ_j)/2 - log D, so the
    log-likelihood is credit · θ + ties · log ν - Σ_pairs games · log D. Without ``davidson`` ν = 0 and
    a tie is half a win for each side. The prior adds -precision/2 · |x|².
    """
    m = counts.credit.size
    theta = x[:m]
    log_nu = x[m] if davidson else -np.inf
    ti, tj = theta[counts.first], theta[counts.second]
    log_tie = log_nu + (ti + tj) / 2
    log_d = np.logaddexp(np.logaddexp(ti, tj), log_tie)
    p_tie = np.exp(log_tie - log_d)
    # d log D / d θ_i = P(i wins) + P(tie) / 2.
    grad_i = counts.games * (np.exp(ti - log_d) + p_tie / 2)
    grad_j = counts.games * (np.exp(tj - log_d) + p_tie / 2)
    loglik = counts.credit @ theta - counts.games @ log_d
    grad = counts.credit - np.bincount(counts.first, grad_i, m) - np.bincount(counts.second, grad_j, m)
    if davidson:
        loglik += log_nu * counts.ties
        grad = np.append(grad, counts.ties - counts.games @ p_tie)
    return float(-loglik + precision * (x @ x) / 2), -grad + precision * x


def _fit(counts: _PairCounts, precision: float, davidson: bool, x0: np.ndarray | None = None) -> np.ndarray:
    """Return the MAP log-strengths (then log ν when ``davidson``) by L-BFGS-B with the analytic gradient."""
    size = counts.credit.size + int(davidson)
    result = optimize.minimize(
        _neg_log_posterior,
        np.zeros(size) if x0 is None else x0,
        args=(counts, precision, davidson),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-8},
    )
    return result.x


def _prepare(
    battles: Sequence[Battle], ties: str, prior: float
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, bool, float]:
    """Validate the Bradley–Terry inputs; return the encoded battles, whether to fit ties, and the prior precision."""
    if ties not in ("davidson", "half"):
        raise InputError(f"ties is {ties!r}; use 'davidson' (fit a tie parameter) or 'half' (a tie = half a win)")
    if not prior > 0:
        raise InputError(f"prior is {prior!r}; use a positive standard deviation (math.inf for no prior)")
    models, a, b, score = _encode(_checked(battles, need=1))
    return models, a, b, score, ties == "davidson", 1 / prior**2


def _pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct compared pairs (i, j), i < j."""
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Return a context that keeps BLAS on one thread, when threadpoolctl is installed.

    L-BFGS-B calls BLAS on tiny matrices thousands of times per bootstrap; on a busy machine
    OpenBLAS threads wait on each other there, which made 1000 fits ten times slower.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _centred(x: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Return the log-strengths in ``x`` centred on the present models, NaN for absent ones."""
    theta = np.where(present, x[: present.size], np.nan)
    return theta - np.nanmean(theta)


def fit_bradley_terry(battles: Sequence[Battle], ties: TieModel = "davidson", prior: float = PRIOR_SD) -> BTFit:
    """Fit Bradley–Terry strengths with ties by maximum a posteriori on aggregated counts.

    Davidson's model: P(i beats j) = π_i / D, P(tie) = ν √(π_i π_j) / D, D = π_i + π_j + ν √(π_i π_j).
    With ``ties="half"`` a tie counts as half a win for each side and ν = 0.

    Args:
        battles: The battles; their order does not matter.
        ties: "davidson" or "half".
        prior: Standard deviation of a zero-mean Gaussian prior on each log-strength and on log ν;
            ``math.inf`` turns it off (an unbeaten model then diverges).

    Returns:
        Log-strengths centred to mean 0, keyed by model in order of first appearance, and ν.

    Raises:
        InputError: No battles, an invalid battle, or an invalid option.
    """
    models, a, b, score, davidson, precision = _prepare(battles, ties, prior)
    m = len(models)
    cell_counts = np.bincount(_cells(m, a, b, score), minlength=2 * m * m)
    with _one_blas_thread():
        x = _fit(_pair_counts(cell_counts, m, *_pairs(a, b)), precision, davidson)
    theta = _centred(x, np.ones(m, dtype=bool))
    nu = float(np.exp(x[m])) if davidson else 0.0
    return BTFit(log_strength=dict(zip(models, theta.tolist(), strict=True)), nu=nu)


def _to_elo(theta: np.ndarray) -> np.ndarray:
    """Put natural-log strengths on the Elo scale: 1000 + 400 log10(π)."""
    return ELO_INITIAL + ELO_SCALE * theta / math.log(ELO_BASE)


def bradley_terry(battles: Sequence[Battle], ties: TieModel = "davidson", prior: float = PRIOR_SD) -> dict[str, float]:
    """Return Bradley–Terry ratings on the Elo scale, 1000 + 400 log10(π_i), with mean log-strength 0.

    Arguments and errors are those of ``fit_bradley_terry``; ratings are keyed by model in order of
    first appearance.
    """
    fit = fit_bradley_terry(battles, ties=ties, prior=prior)
    elo = _to_elo(np.array(list(fit.log_strength.values())))
    return dict(zip(fit.log_strength, elo.tolist(), strict=True))


def bt_ratings(
    battles: Sequence[Battle],
    rounds: int = 1000,
    seed: int = 42,
    ties: TieModel = "davidson",
    prior: float = PRIOR_SD,
) -> list[Rating]:
    """Rate models with Bradley–Terry and bootstrap percentile intervals.

    Each round resamples the battles with replacement, drawn as multinomial counts over the distinct
    (winner, loser) and tie cells, which has the same distribution as resampling rows, and refits
    starting from the full fit. A model absent from a round is skipped in that round's percentiles.

    Args:
        battles: The battles.
        rounds: Bootstrap rounds.
        seed: Seed of ``numpy.random.default_rng``.
        ties: "davidson" or "half", as in ``bradley_terry``.
        prior: Prior standard deviation, as in ``bradley_terry``.

    Returns:
        One Rating per model, best first: the fit on all battles, the 2.5/97.5 bootstrap percentiles,
        and its record.

    Raises:
        InputError: No battles, an invalid battle, or an invalid option.
    """
    models, a, b, score, davidson, precision = _prepare(battles, ties, prior)
    if rounds < 1:
        raise InputError(f"rounds is {rounds}; use at least 1 bootstrap round")
    m, n = len(models), len(a)
    first, second = _pairs(a, b)
    cells, frequency = np.unique(_cells(m, a, b, score), return_counts=True)
    cell_counts = np.zeros(2 * m * m, dtype=np.int64)
    cell_counts[cells] = frequency
    rng = np.random.default_rng(seed)
    draws = np.empty((rounds, m))
    with _one_blas_thread():
        x_full = _fit(_pair_counts(cell_counts, m, first, second), precision, davidson)
        for round_ in range(rounds):
            cell_counts[cells] = rng.multinomial(n, frequency / n)
            counts = _pair_counts(cell_counts, m, first, second)
            present = (np.bincount(first, counts.games, m) + np.bincount(second, counts.games, m)) > 0
            draws[round_] = _centred(_fit(counts, precision, davidson, x0=x_full), present)
    point = _to_elo(_centred(x_full, np.ones(m, dtype=bool)))
    return _summarise(models, a, b, score, point, _to_elo(draws))


def _tally() -> dict[str, int]:
    """Return empty per-baseline counts."""
    return dict.fromkeys(("wins", "losses", "ties", "failed"), 0)


def caparena_auto(
    outcomes: Iterable[tuple[str, float | None]], baselines: Sequence[str] | None = None
) -> dict[str, Any]:
    """Score one model against fixed baselines as CapArena-Auto does, per valid pair.

    Per baseline, score = 100 (wins - losses) / valid pairs; the overall score is the mean over
    baselines with at least one valid pair. Failed judgments (None) are counted, not scored.

    Args:
        outcomes: (baseline name, outcome for the tested model: 1 win, 0 loss, 0.5 tie, None failed).
        baselines: The expected baselines, in report order; one without pairs gets score None.
            Outcomes naming another baseline are an error. None accepts any baseline.

    Returns:
        ``{"score": float | None, "baselines": {name: {"score", "wins", "losses", "ties", "pairs",
        "failed"}}, "failed": int}``.

    Raises:
        InputError: An item is not a (name, outcome) pair, names an unknown baseline, or has a bad outcome.
    """
    tallies: dict[str, dict[str, int]] = {name: _tally() for name in baselines or ()}
    field = {1.0: "wins", 0.0: "losses", 0.5: "ties"}
    for index, item in enumerate(outcomes):
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str):
            raise InputError(f"outcome {index} is {item!r}; give (baseline name, outcome) pairs")
        name, outcome = item
        if baselines is not None and name not in tallies:
            raise InputError(f"outcome {index} names baseline {name!r}, not one of {list(tallies)}; fix the name")
        if outcome is not None and not _is_outcome(outcome):
            raise InputError(f"outcome {index} (vs {name}) is {outcome!r}; use 1 win, 0 loss, 0.5 tie, None failed")
        tally = tallies.setdefault(name, _tally())
        tally["failed" if outcome is None else field[float(outcome)]] += 1
    report = {}
    for name, tally in tallies.items():
        pairs = tally["wins"] + tally["losses"] + tally["ties"]
        score = 100 * (tally["wins"] - tally["losses"]) / pairs if pairs else None
        report[name] = {"score": score, **tally, "pairs": pairs}
    scores = [entry["score"] for entry in report.values() if entry["score"] is not None]
    return {
        "score": sum(scores) / len(scores) if scores else None,
        "baselines": report,
        "failed": sum(tally["failed"] for tally in tallies.values()),
    }


def spearman_kendall(ranking_a: Sequence[str], ranking_b: Sequence[str]) -> dict[str, float]:
    """Return Spearman's ρ and Kendall's τ-b between two rankings (best first) over their shared models.

    Args:
        ranking_a: Model names, best first.
        ranking_b: Model names, best first.

    Returns:
        ``{"spearman": ρ, "kendall": τ, "shared": number of shared models}``.

    Raises:
        InputError: A ranking repeats a model, or fewer than 2 models are shared.
    """
    for label, ranking in (("ranking_a", ranking_a), ("ranking_b", ranking_b)):
        repeated = sorted(model for model, count in Counter(ranking).items() if count > 1)
        if repeated:
            raise InputError(f"{label} lists {repeated} more than once; give each model once")
    position_b = {model: i for i, model in enumerate(ranking_b)}
    shared = [model for model in ranking_a if model in position_b]
    if len(shared) < 2:
        raise InputError(f"the rankings share {len(shared)} model(s); rank correlation needs at least 2 in both")
    ranks_b = [position_b[model] for model in shared]
    rho = stats.spearmanr(range(len(shared)), ranks_b).statistic
    tau = stats.kendalltau(range(len(shared)), ranks_b).statistic
    return {"spearman": float(rho), "kendall": float(tau), "shared": len(shared)}
