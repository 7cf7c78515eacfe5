"""Tests for capbench.ranking: hand-computed and textbook cases, and parity with CapArena's Elo pipeline."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from capbench.errors import InputError
from capbench.portable import power_pair
from capbench.ranking import (
    Battle,
    Rating,
    _cells,
    _elo_rounds,
    _encode,
    _neg_log_posterior,
    _pair_counts,
    _pairs,
    battles_from_records,
    bradley_terry,
    bt_ratings,
    caparena_auto,
    elo_ratings,
    fit_bradley_terry,
    online_elo,
    spearman_kendall,
)

NO_PRIOR = math.inf


def repeat(model_a: str, model_b: str, outcome: float, times: int) -> list[Battle]:
    """Return ``times`` copies of one battle."""
    return [Battle(model_a, model_b, outcome)] * times


def simulate(strengths: dict[str, float], nu: float, n: int, seed: int) -> list[Battle]:
    """Draw ``n`` battles between random pairs from Davidson's model with the given log-strengths."""
    rng = np.random.default_rng(seed)
    models = list(strengths)
    theta = np.array(list(strengths.values()))
    first = rng.integers(len(models), size=n)
    second = (first + 1 + rng.integers(len(models) - 1, size=n)) % len(models)
    pi, pj = np.exp(theta[first]), np.exp(theta[second])
    tie = nu * np.sqrt(pi * pj)
    u = rng.random(n) * (pi + pj + tie)
    outcome = np.where(u < pi, 1.0, np.where(u < pi + pj, 0.0, 0.5))
    return [Battle(models[i], models[j], float(o)) for i, j, o in zip(first, second, outcome, strict=True)]


def by_model(ratings: list[Rating]) -> dict[str, Rating]:
    """Index ratings by model name."""
    return {rating.model: rating for rating in ratings}


@pytest.fixture
def global_numpy_state() -> Iterator[None]:
    """Restore numpy's global random state after a test that seeds it."""
    state = np.random.get_state()
    yield
    np.random.set_state(state)


# --- portable powers ---------------------------------------------------------------------------

# (base, x, base**x, base**-x) from power_pair, as float.hex. power_pair touches the data only with +, -, *, /, rint and
# ldexp, which IEEE 754 makes correctly rounded or exact in every SIMD width, and takes its constants from
# Python's decimal and int arithmetic, so every x86-64 and ARM CPU reproduces these bits. Some are 1 ulp from
# the C library's pow (10**0.5, 10**-1, 2**±0.5), and numpy's power on AVX-512 differs from both at 10**2.5: the
# table pins capbench's own bits, not a libm's.
POWER_BITS = [
    (10.0, 0.0, "0x1.0000000000000p+0", "0x1.0000000000000p+0"),
    (10.0, 1e-300, "0x1.0000000000000p+0", "0x1.0000000000000p+0"),
    (10.0, 0.0025, "0x1.017a57ecca4b7p+0", "0x1.fd0fa80ab1673p-1"),
    (10.0, -0.0125, "0x1.f1793807ce68bp-1", "0x1.0779af8d53769p+0"),
    (10.0, 0.1, "0x1.4248ef8fc2604p+0", "0x1.96b230bcdc434p-1"),
    (10.0, -0.37, "0x1.b4d142e995c49p-2", "0x1.2c0fb09811e7ep+1"),
    (10.0, 0.5, "0x1.94c583ada5b52p+1", "0x1.43d136248490fp-2"),
    (10.0, -1.0, "0x1.9999999999999p-4", "0x1.4000000000000p+3"),
    (10.0, 2.5, "0x1.3c3a4edfa9759p+8", "0x1.9e7c6e43390b6p-9"),
    (10.0, -3.75, "0x1.74eea61c12623p-13", "0x1.5f769cae07281p+12"),
    (10.0, 9.99, "0x1.233d4878c7703p+33", "0x1.c20c8c6868ce9p-34"),
    (10.0, 22.0, "0x1.0f0cf064dd592p+73", "0x1.e392010175ee6p-74"),  # 10**22 is exact
    (10.0, 100.7, "0x1.6e9fdb59b9cb5p+334", "0x1.6582a08d735a6p-335"),
    (10.0, -250.3, "0x1.6f72ca2e6e1f0p-832", "0x1.64b566314a340p+831"),
    (10.0, 308.25, "0x1.fa788589d81d3p+1023", "0x0.40b2ddcd8aaa2p-1022"),  # near overflow, subnormal
    (10.0, 308.26, "inf", "0x0.3f39d97c0a7fdp-1022"),
    (10.0, -323.5, "0x0.0000000000001p-1022", "inf"),  # the smallest subnormal
    (10.0, 1e300, "inf", "0x0.0p+0"),
    (10.0, math.inf, "inf", "0x0.0p+0"),
    (10.0, math.nan, "nan", "nan"),
    (2.0, 0.5, "0x1.6a09e667f3bccp+0", "0x1.6a09e667f3bccp-1"),
    (2.0, -0.3, "0x1.9fdf8bcce533ep-1", "0x1.3b2c47bff8329p+0"),
    (2.0, 7.25, "0x1.306fe0a31b715p+7", "0x1.ae89f995ad3aep-8"),
    (2.0, -1074.0, "0x0.0000000000001p-1022", "inf"),
    (math.e, 1.0, "0x1.5bf0a8b145769p+1", "0x1.78b56362cef38p-2"),
    (math.e, -0.25, "0x1.8ebef9eac820bp-1", "0x1.48b5e3c3e8186p+0"),
]


