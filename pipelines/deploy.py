"""Deploy: run a controller online against a robot, report returns and latency, record real data.

The controller is either the MPPI planner over a world model (`model_dir`, a distill or
finetune output) or the Stage 1 expert on deployable observations (`expert_dir`, a
train-expert run). The robot is a backend (`simdist.backends.make_backend`) used ONLY through
the `RobotInterface` methods: reset, command, step (act + wait + observe), done, stop, stats.

Ground truth is for evaluation only. The `sim-real` backend has a `probe()` (the true state
and the task reward). Deploy reads it only to REPORT each episode's true return; it is never
given to the controller, never recorded, and backends without a probe (real hardware) report
the return as None.

Each episode: ``obs = robot.reset(seed)``; ``controller.reset(obs, command)``; then up to
``episode_length`` control steps, stopping early when ``robot.done()`` (a safety stop):
``action = controller.act(obs, command)`` (timed with `perf_counter`), clamped to the robot's
limits, ``obs = robot.step(action)``. Compilation happens before the first episode
(`Controller.warmup`), so latencies are those of steady-state control steps.

Recording (`record`): a Stage 2 dataset (`simdist.data.dataset`) with ``source="real"`` and
no labels, opened with `Dataset.open_or_create`, so several deploy runs append to the same
dataset (a mismatched existing dataset raises DatasetError). Row i of an episode is
(o_i, a_i, c_i): the observation the controller saw, the clamped action sent for it, and the
command. No reward or value is recorded and none is invented. Each episode is appended when
it ends, with policy = -1 and terminated = 1 when the robot's safety stop ended it.

Safety: on any exception from the controller or the loop (including the planner's NaN
PlannerError) or KeyboardInterrupt, the robot is stopped first; then every finished episode
and the partial one recorded so far (real data, marked terminated = 1) are saved, the dataset
is closed, and the error is re-raised as a one-line PlannerError (a SimdistError keeps its
type), or, for a Ctrl-C, as `DeployInterrupted` (a KeyboardInterrupt). Either carries the
finished episodes as a `DeployResult` in `.partial_result`, so the caller can still report
them. Appending an episode and saving the partial one postpone Ctrl-C until they are done
(`simdist.progress.deferred_interrupt`): a second Ctrl-C never cuts the recorded data.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simdist.backends import make_backend
from simdist.config import replace_checked
from simdist.data.dataset import Dataset, DatasetSpec
from simdist.errors import CheckpointError, ConfigError, PlannerError, SimdistError, short_reason
from simdist.planning.controller import Controller, ExpertController, PlannerController
from simdist.planning.mppi import MPPIConfig, get_preset
from simdist.progress import deferred_interrupt, progress_bar
from simdist.robots import get_robot

REAL_POLICY = -1  # the `policy` column of real-robot episodes


@dataclass(frozen=True)
class DeployConfig:
    robot: str
    episodes: int = 5
    episode_length: int | None = None  # None: the robot's env config episode_length
    mppi: str = "default"  # MPPI preset name (planner only)
    mppi_horizon: int | None = None  # override the preset's horizon (must be <= the model's)
    # Other MPPIConfig fields replacing the preset's, e.g. (("noise_beta", 2.0),); checked when the
    # planner is built (unknown field or invalid value: one-line ConfigError).
    mppi_overrides: tuple[tuple[str, Any], ...] = ()
    backend: str = "sim-real"
    gap: str | None = "default"
    mode: str = "lock-step"
    seed: int = 0
    warm_start: bool = True

    def __post_init__(self):
        if self.episodes < 1:
            raise ConfigError(f"deploy: episodes must be >= 1, got {self.episodes}")
        if self.episode_length is not None and self.episode_length < 1:
            raise ConfigError(f"deploy: episode_length must be >= 1, got {self.episode_length}")
        if self.mppi_horizon is not None and self.mppi_horizon < 1:
            raise ConfigError(f"deploy: mppi_horizon must be >= 1, got {self.mppi_horizon}")


@dataclass
class EpisodeReport:
    episode: int
    seed: int
    steps: int
    ground_truth_return: float | None  # from the evaluation probe; None without one
    latency_mean_ms: float
    latency_max_ms: float
    missed_deadlines: int
    safety_stop: str | None  # the robot's stop reason when its safety limit ended the episode
    metrics: dict[str, float] = field(default_factory=dict)  # the probe's robot metrics (evaluation only)
    # The controller's per-step diagnostics over the episode: KEY_mean, KEY_min and KEY_max for
    # each numeric one (the planner's best_return, mean_elite_return, mean_std, ...; none for an
    # expert policy). A jump of mean_std above MPPI's min_std means the elites stopped agreeing.
    controller_diag: dict[str, float] = field(default_factory=dict)


@dataclass
class DeployResult:
    controller: str
    returns: list[float | None]
    steps: list[int]
    latency_ms: dict[str, float]  # p50, p99, mean, max over all control steps
    missed_deadlines: int
    recorded: Path | None
    recorded_transitions: int  # rows appended by this run
    recorded_episodes: int  # episodes appended by this run
    stopped_early: str | None  # the error that stopped the run, if any (set before re-raising)
    episodes: list[EpisodeReport] = field(default_factory=list)
    compile_s: float = 0.0

    @property
    def safety_stops(self) -> int:
        """Episodes ended by the robot's safety limit (for the quadruped: falls)."""
        return sum(r.safety_stop is not None for r in self.episodes)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """Mean and std over episodes of each robot metric the probe reported."""
        keys = sorted({k for r in self.episodes for k in r.metrics})
        out = {}
        for k in keys:
            v = np.array([r.metrics[k] for r in self.episodes if k in r.metrics], np.float64)
            out[k] = {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}
        return out

    @property
    def mean_return(self) -> float | None:
        vals = [r for r in self.returns if r is not None]
        return float(np.mean(vals)) if vals else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["recorded"] = str(self.recorded) if self.recorded is not None else None
        d["mean_return"] = self.mean_return
        d["safety_stops"] = self.safety_stops
        d["metrics"] = self.metrics
        return d


