"""The random-gap battery: its sampler (deterministic, inside its bands, outside training),
its verdicts and summary, and one tiny end-to-end run that resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simdist.backends.battery import Shift, gap_spec, robot_battery, sample_gaps
from simdist.backends.gaps import resolve_gap
from simdist.errors import CheckpointError, ConfigError
from simdist.pipelines.gap_battery import BatteryConfig, run_battery, summarize, verdict


@pytest.mark.parametrize("robot", ["cartpole", "quadruped"])
def test_sampler_is_deterministic_and_leaves_training_within_its_bands(robot):
    shifts = {s.key: s for s in robot_battery(robot)}
    gaps = sample_gaps(shifts.values(), 200, seed=3)
    assert gaps == sample_gaps(shifts.values(), 200, seed=3)
    assert gaps != sample_gaps(shifts.values(), 200, seed=4)
    sizes = [len(g) for g in gaps]
    assert min(sizes) >= 1 and max(sizes) >= 3  # every gap moves a key; keys combine
    for gap in gaps:
        assert resolve_gap(robot, gap_spec(gap)) == pytest.approx(gap)  # a valid --gap, round trip
        for key, v in gap.items():
            s = shifts[key]
            assert s.outside(v), (key, v)
            assert any(b is not None and b[0] <= v <= b[1] for b in (s.below, s.above)), (key, v)
            if s.integer:
                assert v == int(v)
    # Each key moves with its probability (0.4 here, 200 gaps: 80 ± 7 expected, plus the forced ones).
    for key in shifts:
        moved = sum(key in g for g in gaps)
        assert 50 <= moved <= 120, (key, moved)
    # Both sides of a two-sided key are drawn.
    two = next(k for k, s in shifts.items() if s.below and s.above)
    vals = np.array([g[two] for g in gaps if two in g])
    assert (vals < shifts[two].train[0]).any() and (vals > shifts[two].train[1]).any()


def test_shift_rejects_bands_inside_training():
    with pytest.raises(ConfigError, match="band above"):
        Shift("k", train=(1.0, 2.0), above=(1.5, 3.0))
    with pytest.raises(ConfigError, match="needs a band"):
        Shift("k", train=(1.0, 2.0))


def _r(mean, se, stops=0):
    return {"mean": mean, "se": se, "safety_stops": stops, "episodes": 10}


def test_verdicts_and_summary_count_what_they_name():
    assert verdict(_r(100, 5), _r(120, 5)) == "improved"  # +20 > 2 * 7.1
    assert verdict(_r(100, 5), _r(110, 5)) == "unchanged"
    assert verdict(_r(100, 5), _r(80, 5)) == "worsened"
    state = {"nogap": _r(200, 2), "results": {
        "0": {"zero_shot": _r(100, 5), "finetuned": _r(190, 5, stops=1)},  # below 90 %: improved, reaches 90 %
        "1": {"zero_shot": _r(195, 2), "finetuned": _r(150, 5)},  # worsened by 23 %
        "2": {"zero_shot": _r(150, 5, stops=2), "finetuned": _r(155, 5, stops=1)},  # unchanged
    }}
    s = summarize(state)
    assert (s["improved"], s["unchanged"], s["worsened"]) == (1, 1, 1)
    assert s["below_90pct_zero_shot"] == 2 and s["below_90pct_improved"] == 1
    assert s["worsened_over_5pct"] == 1 and s["finetuned_at_90pct_of_nogap"] == 1
    assert s["worst_relative_change"] == pytest.approx(-45 / 195)
    assert s["new_safety_stops"] == 1 and s["safety_stops_finetuned"] == 2


def test_a_tiny_battery_runs_every_gap_and_resumes(tiny_model, tmp_path, capsys):
    model = tiny_model[1].out
    cfg = BatteryConfig(robot="cartpole", n=2, seed=7, real_seconds=0.6, episodes=2, mppi="tiny", episode_length=15,
                        finetune_preset="tiny", finetune_overrides=(("steps", 4), ("eval_every", 4), ("warmup_steps", 1)))
    out = tmp_path / "battery"
    state = run_battery(cfg, model, out, show_progress=False)
    assert state["gaps"] == sample_gaps(robot_battery("cartpole"), 2, 7)
    assert sorted(state["results"]) == ["0", "1"]
    for r in state["results"].values():
        assert r["zero_shot"]["episodes"] == 2  # 0.6 s at 50 Hz = 30 steps = 2 episodes of 15
        assert r["recorded_transitions"] == r["zero_shot"]["steps"] and r["real_transitions"] <= 30
        assert r["finetuned"]["episodes"] == 2
    assert "improved" in capsys.readouterr().out
    assert (out / "battery.png").stat().st_size > 0
    # A rerun finds every gap done and only recomputes the summary (no deploy, no finetune).
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "battery.json"
              and p.suffix != ".png"}
    again = run_battery(cfg, model, out, show_progress=False)
    assert again["results"] == json.loads((out / "battery.json").read_text())["results"] == state["results"]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # A missing model is one line, and nothing is written.
    with pytest.raises(CheckpointError, match="does not exist"):
        run_battery(cfg, tmp_path / "missing", tmp_path / "new", show_progress=False)
    assert not (tmp_path / "new").exists()
    # Another configuration in the same folder is refused.
    with pytest.raises(ConfigError, match="another configuration"):
        run_battery(BatteryConfig(robot="cartpole", n=3, seed=7), model, out, show_progress=False)
