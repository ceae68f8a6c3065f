"""The tuner's search logic on a simulated server (tests/kit/tune_sim.py): pruning, early
stops, bisection, re-measurement, within-noise tie-breaks, unreachable targets, budgets.

Expected answers come from the simulation's own latency model (its true rates), never
from constants copied out of a run.
"""

from __future__ import annotations

import itertools

import pytest

from benchmarks.tuning.candidates import (
    DELAYS_US,
    Pruning,
    TargetUnreachable,
    curve_continues,
    preferred_options,
    simplicity,
    space_from_curve,
)
from benchmarks.tuning.measure import MeasurePlan, ProbeMeasure, measure_candidate
from benchmarks.tuning.search import SearchSettings, search
from modelrepo.serving import ServingConfig
from tests.kit.tune_sim import FakeClock, SimModel, SimProbe, TableMeasure

DEFAULT = ServingConfig(16, (4, 8), 1000, 1, 0)  # what the exporter writes
SIZES = [1, 2, 4, 8, 16]


def space_for(model: SimModel, target: float):
    curve = model.curve(sorted({model.cores, 1}), SIZES)
    return space_from_curve(curve, target, model.cores, DEFAULT)


def full_grid(model: SimModel) -> list[ServingConfig]:
    """Every candidate a blind grid would measure (the pruning's reference)."""
    splits = [(i, t) for i in (1, 2) for t in (1, 2) if i * t <= model.cores]
    out = []
    for (i, t), b, d in itertools.product(splits, SIZES, DELAYS_US):
        base = ServingConfig(b, (), d, i, t)
        out += [base.changed(preferred_batch_sizes=p) for p in preferred_options(base)]
    return out


def test_curve_pruning_drops_slow_batches_the_knee_tail_and_weak_splits() -> None:
    model = SimModel(fixed_ms=6, per_image_ms=2.0, thread_scaling=0.8)
    target = 30.0
    space = space_for(model, target)
    limit = target * Pruning().feasible_fraction
    threads = space.parallelism[0][1]
    # Every kept max_batch_size computes within half the target at the seed's threads.
    assert all(model.compute_ms(b, threads) <= limit for b in space.max_batch_sizes)
    dropped = [b for b in SIZES if model.compute_ms(b, threads) > limit]
    assert dropped and not set(dropped) & set(space.max_batch_sizes)
    assert any(f"from {dropped[0]} up dropped" in n for n in space.notes)
    # 1 instance x 1 thread is predicted far below the others and is not measured.
    assert (1, 1) not in space.parallelism and any("1 instance(s) x 1" in n for n in space.notes)
    assert all(i * t <= model.cores for i, t in space.parallelism)
    # Queue delays stay within a quarter of the target; the seed starts at the knee.
    assert max(space.queue_delays_us) <= target * 1e3 * Pruning().delay_fraction
    assert space.seed.max_batch_size in space.max_batch_sizes
    assert space.grid_size > 10 * len(space.max_batch_sizes)


def test_the_knee_keeps_one_size_past_it() -> None:
    # Throughput stops growing after batch 4: batch 8 is kept (one past), 16 is not.
    model = SimModel(fixed_ms=1.0, per_image_ms=2.0)
    curve = [p for p in model.curve([2], SIZES)]
    knee_curve = [p if p.batch <= 4 else type(p)(2, p.batch, p.p50_ms * p.batch / 4) for p in curve]
    space = space_from_curve(knee_curve, 1000.0, 2, DEFAULT, max_instances=1)
    assert space.max_batch_sizes[-1] == 8 and space.seed.max_batch_size == 4


def test_a_batch_of_one_has_no_delay_or_preferred_sizes_to_search() -> None:
    model = SimModel(fixed_ms=0.5, per_image_ms=8.0)  # batching buys nothing here
    space = space_for(model, 100.0)
    assert space.seed.max_batch_size == 1 and space.seed.max_queue_delay_us == 0
    for dim in ("max_queue_delay_us", "preferred_batch_sizes"):
        assert space.options(dim, space.seed) == [space.seed]
    assert len(space.options("max_batch_size", space.seed)) > 1


