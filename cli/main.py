"""The `simdist` command line: a thin Typer layer over `simdist.pipelines`."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from simdist.errors import SimdistError, short_reason
from simdist.paths import check_output_dir, check_output_file, make_output_dir

app = typer.Typer(
    name="simdist",
    help="Simulation Distillation: train an expert in MJX, distill a latent world model, "
    "plan with MPPI on the robot, and adapt the dynamics to reality.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

RobotOpt = typer.Option("cartpole", "--robot", "-r", help="Robot name; see `simdist robots`.")
PresetOpt = typer.Option("default", "--preset", "-p", help="Config preset: tiny | default | paper.")
SeedOpt = typer.Option(0, "--seed", help="Random seed.")


class _Interrupted(Exception):
    """Ctrl-C, as one line saying what was kept. Typer turns a KeyboardInterrupt into a silent
    exit 130, so commands raise this instead and `main` prints it."""


def _on_interrupt(kept: str):
    """Decorate a command: a Ctrl-C (the first, or another one during the cleanup that the
    first started) ends it with "interrupted; KEPT" and exit code 130."""

    def decorate(command):
        @functools.wraps(command)
        def wrapped(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                raise _Interrupted(kept) from None

        return wrapped

    return decorate


_RESUME = "checkpoints saved so far are kept; run the same command again to resume"


def _parse_set(items: list[str], flag: str = "--set") -> dict:
    """`--set ppo.num_iterations=10` -> {"ppo.num_iterations": 10} (values parsed as JSON)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SimdistError(f"{flag} takes KEY=VALUE, got '{item}'")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, list):
            value = tuple(value)
        out[key.strip()] = value
    return out


