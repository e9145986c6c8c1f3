"""Record real data with exploration: the default planner, with contiguous action-noise bursts
added to what it executes (as Stage 2 perturbs its sim rollouts), so that the finetuning data
covers the effect of actions away from the policy prior's gait, which MPPI's candidates also
are. An experiment of docs/notes/quadruped-slope-investigation.md (2026-12-06, commit
77e6797), through `pipelines.deploy` with a wrapped controller: the robot interface, the
recorder and the reports are deploy's own.

    python -m experiments.quadruped_explore_record --record DIR [--std 0.3] [--noisy 5,20] \\
        [--clean 10,50] [--episodes 60] [--seed 3000] [--max-steps 29900]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from simdist.errors import SimdistError
from simdist.pipelines import deploy as dep
from simdist.planning.controller import Controller


class NoiseBursts(Controller):
    """The wrapped planner's action plus Gaussian noise in bursts. The planner's history holds
    what was executed (the noisy action), as it would on a robot whose log is read back."""

    def __init__(self, planner, std: float, noisy: tuple[int, int], clean: tuple[int, int], seed: int):
        self.p, self.std, self.noisy, self.clean = planner, std, noisy, clean
        self.name = f"{planner.name}+bursts"
        self.rng = np.random.default_rng(seed)
        self._left, self._in_burst = 0, False

    def _phase(self):
        if self._left == 0:
            self._in_burst = not self._in_burst
            lo, hi = self.noisy if self._in_burst else self.clean
            self._left = int(self.rng.integers(lo, hi + 1))
        self._left -= 1
        return self._in_burst

    def reset(self, obs, command):
        self.p.reset(obs, command)
        # Each episode opens with a NOISY phase whose length is drawn from the clean range; the
        # runs measured on 2026-12-06 (commit 77e6797) recorded with exactly this schedule.
        self._in_burst, self._left = True, int(self.rng.integers(self.clean[0], self.clean[1] + 1))

    def warmup(self, obs_size, command_size):
        self.p.warmup(obs_size, command_size)

    def act(self, obs, command):
        a, d = self.p.act(obs, command)
        if self._phase():
            a = np.clip(a + self.std * self.rng.standard_normal(a.shape).astype(np.float32),
                        self.p.action_low, self.p.action_high)
            self.p.set_executed_action(a)  # the history the planner reads holds the executed action
        return a, d

    def describe(self):
        return {"name": self.name, "planner": self.p.describe(), "std": self.std, "noisy": self.noisy, "clean": self.clean}


def _pair(s: str) -> tuple[int, int]:
    a, b = (int(x) for x in s.split(","))
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=Path("robots/quadruped/pretrained/model"))
    ap.add_argument("--gap", default="slippery-slope")
    ap.add_argument("--record", type=Path, required=True)
    ap.add_argument("--std", type=float, default=0.3)
    ap.add_argument("--noisy", type=_pair, default=(5, 20))
    ap.add_argument("--clean", type=_pair, default=(10, 50))
    ap.add_argument("--episodes", type=int, default=60)
    ap.add_argument("--episode-length", type=int, default=500)
    ap.add_argument("--seed", type=int, default=3000)
    args = ap.parse_args()
    cfg = dep.DeployConfig(robot="quadruped", gap=args.gap, seed=args.seed, episodes=args.episodes,
                           episode_length=args.episode_length)
    from simdist.backends import make_backend
    from simdist.robots import get_robot

    with make_backend("sim-real", get_robot("quadruped"), gap=args.gap, seed=args.seed) as b:
        spec = b.spec
    planner = dep.make_controller(cfg, spec, model_dir=args.model)
    ctl = NoiseBursts(planner, args.std, args.noisy, args.clean, args.seed)
    res = dep.deploy(cfg, controller=ctl, record=args.record)
    m = res.metrics["forward_progress_m"]
    print(f"recorded {res.recorded_transitions:,} steps ({res.recorded_transitions / 3000:.1f} min) in "
          f"{res.recorded_episodes} episodes to {args.record}; progress {m['mean']:.2f} ± {m['std']:.2f} m, "
          f"falls {res.safety_stops}/{len(res.episodes)}")


if __name__ == "__main__":
    try:
        main()
    except SimdistError as e:
        raise SystemExit(f"error: {e}") from None