def test_curve_measurement_stops_past_the_knee_or_when_too_slow() -> None:
    model = SimModel()
    pts = model.curve([2], SIZES)
    assert curve_continues([], 10, Pruning())
    assert curve_continues(pts[:2], 1000, Pruning())  # still doubling
    flat = [pts[0], type(pts[0])(2, 2, pts[0].p50_ms * 2)]  # batch 2 adds nothing
    assert not curve_continues(flat, 1000, Pruning())
    assert not curve_continues(pts[:1], pts[0].p50_ms, Pruning())  # over half the target


def test_a_target_below_in_process_latency_is_refused_with_the_figures() -> None:
    model = SimModel(fixed_ms=40)
    with pytest.raises(TargetUnreachable, match=r"p99 target 5 ms .* takes \d+(\.\d+)? ms"):
        space_for(model, 5.0)


def test_the_sweep_stops_when_throughput_stops_improving() -> None:
    model = SimModel()
    probe = SimProbe(model)
    plan = MeasurePlan(50.0, concurrency=(1, 2, 4, 8, 16, 32, 64, 128))
    trial = measure_candidate(probe, ServingConfig(8, (), 0, 1, 2), plan)
    levels = [p.level for p in trial.sweep]
    assert len(levels) < len(plan.concurrency)
    last, before = trial.sweep[-1], max(p.throughput for p in trial.sweep[:-1])
    assert last.throughput < before * (1 + plan.sweep_gain)  # the level that stopped it
    assert all(b.throughput >= a.throughput * (1 + plan.sweep_gain)
               for a, b in zip(trial.sweep[:-2], trial.sweep[1:-1], strict=True))  # fmt: skip


@pytest.mark.parametrize("target", [20.0, 50.0, 200.0])
def test_bisection_brackets_the_true_server_rate_in_bounded_steps(target: float) -> None:
    model = SimModel()
    candidate = ServingConfig(8, (), 0, 1, 2)
    plan = MeasurePlan(target, rate_steps=6)
    trial = measure_candidate(SimProbe(model), candidate, plan)
    true = model.true_rate(candidate, target)
    assert len(trial.rates) <= plan.rate_steps
    assert 0 < trial.server_rate <= true
    assert true <= trial.server_rate / (1 - trial.resolution)  # inside the final bracket
    passing = [p for p in trial.rates if p.meets(target)]
    assert all(p.level <= true for p in passing)
    assert all(p.level > true for p in trial.rates if p not in passing)


def test_search_finds_a_near_optimal_config_measuring_a_fraction_of_the_grid() -> None:
    model = SimModel()
    target = 40.0
    clock = FakeClock()
    probe = SimProbe(model, clock, noise=0.02)
    settings = SearchSettings(target, budget_s=10_000)
    result = search(
        ProbeMeasure(probe, MeasurePlan(target)), space_for(model, target), DEFAULT, settings,
        clock=clock,
    )  # fmt: skip
    optimum = max(model.true_rate(c, target) for c in full_grid(model))
    assert result.winner is not None
    assert model.true_rate(result.winner.candidate, target) >= 0.85 * optimum
    assert len(result.measurements) <= len(full_grid(model)) // 5
    # The default (a worse configuration in this model) is beaten beyond the noise.
    assert model.true_rate(DEFAULT, target) < 0.85 * model.true_rate(
        result.winner.candidate, target
    )
    assert result.significant and "tuned" in result.verdict()


def test_finalists_are_re_measured_interleaved_and_carry_their_spread() -> None:
    model = SimModel()
    clock = FakeClock()
    probe = SimProbe(model, clock, noise=0.03, seed=3)
    settings = SearchSettings(40.0, budget_s=10_000, top_k=2, repeats=3)
    measure = ProbeMeasure(probe, MeasurePlan(40.0))
    result = search(measure, space_for(model, 40.0), DEFAULT, settings, clock=clock)
    repeated = [m for m in result.measurements if len(m.trials) > 1]
    assert DEFAULT in [m.candidate for m in repeated]  # the default always, in the same run
    assert 2 <= len(repeated) <= 3 and all(len(m.trials) == 3 for m in repeated)
    for m in repeated:
        lo, hi = m.rate_range
        assert lo <= m.rate <= hi and m.spread_pct == pytest.approx(100 * (hi - lo) / m.rate)
    # Interleaved: every finalist once before any of them a third time.
    configured = [c for c, mode, _ in probe.log if mode == "configure"]
    tail = configured[-2 * len(repeated) :]
    assert (
        set(tail[: len(repeated)]) == set(tail[len(repeated) :]) == {m.candidate for m in repeated}
    )
    assert result.noise_pct >= max(m.spread_pct for m in repeated)