@pytest.mark.filterwarnings("error")  # inf, 0 and NaN come without warnings
@pytest.mark.parametrize("base", sorted({row[0] for row in POWER_BITS}))
def test_power_reproduces_frozen_bits(base: float) -> None:
    rows = [row for row in POWER_BITS if row[0] == base]
    # All at once (numpy's SIMD loops) and one by one (as online_elo calls it): the same bits.
    together = power_pair(base, np.array([row[1] for row in rows]))
    alone = np.concatenate([power_pair(base, np.array([row[1]])) for row in rows], axis=1)
    for powers in (together, alone):
        assert [(plus.hex(), minus.hex()) for plus, minus in powers.T] == [row[2:] for row in rows]


@pytest.mark.parametrize(("base", "bound"), [(10.0, 10.0), (10.0, 300.0), (2.0, 1000.0), (math.e, 5.0), (0.5, 50.0)])
def test_power_is_within_2_ulp_of_math_pow(base: float, bound: float) -> None:
    # |x| ≤ 10 is the Elo range (rating gaps up to 4000 on scale 400); measured: at most 1 ulp from math.pow.
    x = np.random.default_rng(1).uniform(-bound, bound, 20_000)
    powers = power_pair(base, x)
    for row, sign in ((0, 1), (1, -1)):
        expected = np.array([math.pow(base, sign * value) for value in x])
        assert (np.abs(powers[row] - expected) <= 2 * np.spacing(expected)).all()


def test_power_rejects_a_bad_base() -> None:
    for base in (0.0, -10.0, 1.0, math.inf, math.nan):
        with pytest.raises(InputError, match="use a positive finite odds base other than 1"):
            power_pair(base, np.array([0.5]))
    with pytest.raises(InputError, match="base is 1"):
        elo_ratings([Battle("A", "B", 1.0)], rounds=2, base=1)


# --- online Elo --------------------------------------------------------------------------------


def test_online_elo_by_hand_and_order_matters() -> None:
    # A beats B at 1000 vs 1000: E = 0.5, so A = 1000 + 4·0.5 = 1002 and B = 1000 - 4·0.5 = 998.
    # Then C (new, 1000) beats A (1002): E_A = 1/(1 + 10^(-2/400)) = 0.502878199574811,
    # A = 1002 + 4·(0 - 0.502878…) = 999.988487201700; E_C = 1/(1 + 10^(2/400)) = 0.497121800425189,
    # C = 1000 + 4·(1 - 0.497121…) = 1002.011512798299.
    forward = [Battle("A", "B", 1.0), Battle("A", "C", 0.0)]
    assert online_elo(forward) == pytest.approx({"A": 999.9884872017008, "B": 998.0, "C": 1002.0115127982992})
    assert list(online_elo(forward)) == ["A", "B", "C"]  # ratings appear in order of first appearance
    # Reversed: C beats A first (A = 998, C = 1002), then A (998) beats B (1000): E_A = 1/(1 + 10^(2/400))
    # = 0.497121800425189, A = 998 + 4·(1 - 0.497121…) = 1000.011512798299, B = 1000 - 4·0.502878… = 997.988487.
    backward = forward[::-1]
    assert online_elo(backward) == pytest.approx({"A": 1000.0115127982992, "B": 997.9884872017008, "C": 1002.0})


