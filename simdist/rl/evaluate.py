"""Evaluate Stage 1 policies in MJX: return, episode length, falls and velocity tracking.

`make_episode_evaluator` compiles one episode of a batch of environments (a `lax.scan` of
`episode_length` control steps from reset) into a pure, jitted function of the policy's
parameters and a key. Each environment's first episode is measured; what happens after its
first end of episode is ignored. `evaluate_expert` runs it on the snapshots of a
`simdist train-expert` run and returns one JSON-serialisable dict per snapshot.

For robots with a task command (`Task.command_size > 0`, e.g. the quadruped) the command can
be fixed for the whole evaluation; the report then has the forward-velocity tracking error
(|body vx - commanded vx|, averaged over the steps of each episode before it ends, then over
episodes) and the straight-line distance each episode covered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from simdist.config import with_overrides
from simdist.envs.mjx_env import MjxEnv
from simdist.envs.task import EnvConfig, Task
from simdist.errors import ConfigError
from simdist.rl.ppo import snapshot_action

# Names a robot may give the body-frame forward velocity among its deployable observations.
FORWARD_VELOCITY_NAMES = ("base_vx", "body_vx", "base_lin_vel_x", "lin_vel_x", "vx")
# Env config fields that set the ranges a velocity command is drawn from, in command order.
COMMAND_RANGE_FIELDS = ("vx_range", "vy_range", "yaw_rate_range")


def forward_velocity_index(task: Task | type[Task]) -> int:
    """Index of the body-frame forward velocity in the task's deployable observation."""
    names = tuple(task.deployable_obs_names)
    for name in FORWARD_VELOCITY_NAMES:
        if name in names:
            return names.index(name)
    raise ConfigError(
        f"robot '{task.name}' has no body forward velocity among its deployable observations "
        f"(looked for {', '.join(FORWARD_VELOCITY_NAMES)}), so its velocity tracking cannot be measured"
    )


def fixed_command_config(env_cfg: EnvConfig, task_cls: type[Task], command: Sequence[float]) -> EnvConfig:
    """`env_cfg` with every command range collapsed to the point `command` and no zero commands."""
    name = task_cls.name
    size = int(task_cls.command_size)
    if size == 0:
        raise ConfigError(f"robot '{name}' takes no command; a fixed command is for robots with one (e.g. quadruped)")
    command = tuple(float(c) for c in command)
    if len(command) != size:
        raise ConfigError(f"robot '{name}' takes a command of {size} values, got {len(command)}")
    if not all(np.isfinite(command)):
        raise ConfigError(f"the command must be finite, got {command}")
    fields = {f.name for f in dataclasses.fields(env_cfg)}
    range_fields = COMMAND_RANGE_FIELDS[:size]
    if size > len(COMMAND_RANGE_FIELDS) or not set(range_fields) <= fields:
        raise ConfigError(
            f"robot '{name}': cannot fix its command, its env config has no {'/'.join(range_fields)} fields"
        )
    changes: dict[str, Any] = {f: (c, c) for f, c in zip(range_fields, command)}
    if "zero_command_probability" in fields:
        changes["zero_command_probability"] = 0.0
    return dataclasses.replace(env_cfg, **changes)


def _free_base(env: MjxEnv) -> bool:
    """True when qpos[0:2] is the floating base's world (x, y)."""
    m = env.mj_model
    return m.njnt > 0 and int(m.jnt_type[0]) == int(mujoco.mjtJoint.mjJNT_FREE) and int(m.jnt_qposadr[0]) == 0