@app.command("train-expert")
@_on_interrupt("checkpoints and snapshots saved so far are kept; run the same command again to resume")
def train_expert_cmd(
    robot: str = RobotOpt,
    preset: str = PresetOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory [default: runs/<robot>/expert]."),
    seed: int = SeedOpt,
    set_: list[str] = typer.Option([], "--set", help="Override a config field, e.g. --set ppo.num_iterations=50."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from this finished expert run's "
                                             "final policy, value function and normaliser (e.g. flat, then slopes)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Stage 1: PPO expert on privileged state in MJX, with domain randomisation.

    Keeps policy snapshots along training (the sub-optimal ones feed Stage 2) and the value
    function. Run the same command again to resume an interrupted run.
    """

    from simdist.pipelines.train_expert import make_config, train_expert

    cfg = make_config(robot, preset, seed, _parse_set(set_))
    if init_from is not None:
        cfg = dataclasses.replace(cfg, init_from=str(init_from.resolve()))
    out = check_output_dir(out or Path("runs") / robot / "expert", "--out", not_a_dataset=True)
    result = train_expert(cfg, out, show_progress=progress)
    m = result.metrics
    typer.echo(
        f"{robot} expert ({preset}, {cfg.ppo.total_steps:,} steps): "
        f"return {m['expert_return_mean']:.1f} ± {m['expert_return_std']:.1f}  vs random policy "
        f"{m['random_return_mean']:.1f} ± {m['random_return_std']:.1f}  "
        f"(episodes of {m['episode_length']} steps)"
    )
    typer.echo(f"saved to {out}  (metrics.json, training_curve.png, snapshots/)")


@app.command("eval-expert")
@_on_interrupt("no report was written")
def eval_expert_cmd(
    expert: Path = typer.Option(..., "--expert", "-e", help="A train-expert run directory."),
    robot: Optional[str] = typer.Option(None, "--robot", "-r", help="Check the expert is for this robot."),
    episodes: int = typer.Option(10, "--episodes", "-n", help="Episodes (parallel envs), one per env."),
    command: Optional[str] = typer.Option(None, "--command", "-c", help="Fixed command, e.g. 0.5,0,0 (vx, vy, "
                                          "yaw rate) [default: the robot's deploy command]; robots with a command only."),
    last: Optional[int] = typer.Option(None, "--last", help="Evaluate the newest N snapshots [default: all]."),
    seed: int = SeedOpt,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report here [default: <expert>/eval.json]."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Add a uniformly random policy's row."),
    randomize: bool = typer.Option(True, "--randomize/--no-randomize", help="Domain randomisation as in training."),
    set_: list[str] = typer.Option([], "--set", help="Override an env config field for the evaluation, e.g. "
                                   "--set slope_range_deg=0 (flat ground only)."),
) -> None:
    """Evaluate the policy snapshots of an expert run in MJX: return, episode length, falls and,
    for robots with a velocity command, forward-velocity tracking error and distance.

    Every snapshot runs the same episodes (same seed, initial states and physics). Falls are
    episodes ended by termination, not by the time limit.
    """
    from simdist.pipelines.eval_expert import eval_expert, format_table, parse_command

    check_output_file(json_out if json_out is not None else expert / "eval.json", "--json")
    res = eval_expert(expert, robot, episodes=episodes, command=parse_command(command),
                      snapshots="all" if last is None else last, seed=seed, randomize=randomize,
                      random_baseline=baseline, env_overrides=_parse_set(set_), out=json_out)
    typer.echo(format_table(res.report))
    typer.echo(f"saved to {res.path}")


@app.command("generate-data")
@_on_interrupt("the dataset holds whole episodes only; run the same command again to continue it")
def generate_data_cmd(
    robot: str = RobotOpt,
    preset: str = PresetOpt,
    expert: Optional[Path] = typer.Option(None, "--expert", "-e", help="train-expert run [default: runs/<robot>/expert]."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Dataset path [default: runs/<robot>/data]."),
    seed: int = SeedOpt,
    set_: list[str] = typer.Option([], "--set", help="Override a config field, e.g. --set transitions=200000."),
    env_set: list[str] = typer.Option([], "--env-set", help="Override a field of the expert's env config for "
                                      "this data, e.g. --env-set friction_range=[0.6,1.2] (randomise differently)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Stage 2: perturbed-action rollouts in MJX, labelled with reward and expert value.

    The expert drives half of the episodes and the sub-optimal snapshots the rest, with
    contiguous action-noise bursts. Written to a tensorstore (zarr v3) dataset in whole
    episodes; run the same command again to continue an interrupted run.
    """
    from simdist.data.dataset import Dataset, format_info
    from simdist.pipelines.generate_data import generate_data, make_config

    cfg = make_config(robot, preset, seed, _parse_set(set_))
    if env_set:
        cfg = dataclasses.replace(cfg, env_overrides=tuple(_parse_set(env_set, "--env-set").items()))
    expert = expert or Path("runs") / robot / "expert"
    out = check_output_dir(out or Path("runs") / robot / "data", "--out")
    result = generate_data(cfg, expert, out, show_progress=progress)
    if result.added_transitions:
        typer.echo(f"added {result.added_transitions:,} transitions in {result.seconds:.1f} s "
                   f"({result.rate:,.0f} transitions/s)")
    typer.echo(format_info(Dataset.open(out).info()))


@app.command("distill")
@_on_interrupt(_RESUME)
def distill_cmd(
    robot: str = RobotOpt,
    preset: str = PresetOpt,
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Stage 2 dataset [default: runs/<robot>/data]."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run/model directory [default: runs/<robot>/model]."),
    seed: int = SeedOpt,
    set_: list[str] = typer.Option([], "--set", help="Override a config field, e.g. --set model.dynamics=mlp."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Stage 3: train the latent world model (encoder, dynamics, reward, value, policy prior).

    Reports held-out latent error per horizon step, reward and value R² and the
    behaviour-cloning error (metrics.json, horizon_error.png). Run the same command again to
    resume an interrupted run.
    """
    from simdist.pipelines.distill import distill, make_config

    cfg = make_config(robot, preset, seed, _parse_set(set_))
    data = data or Path("runs") / robot / "data"
    out = check_output_dir(out or Path("runs") / robot / "model", "--out", not_a_dataset=True)
    result = distill(cfg, data, out, show_progress=progress)
    r = result.metrics
    k = cfg.r2_steps
    lat = r["latent_error_per_step"]
    typer.echo(
        f"{robot} world model ({preset}, {cfg.model.dynamics} dynamics, {r['parameters']:,} parameters), "
        f"held-out over {r['windows']:,} windows:"
    )
    typer.echo(f"  reward R² {r[f'reward_r2_first_{k}']:.3f}, value R² {r[f'value_r2_first_{k}']:.3f} "
               f"(first {k} horizon steps); behaviour-cloning action RMSE {r['bc_action_rmse']:.3f}")
    typer.echo("  latent MSE by horizon step: " + " ".join(f"{x:.4f}" for x in lat[: min(len(lat), 8)])
               + (" ..." if len(lat) > 8 else ""))
    typer.echo(f"saved to {out}  (metrics.json, horizon_error.png, model.json, weights/)")


data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("info")
@_on_interrupt("nothing was written")
def data_info_cmd(
    path: Path = typer.Argument(..., help="A simdist dataset (generate-data or deploy --record)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Read every chunk once to check its "
                                "checksum and that none is missing (--no-verify: metadata only, instant)."),
) -> None:
    """Size, episodes, fields, sources and normalisation statistics of a dataset; verifies every chunk."""
    from simdist.data.dataset import Dataset, format_info

    typer.echo(format_info(Dataset.open(path).info(verify=verify)))


@app.command("finetune")
@_on_interrupt(_RESUME)
def finetune_cmd(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A model directory (distill or finetune "
                                         "output) [default: the real data's robot's shipped model]."),
    real_data: Path = typer.Option(..., "--real-data", help="Real-robot dataset (deploy --record)."),
    mode: str = typer.Option("dynamics", "--mode", help="dynamics: train the dynamics only; residual: ReDRAW latent residual."),
    out: Path = typer.Option(..., "--out", "-o", help="Output model directory."),
    preset: str = PresetOpt,
    seed: int = SeedOpt,
    set_: list[str] = typer.Option([], "--set", help="Override a config field, e.g. --set steps=500."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Stage 4: finetune only the dynamics on real data (or a ReDRAW latent residual).

    Encoder, reward, value, policy prior and normalisation statistics stay frozen and
    bit-identical. The loss is latent consistency only: real data needs no rewards or values.
    """
    from simdist.pipelines.finetune import finetune, make_config

    check_output_dir(out, "--out", not_a_dataset=True)
    from simdist.data.dataset import Dataset
    from simdist.robots import get_robot

    ds = Dataset.open(real_data)
    robot = ds.spec.robot
    ds.close()
    cfg = make_config(preset, seed, mode, _parse_set(set_), robot=robot)  # the robot's finetune presets
    if model is None:
        model = get_robot(robot).pretrained("model")
        if model is None:
            raise SimdistError(f"robot '{robot}' ships no pretrained world model; give --model")
        typer.echo(f"finetuning the shipped world model {model}")
    result = finetune(cfg, model, real_data, out, show_progress=progress)
    m = result.metrics
    used = m["real_data"]
    typer.echo(
        f"finetuned ({cfg.mode}, {m['trainable_parameters']:,} trainable parameters) on "
        f"{used['transitions']:,} real steps in {used['episodes']} episodes ({used['seconds']:.0f} s of robot time): "
        f"held-out latent MSE {m['latent_error_before']:.4f} -> {m['latent_error_after']:.4f}"
    )
    typer.echo(f"saved to {out}  (model.json, weights/, metrics.json)")


def _print_deploy(res, episodes: int, record: Optional[Path]) -> None:
    """Per-episode lines and the summary of a deploy run (of its finished episodes when it
    stopped early)."""
    import numpy as np

    for i, (ret, steps) in enumerate(zip(res.returns, res.steps)):
        shown = "n/a" if ret is None else f"{ret:8.2f}"
        typer.echo(f"episode {i + 1:3d}: return {shown}  ({steps} steps)")
    rets = [r for r in res.returns if r is not None]
    if rets:
        typer.echo(f"return {sum(rets) / len(rets):.2f} ± {float(np.std(rets)):.2f} over {len(rets)} episodes"
                   + (f" ({len(res.steps)} of {episodes} finished)" if len(res.steps) < episodes else ""))
    for name, m in res.metrics.items():
        typer.echo(f"{name} {m['mean']:.3f} ± {m['std']:.3f} over {m['n']} episodes")
    if res.safety_stops:
        reasons = sorted({r.safety_stop for r in res.episodes if r.safety_stop})
        typer.echo(f"safety stops: {res.safety_stops} of {len(res.episodes)} episodes ({'; '.join(reasons)})")
    diags = [r.controller_diag for r in res.episodes if "mean_std_max" in r.controller_diag]
    if diags:  # the planner's own view: elites that stop agreeing show as a jump of their std
        typer.echo(f"planner: elite std {np.mean([d['mean_std_mean'] for d in diags]):.2f} on average, "
                   f"up to {max(d['mean_std_max'] for d in diags):.2f}; predicted return of the best plan "
                   f"{np.mean([d['best_return_mean'] for d in diags]):.2f} on average, "
                   f"down to {min(d['best_return_min'] for d in diags):.2f}")
    lat = res.latency_ms
    typer.echo(f"controller latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms; missed deadlines {res.missed_deadlines}")
    if record is not None:
        typer.echo(f"recorded {res.recorded_transitions:,} steps to {record}")


@app.command("deploy")
@_on_interrupt("deploy stopped; episodes recorded so far are saved whole")
def deploy_cmd(
    robot: str = RobotOpt,
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="World-model directory: plan with MPPI."),
    expert: Optional[Path] = typer.Option(None, "--expert", "-e", help="Or run the Stage 1 expert policy instead."),
    gap: Optional[str] = typer.Option("default", "--gap", "-g", help="Reality gap: a name (see `simdist robots`), "
                                      "KEY=VALUE,... or a JSON file; 'none' for the nominal simulator."),
    episodes: int = typer.Option(5, "--episodes", "-n", help="Episodes to run."),
    record: Optional[Path] = typer.Option(None, "--record", help="Append the episodes to this real-data dataset."),
    mppi: str = typer.Option("default", "--mppi", help="Planner preset: tiny | default | paper."),
    mppi_horizon: Optional[int] = typer.Option(None, "--mppi-horizon", help="Plan this many steps "
                                               "[default: the preset's, at most the model's horizon]."),
    mppi_set: list[str] = typer.Option([], "--mppi-set", help="Override a field of the MPPI preset, e.g. "
                                       "--mppi-set noise_beta=2 --mppi-set init_std=1.0 (see docs/quadruped.md)."),
    mode: str = typer.Option("lock-step", "--mode", help="lock-step (the robot waits) or real-time (it does not)."),
    backend: str = typer.Option("sim-real", "--backend", help="Robot backend."),
    episode_length: Optional[int] = typer.Option(None, "--episode-length", help="Control steps per episode."),
    seed: int = SeedOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full report here: the "
                                            "config and, per episode, steps, return, metrics and latency."),
) -> None:
    """Run the MPPI planner (or the expert) online against a robot, and record real data.

    The controller sees the robot only through the robot interface. With the sim-real
    backend the reported return comes from the simulator's ground truth, for evaluation
    only; the planner never sees it.
    """
    from simdist.pipelines.deploy import DeployConfig, DeployInterrupted, deploy

    if record is not None:
        check_output_dir(record, "--record")
    if json_out is not None:
        check_output_file(json_out, "--json")
    if model is not None and expert is not None:
        raise SimdistError("give exactly one of --model (planner) or --expert (expert policy)")
    if model is None and expert is None:
        from simdist.robots import get_robot

        model = get_robot(robot).pretrained("model")
        if model is None:
            raise SimdistError(f"robot '{robot}' ships no pretrained world model; give --model (planner) or --expert")
        typer.echo(f"planning with the shipped world model {model}")
    cfg = DeployConfig(robot=robot, episodes=episodes, episode_length=episode_length, mppi=mppi,
                       mppi_horizon=mppi_horizon, mppi_overrides=tuple(_parse_set(mppi_set, "--mppi-set").items()),
                       backend=backend,
                       gap=gap, mode=mode, seed=seed)
    try:
        res = deploy(cfg, model_dir=model, expert_dir=expert, record=record, show_progress=progress)
    except DeployInterrupted as e:  # the finished episodes, then what was kept
        _print_deploy(e.partial_result, cfg.episodes, record)
        raise _Interrupted(str(e)) from None
    except SimdistError as e:
        if getattr(e, "partial_result", None) is not None and e.partial_result.episodes:
            _print_deploy(e.partial_result, cfg.episodes, record)
        raise
    _print_deploy(res, cfg.episodes, record)
    if json_out is not None:
        import dataclasses

        from simdist.config import write_json

        make_output_dir(json_out.parent, "--json")
        report = {"config": dataclasses.asdict(cfg), "model": None if model is None else str(model),
                  "expert": None if expert is None else str(expert), **res.to_dict()}
        write_json(json_out, report)
        typer.echo(f"report written to {json_out}")


@app.command("export")
@_on_interrupt("the export directory is unchanged")
def export_cmd(
    robot: str = RobotOpt,
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="World-model directory (distill or finetune output)."),
    expert: Optional[Path] = typer.Option(None, "--expert", "-e", help="train-expert run: its final snapshot is kept."),
    out: Path = typer.Option(..., "--out", "-o", help="Export directory (model/, expert/, export.json)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing export directory."),
) -> None:
    """A slim copy of a world model and an expert: weights, normalisation statistics and
    configs only, checked to load. This is how robots/<robot>/pretrained is made."""
    from simdist.pipelines.export import export

    check_output_dir(out, "--out")
    if out.exists():  # replaced by a rename in its folder
        check_output_dir(out.absolute().parent, "--out's folder")
    info = export(robot, out, model_dir=model, expert_dir=expert, overwrite=overwrite)
    for kind in ("model", "expert"):
        if kind in info:
            typer.echo(f"{kind}: {info[kind]['source']} -> {out / kind} ({info[kind]['bytes'] / 2**20:.1f} MiB)")