def test_online_elo_tie_and_parameters() -> None:
    # A tie between equals moves nothing; with k = 32 a win moves 16 points each way.
    assert online_elo([Battle("A", "B", 0.5)]) == {"A": 1000.0, "B": 1000.0}
    assert online_elo([Battle("A", "B", 1.0)], k=32, initial=1500) == {"A": 1516.0, "B": 1484.0}


# --- parity with CapArena's cal_ranking.py -----------------------------------------------------


def reference_compute_elo(battles: pd.DataFrame) -> dict[str, float]:
    """Online Elo over a battles table the way CapArena's compute_elo does (K 4, scale 400, base 10, 1000)."""
    rating: defaultdict[str, float] = defaultdict(lambda: 1000)
    for _, source1, source2, winner in battles[["source1", "source2", "winner_gpt"]].itertuples():
        ra, rb = rating[source1], rating[source2]
        ea = 1 / (1 + 10 ** ((rb - ra) / 400))
        eb = 1 / (1 + 10 ** ((ra - rb) / 400))
        sa = {source1: 1, source2: 0, "equal": 0.5}[winner]
        rating[source1] += 4 * (sa - ea)
        rating[source2] += 4 * (1 - sa - eb)
    return rating


def test_elo_ratings_matches_caparena_pandas_pipeline(global_numpy_state: None) -> None:
    rng = np.random.default_rng(3)
    names = ["GPT-4o-0806", "CogVLM2-llama3-chat-19B", "MiniCPM-V2.6-8B", "LLaVA-1.5-7B"]
    battles = []
    for _ in range(40):
        i, j = rng.choice(len(names), size=2, replace=False)
        battles.append(Battle(names[i], names[j], float(rng.choice([0.0, 0.5, 1.0]))))
    # A model with one battle is missing from about a third of the rounds: the median must skip those.
    battles.append(Battle("Rare-1B", names[0], 1.0))
    winner = {1.0: "a", 0.0: "b", 0.5: "equal"}
    table = pd.DataFrame(
        {
            "img": [f"{i}.jpg" for i in range(len(battles))],
            "source1": [b.model_a for b in battles],
            "source2": [b.model_b for b in battles],
            "winner_gpt": [{"a": b.model_a, "b": b.model_b, "equal": "equal"}[winner[b.outcome]] for b in battles],
        }
    )
    rounds = 300
    np.random.seed(42)
    boot = pd.DataFrame([reference_compute_elo(table.sample(frac=1.0, replace=True)) for _ in range(rounds)])
    assert boot["Rare-1B"].isna().sum() > 50

    ours = by_model(elo_ratings(battles, rounds=rounds, seed=42))
    median = boot.median()
    for model in median.index:
        assert ours[model].rating == pytest.approx(median[model], abs=1e-9)
        assert ours[model].low == pytest.approx(boot[model].quantile(0.025), abs=1e-9)
        assert ours[model].high == pytest.approx(boot[model].quantile(0.975), abs=1e-9)
    # What CapArena publishes, the medians rounded half up and the ranking, must be identical.
    assert {model: math.floor(ours[model].rating + 0.5) for model in median.index} == {
        model: math.floor(median[model] + 0.5) for model in median.index
    }
    assert [r.model for r in elo_ratings(battles, rounds=rounds)] == list(median.sort_values(ascending=False).index)