def make_episode_evaluator(env: MjxEnv, act, num_envs: int, *, vx_index: int | None = None):
    """A jitted `(act_params, key) -> dict of per-env arrays [num_envs]` for
    `act(act_params, obs, key) -> action`, one episode of `episode_length` control steps.

    Keys: `return` (reward summed up to and including the step that ended the first episode),
    `length` (control steps in that episode), `fell` (it ended by termination, not by the
    time limit). With `vx_index` (the forward velocity in the deployable observation):
    `vx_abs_error`, the mean of |vx - commanded vx| over the steps after which the episode is
    still running, and `alive_steps`, their number. For a floating-base robot: `distance`,
    the straight-line (x, y) distance from the start to the last such step.

    Resets from `key`; the actions' keys are `split(key, episode_length)`.
    """
    T = env.config.episode_length
    track = vx_index is not None
    free = _free_base(env)
    command = jax.vmap(env.task.command)

    def run(act_params, key):
        st = env.batch_reset(key, num_envs)
        zeros = jnp.zeros(num_envs)
        xy0 = st.data.qpos[:, :2] if free else jnp.zeros((num_envs, 2))

        def body(c, k):
            st, alive, ret, length, fell, err, steps, xy = c
            st2 = env.batch_step(st, act(act_params, st.privileged_obs, k))
            ret = ret + jnp.where(alive, st2.reward, 0.0)
            length = length + alive
            fell = fell | (alive & st2.terminated)
            live = alive & ~st2.done  # still in the first episode after this step
            if track:
                vx = st2.deployable_obs[:, vx_index]
                err = err + jnp.where(live, jnp.abs(vx - command(st2.info)[:, 0]), 0.0)
                steps = steps + live
            if free:
                xy = jnp.where(live[:, None], st2.data.qpos[:, :2], xy)
            return (st2, live, ret, length, fell, err, steps, xy), None

        init = (st, jnp.ones(num_envs, bool), zeros, zeros, jnp.zeros(num_envs, bool), zeros, zeros, xy0)
        (_, _, ret, length, fell, err, steps, xy), _ = jax.lax.scan(body, init, jax.random.split(key, T))
        out = {"return": ret, "length": length, "fell": fell}
        if track:
            out["vx_abs_error"] = err / jnp.maximum(steps, 1.0)
            out["alive_steps"] = steps
        if free:
            out["distance"] = jnp.linalg.norm(xy - xy0, axis=-1)
        return out

    return jax.jit(run)


def _select(snaps: list, snapshots) -> list:
    """'last', 'all', a count of the newest (int) or explicit iterations (a sequence of ints)."""
    if snapshots is None or snapshots == "all":
        return list(snaps)
    if snapshots == "last":
        return [snaps[-1]]
    if isinstance(snapshots, str):
        raise ConfigError(f"snapshots must be 'last', 'all', a count or a list of iterations, got '{snapshots}'")
    if isinstance(snapshots, (int, np.integer)) and not isinstance(snapshots, bool):
        if snapshots < 1:
            raise ConfigError(f"the number of snapshots to evaluate must be at least 1, got {snapshots}")
        return list(snaps[-int(snapshots):])
    by_it = {s.iteration: s for s in snaps}
    wanted = [int(i) for i in snapshots]
    missing = [i for i in wanted if i not in by_it]
    if missing:
        raise ConfigError(
            f"no snapshot at iteration {', '.join(map(str, missing))}; the run has {', '.join(map(str, sorted(by_it)))}"
        )
    return [by_it[i] for i in wanted]


def _summary(per: dict[str, np.ndarray]) -> dict[str, Any]:
    ret = per["return"]
    out: dict[str, Any] = {
        "return_mean": float(ret.mean()),
        "return_std": float(ret.std()),
        "episode_length_mean": float(per["length"].mean()),
        "falls": int(per["fell"].sum()),
    }
    if "vx_abs_error" in per:
        out["vx_mae"] = float(per["vx_abs_error"].mean())
        out["vx_mae_std"] = float(per["vx_abs_error"].std())
    if "distance" in per:
        out["distance_mean"] = float(per["distance"].mean())
        out["distance_std"] = float(per["distance"].std())
    out["per_episode"] = {
        k: [bool(x) for x in v] if v.dtype == bool else [int(x) for x in v] if k in ("length", "alive_steps")
        else [float(x) for x in v]
        for k, v in per.items()
    }  # fmt: skip
    return out


