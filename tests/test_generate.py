"""Stage 2: label timing, perturbation statistics, policy mixing and resumable generation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simdist.data.generate import (
    PerturbConfig,
    advance_noise,
    bank_params,
    init_gen_state,
    init_noise,
    is_noised,
    make_chunk_fn,
    make_policy_bank,
)


def _runs(flags: np.ndarray, value: bool) -> list[int]:
    """Lengths of complete runs of `value` (runs touching either end are dropped)."""
    out, n, i = [], len(flags), 0
    while i < n:
        j = i
        while j < n and flags[j] == flags[i]:
            j += 1
        if flags[i] == value and i > 0 and j < n:
            out.append(j - i)
        i = j
    return out


@pytest.fixture(scope="module")
def tiny_bank(tiny_expert):
    from simdist.rl.policy import load_snapshots

    snaps = load_snapshots(tiny_expert[1], "cartpole")
    return make_policy_bank(snaps), snaps


def test_label_timing_matches_a_hand_computed_rollout(tiny_bank, cartpole_env):
    """obs[i] = o(s_i), reward[i] = r(s_i, a_i), value[i] = V(s_{i+1}) before any auto-reset."""
    bank, snaps = tiny_bank
    env = cartpole_env
    cfg = PerturbConfig(noise_std_range=(0.3, 0.6), noisy_steps=(2, 5), clean_steps=(3, 8))
    steps = env.config.episode_length + 20  # crosses one episode end
    fn = make_chunk_fn(env, bank, cfg, steps)
    gs0 = init_gen_state(env, bank, cfg, jax.random.key(3), 2)
    _, recs = fn(gs0, bank_params(bank))
    recs = jax.device_get(recs)
    value_fn = jax.jit(snaps[-1].value_fn())
    policies = [jax.jit(s.policy_fn()) for s in snaps]
    step = jax.jit(env.step)
    for n in range(2):
        st = jax.tree.map(lambda x: x[n], gs0.env)
        for i in range(steps):
            np.testing.assert_allclose(recs["obs"][i, n], np.asarray(st.deployable_obs), atol=1e-6)
            pol_action = np.asarray(policies[int(recs["policy"][i, n])](st.privileged_obs))
            if not recs["noisy"][i, n]:
                np.testing.assert_allclose(recs["action"][i, n], pol_action, atol=1e-6)
            # The relabelled BC target: the expert's own action at s_i, whoever drove.
            expert_action = np.clip(np.asarray(policies[-1](st.privileged_obs)), -1.0, 1.0)
            np.testing.assert_allclose(recs["expert_action"][i, n], expert_action, atol=1e-6)
            nxt = step(st, jnp.asarray(recs["action"][i, n]))
            assert recs["reward"][i, n] == pytest.approx(float(nxt.reward), abs=1e-6)
            # V of the state the step reached: the pre-reset observation at an episode end.
            assert recs["value"][i, n] == pytest.approx(float(value_fn(nxt.final_obs)), rel=1e-5, abs=1e-5)
            assert bool(recs["done"][i, n]) == bool(nxt.done)
            if nxt.done:
                assert i == env.config.episode_length - 1
                assert not np.allclose(nxt.final_obs, nxt.privileged_obs)
            st = nxt
    # The expert flag is exactly "expert policy and a clean step".
    expert_idx = bank.size - 1
    np.testing.assert_array_equal(recs["expert"], (recs["policy"] == expert_idx) & ~recs["noisy"])


def test_noise_bursts_and_share_follow_the_config():
    cfg = PerturbConfig(noise_std_range=(0.1, 0.9), noisy_steps=(3, 12), clean_steps=(10, 40), never_noised_fraction=0.1)
    n_envs, n_steps = 1000, 1200

    def run(key):
        k0, k1 = jax.random.split(key)
        ns = init_noise(k0, 2, cfg)

        def body(ns, k):
            return advance_noise(ns, k, cfg), is_noised(ns)

        _, flags = jax.lax.scan(body, ns, jax.random.split(k1, n_steps))
        return ns.std, flags

    std, flags = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), n_envs))
    std, flags = np.asarray(std), np.asarray(flags)
    never = np.all(std == 0, axis=1)
    assert abs(never.mean() - 0.1) < 0.04
    assert not flags[never].any()
    noised_std = std[~never]
    assert noised_std.min() >= 0.1 and noised_std.max() <= 0.9
    noisy_runs = [r for row in flags[~never] for r in _runs(row, True)]
    clean_runs = [r for row in flags[~never] for r in _runs(row, False)]
    assert min(noisy_runs) == 3 and max(noisy_runs) == 12
    assert min(clean_runs) == 10 and max(clean_runs) == 40
    # Long-run share of noisy steps (the first clean phase biases early steps a little).
    share = flags[:, 200:].mean()
    assert abs(share - cfg.expected_noisy_share()) < 0.02


def test_generated_dataset_mixes_policies_and_bursts(tiny_dataset):
    ds, cfg = tiny_dataset
    eps = ds.episodes()
    pcfg = cfg.perturb
    n_pol = int(eps[:, 2].max()) + 1
    expert_share = np.mean(eps[:, 2] == n_pol - 1)
    assert 0.3 < expert_share < 0.7  # p = 0.5, ~200 episodes
    assert len(np.unique(eps[:, 2])) >= 2
    noisy = ds.read("noisy").astype(bool)
    expert = ds.read("expert").astype(bool)
    assert abs(noisy.mean() - pcfg.expected_noisy_share()) < 0.05
    runs = []
    for start, length, _, _ in eps:
        runs += _runs(noisy[start : start + length], True)
    assert runs and min(runs) >= pcfg.noisy_steps[0] and max(runs) <= pcfg.noisy_steps[1]
    # Expert-flagged steps come only from expert episodes, and are never noisy.
    owner = np.repeat(eps[:, 2], eps[:, 1])
    assert not (expert & noisy).any()
    assert np.all(owner[expert] == n_pol - 1)
    # The expert earns more reward than the sub-optimal snapshots on average.
    reward = ds.read("reward")
    assert reward[owner == n_pol - 1].mean() > reward[owner < n_pol - 1].mean()


def test_generation_resumes_to_the_target(tiny_expert, tmp_path):
    from simdist.data.dataset import Dataset
    from simdist.pipelines.generate_data import generate_data, make_config

    # The tiny preset's env count, so the compiled rollout is shared with the dataset fixture.
    cfg = make_config("cartpole", "tiny", seed=5, overrides={"transitions": 30_000, "flush_transitions": 12_000})
    out = tmp_path / "data"
    first = generate_data(cfg, tiny_expert[1], out, show_progress=False, stop_after_appends=1)
    assert 12_000 <= first.transitions < 30_000
    ds = Dataset.open(out)
    assert ds.n_transitions == first.transitions
    head = ds.read("obs", 0, first.transitions)
    second = generate_data(cfg, tiny_expert[1], out, show_progress=False)
    ds = Dataset.open(out)
    assert ds.n_transitions == second.transitions >= 30_000
    eps = ds.episodes()
    assert eps[:, 1].sum() == ds.n_transitions
    np.testing.assert_array_equal(eps[1:, 0], np.cumsum(eps[:-1, 1]))
    # The first invocation's episodes are kept as they were.
    np.testing.assert_array_equal(ds.read("obs", 0, first.transitions), head)
    # A third call has nothing left to do.
    third = generate_data(cfg, tiny_expert[1], out, show_progress=False)
    assert third.added_transitions == 0


def test_env_overrides_change_the_rollouts_and_guard_resumption(tiny_expert, tmp_path):
    from simdist.data.dataset import Dataset
    from simdist.errors import ConfigError, DatasetError
    from simdist.pipelines.generate_data import generate_data, make_config

    base = make_config("cartpole", "tiny", seed=3, overrides={"transitions": 1_500, "flush_transitions": 1_500})
    env = (("episode_length", 60), ("pole_mass_range", (1.2, 1.3)))
    cfg = dataclasses.replace(base, env_overrides=env)
    out = tmp_path / "data"
    generate_data(cfg, tiny_expert[1], out, show_progress=False)
    ds = Dataset.open(out)
    assert ds.n_transitions >= 1_500
    # The rollouts ran in the overridden env (the expert trained with 300-step episodes)...
    assert ds.episodes()[:, 1].max() <= 60
    # ...and the dataset records the env it was generated with.
    assert ds.extra["env"]["episode_length"] == 60 and ds.extra["env"]["pole_mass_range"] == [1.2, 1.3]
    n = ds.n_transitions
    ds.close()

    # Continuing with other env settings is refused and changes nothing.
    more = dataclasses.replace(cfg, transitions=3_000, env_overrides=(("episode_length", 60),))
    with pytest.raises(DatasetError, match="other env settings.*pole_mass_range"):
        generate_data(more, tiny_expert[1], out, show_progress=False)
    assert Dataset.open(out).n_transitions == n

    # Bad overrides are one-line errors before anything is written.
    bad = [(("nope", 1),), (("pole_mass_range", "heavy"),), (("pole_mass_range", (1.0, 2.0, 3.0)),),
           (("episode_length", 1.5),)]
    for overrides in bad:
        new = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        with pytest.raises(ConfigError) as err:
            generate_data(dataclasses.replace(base, env_overrides=overrides), tiny_expert[1], new, show_progress=False)
        assert "\n" not in str(err.value) and "--env-set" in str(err.value)
        assert not new.exists()