def test_elo_ratings_round_is_online_elo_on_the_drawn_order() -> None:
    # One round = online_elo over RandomState(seed).choice(n, n) in drawn order, with the Elo parameters passed on.
    battles = [Battle("A", "B", 1.0), Battle("B", "C", 0.5), Battle("C", "A", 1.0), Battle("D", "A", 0.0)]
    order = np.random.RandomState(9).choice(len(battles), size=len(battles), replace=True)
    expected = online_elo([battles[i] for i in order], k=32, initial=1500)
    ratings = by_model(elo_ratings(battles, rounds=1, seed=9, k=32, initial=1500))
    for model, rating in ratings.items():
        if model in expected:
            assert rating.rating == expected[model]  # the median of one round is that round, bit for bit
        else:
            assert math.isnan(rating.rating)  # never drawn in the only round


@pytest.mark.parametrize("elo", [{}, {"k": 32, "scale": 100, "base": 2.0, "initial": 1500}])
def test_bootstrap_rounds_are_online_elo_bit_for_bit(elo: dict[str, float]) -> None:
    # Both paths call power_pair (online_elo one battle at a time, the bootstrap a round-wide array), and
    # (R_a - R_b)/scale is exactly -(R_b - R_a)/scale, so every round must equal online_elo to the last bit.
    battles = simulate({"A": 0.6, "B": 0.2, "C": 0.0, "D": -0.7}, nu=0.5, n=300, seed=8)
    models, a, b, score = _encode(battles)
    samples = np.random.RandomState(3).randint(len(battles), size=(len(battles), 6))
    draws = _elo_rounds(a, b, score, samples, len(models), **elo)
    for round_ in range(samples.shape[1]):
        expected = online_elo([battles[i] for i in samples[:, round_]], **elo)
        assert {model: draws[round_, models.index(model)] for model in expected} == expected


def test_elo_ratings_leaves_global_random_state_alone(global_numpy_state: None) -> None:
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    elo_ratings([Battle("A", "B", 1.0), Battle("B", "C", 0.5)], rounds=20)
    assert np.array_equal(np.random.get_state()[1], before)


def test_elo_ratings_records_and_intervals() -> None:
    battles = [*repeat("A", "B", 1.0, 7), *repeat("A", "B", 0.0, 3), *repeat("B", "C", 0.5, 4)]
    ratings = by_model(elo_ratings(battles, rounds=200))
    assert (ratings["A"].battles, ratings["A"].wins, ratings["A"].losses, ratings["A"].ties) == (10, 7, 3, 0)
    assert (ratings["B"].battles, ratings["B"].wins, ratings["B"].losses, ratings["B"].ties) == (14, 3, 7, 4)
    assert (ratings["C"].battles, ratings["C"].ties) == (4, 4)
    for rating in ratings.values():
        assert rating.low <= rating.rating <= rating.high


# --- Bradley–Terry -----------------------------------------------------------------------------


def test_bradley_terry_textbook_two_models() -> None:
    # Plain BT with 3 wins to 1: π_A/π_B = 3, so the Elo gap is 400·log10(3) = 190.85, centred on 1000.
    battles = [*repeat("A", "B", 1.0, 3), Battle("A", "B", 0.0)]
    gap = 400 * math.log10(3)
    assert bradley_terry(battles, ties="half", prior=NO_PRIOR) == pytest.approx(
        {"A": 1000 + gap / 2, "B": 1000 - gap / 2}, abs=1e-4
    )
    # "half": 2 wins, 1 loss, 2 ties give credits 3 and 2, so π_A/π_B = 3/2.
    battles = [*repeat("A", "B", 1.0, 2), Battle("B", "A", 1.0), *repeat("A", "B", 0.5, 2)]
    fit = fit_bradley_terry(battles, ties="half", prior=NO_PRIOR)
    assert fit.log_strength["A"] - fit.log_strength["B"] == pytest.approx(math.log(1.5), abs=1e-6)
    assert fit.nu == 0.0


def test_davidson_textbook_two_models() -> None:
    # Two models: the MLE reproduces the observed shares 4/7, 1/7, 2/7, so π_A/π_B = 4 and
    # P(tie)/P(B) = ν·√(π_A π_B)/π_B = 2ν = 2, hence ν = 1.
    battles = [*repeat("A", "B", 1.0, 4), Battle("A", "B", 0.0), *repeat("B", "A", 0.5, 2)]
    fit = fit_bradley_terry(battles, prior=NO_PRIOR)
    assert fit.log_strength["A"] - fit.log_strength["B"] == pytest.approx(math.log(4), abs=1e-5)
    assert fit.nu == pytest.approx(1.0, abs=1e-5)
    assert sum(fit.log_strength.values()) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("davidson", [True, False])