def evaluate_expert(
    run_dir: Path,
    robot: str | None = None,
    *,
    episodes: int = 10,
    command: Sequence[float] | None = None,
    snapshots: str | int | Sequence[int] = "last",
    seed: int = 0,
    randomize: bool = True,
    random_baseline: bool = False,
    env_overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate policy snapshots of a `simdist train-expert` run in MJX, one episode per env.

    `snapshots`: 'last' (the newest, the expert of a finished run), 'all', an int (the newest
    that many) or explicit iterations. `env_overrides`: env config fields to change for the
    evaluation, e.g. {"slope_range_deg": 0.0} for flat ground only. `command`: a fixed task command (robots with one
    only); for a robot with a command and none given, the env config's `deploy_command` if it
    has one, else the commands of training. `randomize`: domain randomisation as in training.
    Every snapshot sees the same `seed`, so the same initial states and physics. With
    `random_baseline` a uniformly random policy's row (iteration None) comes last.

    Returns one JSON-serialisable dict per snapshot: iteration, policy (snapshot | expert |
    random), episodes, return mean/std, mean episode length, falls (episodes ended by
    termination, not the time limit), and for robots with a command: the command, `vx_mae`
    (m/s) and, for a floating base, `distance_mean` (m); per-episode values in `per_episode`.
    """
    from simdist.rl.policy import load_snapshots, read_run_config
    from simdist.robot import get_robot

    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ConfigError(f"episodes must be a positive integer, got {episodes!r}")
    cfg = read_run_config(run_dir, robot)  # cheap checks (missing run, wrong robot) first
    rob = get_robot(cfg.robot)
    env_cfg = with_overrides(cfg.env, env_overrides) if env_overrides else cfg.env
    task_cls = type(rob.make_task(env_cfg))
    has_command = int(task_cls.command_size) > 0
    vx_index = forward_velocity_index(task_cls) if has_command else None
    if command is not None and not has_command:
        raise ConfigError(
            f"robot '{cfg.robot}' takes no command; --command is for robots with a velocity command (e.g. quadruped)"
        )
    if has_command and command is None:
        command = getattr(env_cfg, "deploy_command", None)
    if command is not None:
        env_cfg = fixed_command_config(env_cfg, task_cls, command)
        command = [float(c) for c in command]
    if env_cfg.randomize != randomize:
        env_cfg = dataclasses.replace(env_cfg, randomize=bool(randomize))

    chosen = _select(load_snapshots(run_dir, cfg.robot), snapshots)
    env = MjxEnv(rob.make_task(env_cfg))

    policy = snapshot_action(chosen[0].graphdef)

    def act(p, obs, key):
        params, obs_stats, use_random = p
        rand = jax.random.uniform(key, (obs.shape[0], env.action_size), minval=-1.0, maxval=1.0)
        return jnp.where(use_random, rand, policy((params, obs_stats), obs, key))

    run = make_episode_evaluator(env, act, int(episodes), vx_index=vx_index)
    key = jax.random.key(seed)
    common = {"robot": cfg.robot, "episodes": int(episodes), "episode_steps": int(env_cfg.episode_length),
              "seed": int(seed), "randomize": bool(randomize), "command": command,
              "env_overrides": dict(env_overrides or {})}  # fmt: skip
    rows = []
    todo = [(s, False) for s in chosen] + ([(chosen[-1], True)] if random_baseline else [])
    for s, use_random in todo:
        per = jax.device_get(run((s.params, s.obs_stats, jnp.asarray(use_random)), key))
        per = {k: np.asarray(v) for k, v in per.items()}
        row = {
            "iteration": None if use_random else int(s.iteration),
            "policy": "random" if use_random else "expert" if s.is_final else "snapshot",
            **common,
            **_summary(per),
        }
        rows.append(row)
    return rows