def test_candidates_within_noise_go_to_the_default() -> None:
    # Every configuration within 3 %: no real gain, and the default is kept.
    measure = TableMeasure(lambda c: 100.0 + c.instance_count + c.max_batch_size / 16)
    model = SimModel()
    result = search(measure, space_for(model, 40.0), DEFAULT, SearchSettings(40.0))
    assert result.winner is not None and result.winner.candidate == DEFAULT
    assert not result.significant and "no real gain" not in result.verdict()
    assert "nothing to change" in result.verdict() and len(result.tied) > 1


def test_within_noise_the_simpler_config_wins_over_a_slightly_faster_one() -> None:
    # Two instances 2 % faster than one: within noise, so one instance wins.
    def rate(c: ServingConfig) -> float:
        return 50.0 if c == DEFAULT else (153.0 if c.instance_count == 2 else 150.0)

    measure = TableMeasure(rate)
    result = search(measure, space_for(SimModel(), 40.0), DEFAULT, SearchSettings(40.0))
    assert result.best.candidate.instance_count == 2
    assert result.winner is not None and result.winner.candidate.instance_count == 1
    assert result.winner in result.tied and "within" in result.reason
    assert min(result.tied, key=lambda m: simplicity(m.candidate, DEFAULT)) is result.winner
    assert result.significant  # 150 vs the default's 50 is far beyond the noise


def test_an_unreachable_target_says_so_with_the_lowest_p99_seen() -> None:
    model = SimModel(overhead_ms=30.0)  # the curve (compute only) looks fine; serving is not
    target = 20.0
    clock = FakeClock()
    probe = SimProbe(model, clock)
    result = search(
        ProbeMeasure(probe, MeasurePlan(target)), space_for(model, target), DEFAULT,
        SearchSettings(target), clock=clock,
    )  # fmt: skip
    assert result.winner is None and not result.significant
    assert result.reason.startswith("target not reachable")
    lowest = min(m.best_p99_ms for m in result.measurements if m.best_p99_ms is not None)
    assert f"{lowest:.1f} ms" in result.reason and lowest > target
    assert result.verdict() == result.reason


def test_the_budget_stops_exploring_but_keeps_the_re_measurement() -> None:
    model = SimModel()
    clock = FakeClock()
    probe = SimProbe(model, clock, seconds=10.0)
    settings = SearchSettings(40.0, budget_s=400, top_k=2, repeats=2)
    measure = ProbeMeasure(probe, MeasurePlan(40.0))
    result = search(measure, space_for(model, 40.0), DEFAULT, settings, clock=clock)
    longest = max(t.seconds for m in result.measurements for t in m.trials)
    assert result.stopped and "budget" in result.stopped
    assert result.seconds <= settings.budget_s + longest
    assert len(result.default.trials) == 2  # the default still measured twice


def test_bad_candidates_and_settings_name_the_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"preferred batch sizes \[32\]: allowed 1..max"):
        ServingConfig(16, (32,), 0, 1, 0)
    with pytest.raises(ValueError, match="instance_count 0 must be >= 1"):
        ServingConfig(instance_count=0)
    with pytest.raises(ValueError, match="p99 target -1"):
        MeasurePlan(-1)
    with pytest.raises(ValueError, match="budget_s must be > 0"):
        SearchSettings(10, budget_s=0)
    # Shrinking max_batch_size drops preferred sizes that no longer fit.
    assert DEFAULT.changed(max_batch_size=4).preferred_batch_sizes == (4,)