def test_gradient_is_analytic_derivative(davidson: bool) -> None:
    battles = simulate({"A": 0.7, "B": 0.0, "C": -0.4, "D": -0.3}, nu=0.6, n=200, seed=1)
    a = np.array([ord(b.model_a) - 65 for b in battles])
    b = np.array([ord(b.model_b) - 65 for b in battles])
    score = np.array([battle.outcome for battle in battles])
    counts = _pair_counts(np.bincount(_cells(4, a, b, score), minlength=32), 4, *_pairs(a, b))
    x = np.array([0.3, -0.2, 0.1, 0.5, -0.7])[: 4 + davidson]

    def value(z: np.ndarray) -> float:
        return _neg_log_posterior(z, counts, 0.1, davidson)[0]

    def gradient(z: np.ndarray) -> np.ndarray:
        return _neg_log_posterior(z, counts, 0.1, davidson)[1]

    assert optimize.check_grad(value, gradient, x) < 1e-5 * np.abs(gradient(x)).max()


def test_unbeaten_model_ranks_first_and_stays_finite() -> None:
    battles = [
        *repeat("A", "B", 1.0, 10),
        *repeat("C", "A", 0.0, 10),
        *repeat("B", "C", 1.0, 6),
        *repeat("B", "C", 0.0, 4),
    ]
    for ties in ("davidson", "half"):
        ratings = bradley_terry(battles, ties=ties)
        assert max(ratings, key=ratings.get) == "A"
        assert all(math.isfinite(r) for r in ratings.values())
        # The prior keeps A within reach: 20 wins from 20 put it a few hundred points up, not thousands.
        assert 300 < ratings["A"] - ratings["B"] < 1500
    assert bt_ratings(battles, rounds=50)[0].model == "A"
    best = elo_ratings(battles, rounds=100)[0]
    assert best.model == "A" and math.isfinite(best.rating)


def test_symmetric_battles_give_equal_strengths() -> None:
    battles = []
    for x, y in (("A", "B"), ("B", "C"), ("C", "A")):
        battles += [*repeat(x, y, 1.0, 5), *repeat(y, x, 1.0, 5), *repeat(x, y, 0.5, 3)]
    for ties in ("davidson", "half"):
        ratings = bradley_terry(battles, ties=ties)
        assert list(ratings.values()) == pytest.approx([1000.0] * 3, abs=1e-6)


def test_all_ties_give_equal_strengths_and_positive_tie_parameter() -> None:
    battles = [*repeat("A", "B", 0.5, 8), *repeat("B", "C", 0.5, 8), *repeat("A", "C", 0.5, 8)]
    fit = fit_bradley_terry(battles)
    assert list(fit.log_strength.values()) == pytest.approx([0.0] * 3, abs=1e-6)
    # Ties only push ν up; the prior on log ν stops it at a finite value (P(tie) = ν/(2 + ν) ≈ 0.99).
    assert 10 < fit.nu < 1e6


def test_transitive_three_models_order() -> None:
    battles = [
        *repeat("A", "B", 1.0, 7),
        *repeat("A", "B", 0.0, 3),
        *repeat("B", "C", 1.0, 7),
        *repeat("B", "C", 0.0, 3),
        *repeat("C", "A", 1.0, 2),
        *repeat("C", "A", 0.0, 8),
    ]
    ratings = bradley_terry(battles)
    assert ratings["A"] > ratings["B"] > ratings["C"]
    assert [r.model for r in bt_ratings(battles, rounds=50)] == ["A", "B", "C"]
    assert [r.model for r in elo_ratings(battles, rounds=200)] == ["A", "B", "C"]