@app.command("demo")
@_on_interrupt("finished stages are kept; run the same command again to continue")
def demo_cmd(
    robot: str = RobotOpt,
    preset: str = PresetOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Demo directory [default: runs/demo/<robot>]."),
    gap: str = typer.Option("default", "--gap", "-g", help="Reality gap of the real robot."),
    seed: int = SeedOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """The whole pipeline end to end: expert, data, world model, zero-shot deploy on the real
    robot, finetuning in both modes on growing amounts of real data, deploy again; one table."""
    from simdist.pipelines.demo import DemoConfig, run_demo

    out = check_output_dir(out or Path("runs") / "demo" / robot, "--out", not_a_dataset=True)
    run_demo(DemoConfig(robot=robot, preset=preset, seed=seed, gap=gap), out, show_progress=progress)


gaps_app = typer.Typer(help="The random-gap battery: gaps nobody chose, zero-shot against finetuned.",
                       no_args_is_help=True)
app.add_typer(gaps_app, name="gaps")


@gaps_app.command("sample")
@_on_interrupt("nothing was written")
def gaps_sample_cmd(
    robot: str = RobotOpt,
    n: int = typer.Option(10, "--n", "-n", help="Number of gaps."),
    seed: int = typer.Option(0, "--seed", help="The gaps' seed (the same seed gives the same gaps)."),
) -> None:
    """Print N random gaps for a robot, one `--gap` value per line (see docs/gap-battery.md)."""
    from simdist.backends.battery import gap_spec, robot_battery, sample_gaps

    for gap in sample_gaps(robot_battery(robot), n, seed):
        typer.echo(gap_spec(gap))


@gaps_app.command("run")
@_on_interrupt("finished gaps are kept in battery.json; run the same command again to continue")
def gaps_run_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="The distilled model directory to adapt."),
    out: Path = typer.Option(..., "--out", "-o", help="Battery directory (battery.json, battery.png, one folder per gap)."),
    robot: str = RobotOpt,
    n: int = typer.Option(10, "--n", "-n", help="Number of gaps."),
    seed: int = typer.Option(0, "--seed", help="The gaps' seed."),
    real_seconds: float = typer.Option(60.0, "--real-seconds", help="Real data recorded zero-shot on each gap (s)."),
    episodes: int = typer.Option(10, "--episodes", help="Evaluation episodes without a gap and after finetuning."),
    mode: str = typer.Option("dynamics", "--mode", help="Finetune mode: dynamics | residual."),
    set_: list[str] = typer.Option([], "--set", help="Override a finetune config field, e.g. --set steps=500."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """For each random gap: zero-shot deploy while recording, finetune, deploy again; a summary."""
    from simdist.pipelines.gap_battery import BatteryConfig, run_battery

    cfg = BatteryConfig(robot=robot, n=n, seed=seed, real_seconds=real_seconds, episodes=episodes, mode=mode,
                        finetune_overrides=tuple(sorted(_parse_set(set_).items())))
    check_output_dir(out, "--out", not_a_dataset=True)
    run_battery(cfg, model, out, show_progress=progress)


@app.command("robots")
@_on_interrupt("nothing was written")
def robots_cmd() -> None:
    """List the robots, their observations, randomisation and reality gaps."""
    from simdist.robots import get_robot, robot_names

    for name in robot_names():
        robot = get_robot(name)
        task = robot.make_task()
        d = task.describe()
        typer.echo(f"{name}: {robot.description}")
        typer.echo(f"  presets: {', '.join(robot.expert_presets)}")
        typer.echo(f"  actions: {d['action_size']}")
        typer.echo(f"  deployable obs ({len(d['deployable_obs'])}): {', '.join(d['deployable_obs'])}")
        typer.echo(f"  privileged obs ({len(d['privileged_obs'])}): {', '.join(d['privileged_obs'])}")
        rnd = [
            f"{p['name']} x[{p['low']}, {p['high']}]" if p["low"] is not None else p["name"] for p in d["randomized"]
        ]
        typer.echo(f"  randomised: {', '.join(rnd)}")
        if robot.gaps:
            from simdist.backends.gaps import describe_gaps, gap_keys

            typer.echo(f"  reality gaps (--gap NAME, or KEY=VALUE,... with keys {', '.join(sorted(gap_keys(name)))}):")
            for gap, text in describe_gaps(name).items():
                typer.echo(f"    {gap:14s} {text}")
        else:
            typer.echo("  reality gaps: (none yet)")


def _enable_compile_cache() -> None:
    """Keep compiled XLA programs between invocations (SIMDIST_JAX_CACHE=off disables)."""
    where = os.environ.get("SIMDIST_JAX_CACHE", str(Path.home() / ".cache" / "simdist" / "jax"))
    if where.lower() in ("off", "0", "none", ""):
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        _enable_compile_cache()
        app()
    except SimdistError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:  # a file-system failure that no check caught: one line, not a traceback
        typer.echo(f"error: {short_reason(e)}", err=True)
        sys.exit(1)
    except (_Interrupted, KeyboardInterrupt) as e:
        # Another Ctrl-C from here on would only cut this line or the exit's cleanup.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        kept = str(e) if isinstance(e, _Interrupted) else "nothing was started"  # before the command ran
        typer.echo(f"interrupted; {kept}", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
