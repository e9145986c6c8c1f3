"""What a robot supplies to the env: its MJCF, its task and its randomisation.

A `Task` is a bag of pure functions over MJX `Model`/`Data`. The generic `MjxEnv` composes
them into `reset(key)` / `step(state, action)` with auto-reset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import mujoco

from simdist._mjx import mjx


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Settings every robot env has. Robots subclass it to add their own."""

    episode_length: int = 300
    ctrl_dt: float = 0.02
    randomize: bool = True


@dataclasses.dataclass(frozen=True)
class RandomizedParam:
    """One physical parameter that domain randomisation changes.

    `field` is the MJX model field and `index` the entries of it that change; the test suite
    checks that randomisation touches exactly these entries and nothing else. `low`/`high`
    are the multiplier's range; a parameter derived from others (an inertia that follows a
    mass and a length) has none.
    """

    name: str
    field: str
    index: tuple[int, ...]
    low: float | None = None
    high: float | None = None


class Task:
    """Base class of a robot's task. Subclasses set the class attributes and override methods."""

    name: ClassVar[str]
    xml_path: ClassVar[Path]
    action_size: ClassVar[int]
    # Size of the task command (velocity command of a legged robot); 0 when there is none.
    command_size: ClassVar[int] = 0
    # Names and sizes of the observation vectors, for docs and shape checks.
    deployable_obs_names: ClassVar[tuple[str, ...]]
    privileged_obs_names: ClassVar[tuple[str, ...]]

    def __init__(self, config: EnvConfig):
        self.config = config

    # ---- model -------------------------------------------------------------------------
    def mj_model(self) -> mujoco.MjModel:
        return mujoco.MjModel.from_xml_path(str(self.xml_path))

    def randomized_params(self) -> tuple[RandomizedParam, ...]:
        """The parameters `randomize` changes; empty means no randomisation."""
        return ()

    def randomized_fields(self) -> tuple[str, ...]:
        return tuple(sorted({p.field for p in self.randomized_params()}))

    def randomize(self, model: mjx.Model, key: jax.Array) -> mjx.Model:
        """Domain randomisation as a pure function of (model, key)."""
        return model

    # ---- episode -----------------------------------------------------------------------
    def initial_state(self, model: mjx.Model, key: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
        """(qpos, qvel, info) of a fresh episode. `info` holds task state such as commands."""
        raise NotImplementedError

    def ctrl(self, model: mjx.Model, data: mjx.Data, action: jax.Array, info: dict) -> jax.Array:
        """Map a policy action in [-1, 1] to the actuator controls."""
        return jnp.clip(action, -1.0, 1.0)

    def observe(self, model: mjx.Model, data: mjx.Data, info: dict) -> tuple[jax.Array, jax.Array]:
        """(deployable, privileged) observation vectors."""
        raise NotImplementedError

    def reward(
        self, model: mjx.Model, data: mjx.Data, action: jax.Array, info: dict
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Reward r(s, a) of the step that produced `data`, and named reward terms."""
        raise NotImplementedError

    def terminated(self, model: mjx.Model, data: mjx.Data, info: dict) -> jax.Array:
        """True where the episode ends by failure (not by the time limit)."""
        return ~(jnp.all(jnp.isfinite(data.qpos)) & jnp.all(jnp.isfinite(data.qvel)))

    def unsafe(self, model: mjx.Model, data: mjx.Data) -> jax.Array:
        """True where the state trips a hard safety limit of the real robot (the one its
        sim-real adapter's `safety_fault` enforces). `MjxEnv` checks it after every physics
        substep, as the robot does; a violation ends the episode (a failure) and costs
        `safety_penalty` on that step, so the expert, the reward head and the value head all
        learn the limit. None by default."""
        return jnp.zeros((), bool)

    @property
    def safety_penalty(self) -> float:
        """Cost subtracted from the reward of the step that trips `unsafe` (the config's
        `safety_penalty`; 0 when it has none)."""
        return float(getattr(self.config, "safety_penalty", 0.0))

    def command(self, info: dict) -> jax.Array:
        """The task command the policy follows at this step (shape `(command_size,)`)."""
        return jnp.zeros((self.command_size,), jnp.float32)

    def privileged_from_deployable(self, deployable):
        """A privileged observation built from a deployable one, for running the Stage 1 expert
        on a real robot (which has no privileged sensors). Robots that support it fill the
        privileged-only entries with their nominal values; numpy in, numpy out; jax in, jax out."""
        raise NotImplementedError(
            f"robot '{self.name}' cannot build privileged observations from deployable ones, "
            "so its expert cannot run on the real robot"
        )

    def update_info(self, model: mjx.Model, data: mjx.Data, action: jax.Array, info: dict, key: jax.Array) -> dict:
        """Advance task state kept in `info` (commands, previous action, ...) after a step."""
        return info

    def describe(self) -> dict[str, Any]:
        return {
            "action_size": self.action_size,
            "deployable_obs": list(self.deployable_obs_names),
            "privileged_obs": list(self.privileged_obs_names),
            "randomized": [dataclasses.asdict(p) for p in self.randomized_params()],
        }