def summarise_diag(diags: list[dict[str, Any]]) -> dict[str, float]:
    """KEY_mean / KEY_min / KEY_max over an episode's steps for each numeric key. `finite` is
    left out: a non-finite plan stops the run with a PlannerError, so it would always be 1."""
    out: dict[str, float] = {}
    keys = sorted({k for d in diags for k, v in d.items()
                   if k != "finite" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    for k in keys:
        v = np.array([d[k] for d in diags if k in d], np.float64)
        out.update({f"{k}_mean": float(v.mean()), f"{k}_min": float(v.min()), f"{k}_max": float(v.max())})
    return out


def latency_stats(times_ms) -> dict[str, float]:
    t = np.asarray(times_ms, np.float64)
    if t.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "max": float("nan"), "n": 0}
    return {
        "p50": float(np.percentile(t, 50)),
        "p99": float(np.percentile(t, 99)),
        "mean": float(t.mean()),
        "max": float(t.max()),
        "n": int(t.size),
    }


def episode_seed(seed: int, episode: int) -> int:
    """The robot reset seed of an episode: distinct across (seed, episode) pairs."""
    return int(np.random.SeedSequence([int(seed), int(episode)]).generate_state(1)[0])


def _override_mppi(mppi: MPPIConfig, overrides: dict[str, Any]) -> MPPIConfig:
    """The preset with these fields replaced, each checked against its type (one-line ConfigError)."""
    return replace_checked(mppi, overrides, "deploy --mppi-set")


def make_controller(cfg: DeployConfig, spec, *, model_dir: Path | None = None,
                    expert_dir: Path | None = None) -> Controller:
    """The controller of a deploy run; CheckpointError (one line) when the artifact is for another robot."""
    if (model_dir is None) == (expert_dir is None):
        raise ConfigError("deploy needs exactly one of a world model (--model) or an expert run (--expert)")
    if model_dir is not None:
        from simdist.models.io import load_model

        model, _ = load_model(Path(model_dir), cfg.robot)
        m = model.cfg
        want = (spec.obs_size, spec.action_size, spec.command_size)
        if (m.obs_size, m.action_size, m.command_size) != want:
            raise CheckpointError(
                f"{model_dir}: the world model takes obs/action/command sizes "
                f"{(m.obs_size, m.action_size, m.command_size)}, the robot has {want}"
            )
        try:
            mppi = get_preset(cfg.mppi, cfg.robot)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        overrides = dict(cfg.mppi_overrides)
        mppi = _override_mppi(mppi, overrides)
        if cfg.mppi_horizon is not None:
            mppi = dataclasses.replace(mppi, horizon=cfg.mppi_horizon)
        elif mppi.horizon > m.horizon and "horizon" not in overrides:
            # A preset plans at most as far as the model was trained to predict.
            mppi = dataclasses.replace(mppi, horizon=m.horizon)
        return PlannerController(model, mppi, spec.action_low, spec.action_high, seed=cfg.seed,
                                 warm_start=cfg.warm_start)
    from simdist.rl.policy import load_expert

    snap = load_expert(Path(expert_dir), cfg.robot)
    task = get_robot(cfg.robot).make_task(snap.config.env)
    if len(task.deployable_obs_names) != spec.obs_size or task.action_size != spec.action_size:
        raise CheckpointError(f"{expert_dir}: the expert's observation/action sizes do not match the robot")
    return ExpertController(snap, task)


class DeployInterrupted(KeyboardInterrupt):
    """Ctrl-C during deploy, after the robot was stopped and the recorded data saved. str():
    where it stopped and what was saved, one line; `partial_result`: the finished episodes."""

    def __init__(self, message: str, partial_result: DeployResult):
        super().__init__(message)
        self.partial_result = partial_result


class _Recorder:
    """Collects the rows of the running episode and appends whole episodes to the dataset."""

    def __init__(self, path: Path | None, spec, extra: dict[str, Any]):
        self.path = Path(path) if path is not None else None
        self.spec = spec
        self.ds: Dataset | None = None
        self.transitions = 0
        self.episodes = 0
        if self.path is not None:
            dspec = DatasetSpec(
                robot=spec.robot,
                source="real",
                control_dt=float(spec.control_dt),
                obs_size=int(spec.obs_size),
                action_size=int(spec.action_size),
                command_size=int(spec.command_size),
                labels=False,
                obs_names=tuple(spec.obs_names),
            )
            self.ds = Dataset.open_or_create(self.path, dspec, extra=extra)
        self.start_episode()

    def start_episode(self) -> None:
        self.obs: list[np.ndarray] = []
        self.act: list[np.ndarray] = []
        self.cmd: list[np.ndarray] = []

    def add(self, obs, action, command) -> None:
        if self.ds is None:
            return
        self.obs.append(np.asarray(obs, np.float32).copy())
        self.act.append(np.asarray(action, np.float32).copy())
        self.cmd.append(np.asarray(command, np.float32).copy())

    def end_episode(self, terminated: bool) -> None:
        """Append the running episode (if it has any row) and start a new one."""
        n = min(len(self.obs), len(self.act), len(self.cmd))  # a Ctrl-C may land inside `add`
        if self.ds is not None and n > 0:
            steps = {"obs": np.stack(self.obs[:n]), "action": np.stack(self.act[:n])}
            if self.spec.command_size > 0:
                steps["command"] = np.stack(self.cmd[:n])
            self.ds.append_episodes(steps, np.array([n]), np.array([REAL_POLICY]), np.array([int(terminated)]))
            self.transitions += n
            self.episodes += 1
        self.start_episode()

    def close(self) -> None:
        if self.ds is not None:
            self.ds.close()


def deploy(
    cfg: DeployConfig,
    *,
    model_dir: Path | None = None,
    expert_dir: Path | None = None,
    record: Path | None = None,
    show_progress: bool = True,
    controller: Controller | None = None,
    backend_kwargs: dict[str, Any] | None = None,
) -> DeployResult:
    """Run `cfg.episodes` episodes of a controller on a robot. See the module docstring.

    Exactly one of `model_dir` (MPPI planner) and `expert_dir` (Stage 1 expert) is given,
    or, from Python, a ready `controller` (e.g. a `ZeroController` baseline). The backend's
    evaluation probe, when it has one, is read only to report the ground-truth return.
    """
    robot = get_robot(cfg.robot)
    n_given = sum(x is not None for x in (model_dir, expert_dir, controller))
    if n_given != 1:
        raise ConfigError("deploy needs exactly one of a world model (--model) or an expert run (--expert)")
    backend = make_backend(cfg.backend, robot, gap=cfg.gap, mode=cfg.mode, seed=cfg.seed, **(backend_kwargs or {}))
    spec = backend.spec
    if controller is None:
        controller = make_controller(cfg, spec, model_dir=model_dir, expert_dir=expert_dir)
    length = int(cfg.episode_length if cfg.episode_length is not None else robot.make_task().config.episode_length)
    lo, hi = np.asarray(spec.action_low), np.asarray(spec.action_high)

    t0 = time.perf_counter()
    controller.warmup(spec.obs_size, spec.command_size)  # compile before the robot's clock starts
    compile_s = time.perf_counter() - t0

    extra = {
        "created_by": "simdist deploy",
        "backend": cfg.backend,
        "gap": cfg.gap,
        "mode": cfg.mode,
        "controller": controller.name,
        "model": str(model_dir) if model_dir is not None else None,
        "expert": str(expert_dir) if expert_dir is not None else None,
    }
    recorder = _Recorder(record, spec, extra)
    all_times: list[float] = []
    reports: list[EpisodeReport] = []
    result = DeployResult(controller=controller.name, returns=[], steps=[], latency_ms={}, missed_deadlines=0,
                          recorded=Path(record) if record is not None else None, recorded_transitions=0,
                          recorded_episodes=0, stopped_early=None, episodes=reports, compile_s=compile_s)

    def finish() -> None:
        result.latency_ms = latency_stats(all_times)
        result.missed_deadlines = int(sum(r.missed_deadlines for r in reports))
        result.recorded_transitions = recorder.transitions
        result.recorded_episodes = recorder.episodes

    try:
        with backend, progress_bar(f"deploy {cfg.robot} ({controller.name})", cfg.episodes, show_progress) as update:
            probe = backend.probe() if hasattr(backend, "probe") else None  # evaluation only
            for ep in range(cfg.episodes):
                seed = episode_seed(cfg.seed, ep)
                obs = backend.reset(seed=seed)
                command = backend.command()
                controller.reset(obs, command)
                recorder.start_episode()
                times: list[float] = []
                diags: list[dict[str, Any]] = []
                steps = 0
                try:
                    while steps < length and not backend.done():
                        command = backend.command()
                        t = time.perf_counter()
                        action, diag = controller.act(obs, command)
                        times.append(1e3 * (time.perf_counter() - t))
                        diags.append(diag)
                        a = np.asarray(action, np.float64).reshape(spec.action_size)
                        if not np.all(np.isfinite(a)):
                            raise PlannerError(f"{controller.name} produced a non-finite action at step {steps}")
                        a = np.clip(a, lo, hi)
                        recorder.add(obs, a, command)
                        obs = backend.step(a)
                        steps += 1
                except BaseException:
                    backend.stop(reason="controller error")  # stop first, then save what we have
                    all_times.extend(times)
                    raise
                all_times.extend(times)
                # Append the episode whole and report it; a Ctrl-C meanwhile counts after.
                with deferred_interrupt():
                    safety = backend.done()
                    stats = backend.stats
                    recorder.end_episode(terminated=safety)
                    ret = probe.episode_return if probe is not None else None
                    metrics = probe.episode_metrics() if probe is not None else {}
                    reports.append(EpisodeReport(
                        episode=ep,
                        seed=seed,
                        steps=steps,
                        ground_truth_return=ret,
                        latency_mean_ms=float(np.mean(times)) if times else float("nan"),
                        latency_max_ms=float(np.max(times)) if times else float("nan"),
                        missed_deadlines=int(stats.get("missed_deadlines", 0)),
                        safety_stop=stats.get("stop_reason") if safety else None,
                        metrics=metrics,
                        controller_diag=summarise_diag(diags),
                    ))
                    result.returns.append(ret)
                    result.steps.append(steps)
                fields = {"steps": steps, "p50 ms": f"{np.percentile(times, 50):.2f}" if times else "-"}
                if ret is not None:
                    fields["return"] = f"{ret:.2f}"
                if "forward_progress_m" in metrics:
                    fields["progress m"] = f"{metrics['forward_progress_m']:.2f}"
                update(advance=1, **fields)
    except BaseException as e:
        # The robot is already stopped (and closed by `with backend`). Save the partial
        # episode, which is real data, then the error goes up as one line. A second Ctrl-C
        # meanwhile waits until the data is saved.
        with deferred_interrupt(reraise=False):
            err = _saved_and_explained(e, cfg, recorder, reports, result, finish)
            if err is e:
                raise
            raise err from e
    recorder.close()
    finish()
    return result


def _saved_and_explained(e: BaseException, cfg: DeployConfig, recorder: _Recorder, reports: list[EpisodeReport],
                         result: DeployResult, finish) -> BaseException:
    """After a failure inside the episode loop: save the partial episode, close the dataset and
    return the one-line exception to raise, carrying the finished episodes (`partial_result`)."""
    save_error = None
    partial = min(len(recorder.obs), len(recorder.act), len(recorder.cmd))
    try:
        recorder.end_episode(terminated=True)
    except Exception as se:  # noqa: BLE001 - reported below, must not hide `e`
        save_error = se
    finally:
        recorder.close()
        finish()
    result.stopped_early = short_reason(e, with_type=False)
    if not isinstance(e, (Exception, KeyboardInterrupt)):
        return e
    interrupted = isinstance(e, KeyboardInterrupt)
    what = "interrupted (KeyboardInterrupt)" if interrupted else short_reason(e, with_type=False)
    where = f"deploy episode {len(reports) + 1} of {cfg.episodes}: robot stopped"
    if recorder.ds is not None:
        where += f"; saved {recorder.episodes} episode(s), {recorder.transitions} transitions"
        if partial and save_error is None:
            where += f" (the last one partial, {partial} steps)"
        where += f" to {recorder.path}"
    if save_error is not None:
        where += f"; saving the partial episode FAILED: {short_reason(save_error, with_type=False)}"
    if interrupted:
        return DeployInterrupted(where, result)
    if isinstance(e, SimdistError):
        try:
            err = type(e)(f"{what} [{where}]")
        except Exception:  # noqa: BLE001 - an exotic subclass: let the original through
            err = e
    else:
        err = PlannerError(f"{type(e).__name__} in deploy: {what} [{where}]")
    err.partial_result = result
    return err
    recorder.close()
    finish()
    return result