def test_bradley_terry_recovers_simulated_strengths() -> None:
    truth = {"A": 1.0, "B": 0.5, "C": 0.2, "D": -0.1, "E": -0.6, "F": -1.0}
    battles = simulate(truth, nu=0.5, n=30_000, seed=11)
    fit = fit_bradley_terry(battles)
    # Each model plays about 10,000 battles: standard errors near 0.02 on the log scale.
    for model, theta in truth.items():
        assert fit.log_strength[model] == pytest.approx(theta, abs=0.06)
    assert fit.nu == pytest.approx(0.5, abs=0.05)
    # The same battles in another order, or with sides swapped, give the same fit.
    swapped = [Battle(b.model_b, b.model_a, 1.0 - b.outcome) for b in battles[::-1]]
    assert fit_bradley_terry(swapped).log_strength == pytest.approx(fit.log_strength, abs=1e-6)


def test_bootstrap_intervals_contain_estimate_and_shrink() -> None:
    truth = {"A": 0.6, "B": 0.2, "C": -0.2, "D": -0.6}
    widths = []
    for n in (300, 3000):
        ratings = bt_ratings(simulate(truth, nu=0.4, n=n, seed=5), rounds=200, seed=1)
        for rating in ratings:
            assert rating.low <= rating.rating <= rating.high
        assert [r.model for r in ratings] == ["A", "B", "C", "D"]
        widths.append(np.mean([r.high - r.low for r in ratings]))
    # Ten times the battles: intervals about √10 ≈ 3.2 times narrower.
    assert widths[1] < 0.5 * widths[0]


def test_bt_ratings_point_estimate_is_full_fit_and_seeded() -> None:
    battles = simulate({"A": 0.3, "B": 0.0, "C": -0.3}, nu=0.5, n=400, seed=2)
    ratings = bt_ratings(battles, rounds=30, seed=4)
    full = bradley_terry(battles)
    assert {r.model: r.rating for r in ratings} == pytest.approx(full, abs=1e-6)
    assert ratings == bt_ratings(battles, rounds=30, seed=4)
    assert ratings != bt_ratings(battles, rounds=30, seed=5)


# --- CapArena-Auto -----------------------------------------------------------------------------


def test_caparena_auto_scores_per_valid_pair() -> None:
    outcomes = [
        *[("GPT-4o-0806", 1.0)] * 3,
        ("GPT-4o-0806", 0.0),
        ("GPT-4o-0806", 0.5),
        ("GPT-4o-0806", None),
        *[("CogVLM2-llama3-chat-19B", 0)] * 2,
        ("CogVLM2-llama3-chat-19B", 1),
        ("LLaVA-1.5-7B", None),
    ]
    baselines = ["GPT-4o-0806", "CogVLM2-llama3-chat-19B", "MiniCPM-V2.6-8B", "LLaVA-1.5-7B"]
    result = caparena_auto(outcomes, baselines=baselines)
    # GPT-4o: 100·(3 - 1)/5 = 40 (the failed judgment is not a pair); CogVLM: 100·(1 - 2)/3 = -33.33.
    assert result["baselines"]["GPT-4o-0806"] == {
        "score": 40.0,
        "wins": 3,
        "losses": 1,
        "ties": 1,
        "failed": 1,
        "pairs": 5,
    }
    assert result["baselines"]["CogVLM2-llama3-chat-19B"]["score"] == pytest.approx(-100 / 3)
    # No pairs at all, or only failed ones: no score, and left out of the mean.
    assert result["baselines"]["MiniCPM-V2.6-8B"] == {
        "score": None,
        "wins": 0,
        "losses": 0,
        "ties": 0,
        "failed": 0,
        "pairs": 0,
    }
    assert result["baselines"]["LLaVA-1.5-7B"]["score"] is None
    assert result["score"] == pytest.approx((40 - 100 / 3) / 2)
    assert result["failed"] == 2
    assert list(result["baselines"]) == baselines


def test_caparena_auto_without_baseline_list_and_empty() -> None:
    result = caparena_auto([("X", 1.0), ("Y", 0.5), ("X", 0.0), ("X", 1.0)])
    assert list(result["baselines"]) == ["X", "Y"]
    assert result["baselines"]["X"]["score"] == pytest.approx(100 / 3)
    assert result["score"] == pytest.approx((100 / 3 + 0) / 2)
    assert caparena_auto([]) == {"score": None, "baselines": {}, "failed": 0}


# --- rank correlation --------------------------------------------------------------------------


def test_spearman_kendall_over_shared_models() -> None:
    assert spearman_kendall(["A", "B", "C"], ["A", "B", "C"]) == {"spearman": 1.0, "kendall": 1.0, "shared": 3}
    reverse = spearman_kendall(["A", "B", "C", "D"], ["D", "C", "B", "A"])
    assert (reverse["spearman"], reverse["kendall"]) == pytest.approx((-1.0, -1.0))
    # Shared: A, B, C at 1, 2, 3 and 1, 3, 2. ρ = 1 - 6·Σd²/(n(n²-1)) = 1 - 6·2/24 = 0.5;
    # τ: pairs AB, AC concordant, BC discordant, (2 - 1)/3.
    result = spearman_kendall(["A", "B", "C", "D"], ["A", "E", "C", "B"])
    assert result == pytest.approx({"spearman": 0.5, "kendall": 1 / 3, "shared": 3})


# --- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("battles", "message"),
    [
        ([Battle("A", "B", 1.0), Battle("A", "A", 1.0)], "battle 1 pits 'A' against itself"),
        ([Battle("A", "B", 0.3)], "battle 0 (A vs B) has outcome 0.3; use 1.0 if model_a won"),
        ([Battle("A", "B", True)], "battle 0 (A vs B) has outcome True"),
        ([Battle("A", "B", 1.0), ("A", "B", 1.0)], "battle 1 is a tuple, not a Battle"),
        ([Battle("A", "", 1.0)], "battle 0 has model name ''"),
    ],
)
def test_invalid_battles_are_named(battles: list, message: str) -> None:
    for rank in (online_elo, elo_ratings, bradley_terry, bt_ratings):
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            rank(battles)


def test_rankings_need_battles_and_valid_options() -> None:
    for rank in (elo_ratings, bradley_terry, bt_ratings):
        with pytest.raises(InputError, match="at least 1 battle"):
            rank([])
    assert online_elo([]) == {}
    with pytest.raises(InputError, match="ties is 'split'"):
        bradley_terry([Battle("A", "B", 1.0)], ties="split")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="prior is 0"):
        bradley_terry([Battle("A", "B", 1.0)], prior=0)
    with pytest.raises(InputError, match="rounds is 0"):
        elo_ratings([Battle("A", "B", 1.0)], rounds=0)


def test_battles_from_records() -> None:
    rows = [
        {"model_a": "A", "model_b": "B", "outcome": 1, "img": "1.jpg"},
        {"model_a": "B", "model_b": "C", "outcome": 0.5},
    ]
    assert battles_from_records(rows) == [Battle("A", "B", 1.0), Battle("B", "C", 0.5)]
    assert isinstance(battles_from_records(rows)[0].outcome, float)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"model_a": "A", "model_b": "B", "outcome": 1}, {"model_a": "A", "outcome": 1}], "row 1 lacks model_b"),
        ([{"model_a": "A", "model_b": "B", "outcome": "A"}], "row 0 .* has outcome 'A'"),
        ([{"model_a": "A", "model_b": "A", "outcome": 1}], "row 0 pits 'A' against itself"),
        ([["A", "B", 1]], "row 0 is a list"),
    ],
)
def test_battles_from_records_names_bad_rows(rows: list, message: str) -> None:
    with pytest.raises(InputError, match=message):
        battles_from_records(rows)


@pytest.mark.parametrize(
    ("outcomes", "baselines", "message"),
    [
        ([("X", 1.0), ("X", 2.0)], None, r"outcome 1 \(vs X\) is 2.0"),
        ([("X", 1.0), ("Z", 1.0)], ["X", "Y"], "outcome 1 names baseline 'Z', not one of"),
        ([("X", 1.0, "extra")], None, "outcome 0 is"),
    ],
)
def test_caparena_auto_names_bad_items(outcomes: list, baselines: list | None, message: str) -> None:
    with pytest.raises(InputError, match=message):
        caparena_auto(outcomes, baselines=baselines)


def test_spearman_kendall_errors() -> None:
    with pytest.raises(InputError, match="share 1 model"):
        spearman_kendall(["A", "B"], ["A", "C"])
    with pytest.raises(InputError, match=r"ranking_b lists \['A'\] more than once"):
        spearman_kendall(["A", "B"], ["A", "B", "A"])
