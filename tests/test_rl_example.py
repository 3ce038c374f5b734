"""Tests of ``examples/rl_try_and_see.py`` (ARSM try-and-see policy gradient): a short ARSM run on
CartPole-v1, the per-step ARSM gradient, and the environment-state restore the rollouts use."""

import importlib.util
import math
from pathlib import Path

import pytest

gym = pytest.importorskip("gymnasium")
pytest.importorskip("matplotlib")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pyro_exact import assert_unbiased  # noqa: E402

RL_PATH = Path(__file__).resolve().parents[1] / "examples" / "rl_try_and_see.py"
CAP = 16


@pytest.fixture(scope="module")
def rl():
    spec = importlib.util.spec_from_file_location("rl_try_and_see", RL_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def arsm_run(rl):
    # A 60-step time limit keeps it fast and makes the horizon check bite.
    return rl.run("CartPole-v1", "arsm", 6, seed=3, max_rollouts=CAP, max_episode_steps=60,
                  record_steps=True)


def test_arsm_run_is_finite(arsm_run):
    for p in arsm_run["policy"].parameters():
        assert torch.isfinite(p).all()
    norms = [r["grad_norm"] for r in arsm_run["episodes"] if r["grad_norm"] is not None]
    assert norms, "no update happened"
    assert all(math.isfinite(n) and n > 0 for n in norms)


def test_rollouts_match_distinct_pseudo_actions(arsm_run):
    total = 0
    for steps, episode in zip(arsm_run["steps"], arsm_run["episodes"], strict=True):
        assert len({s["t"] for s in steps}) == len(steps)  # each step visited at most once
        for s in steps:
            assert s["action"] not in s["pseudo"]
            assert s["rollouts"] == len(s["pseudo"]) == len(s["rollout_steps"])
            # Each rollout ends at termination or at the episode's time limit (60 from the start).
            assert all(1 <= n <= 60 - s["t"] for n in s["rollout_steps"])
        rollouts = sum(s["rollouts"] for s in steps)
        assert rollouts == episode["rollouts"] <= CAP
        # Environment steps = real steps + every rollout step.
        assert episode["env_steps"] == episode["length"] + sum(
            n for s in steps for n in s["rollout_steps"])
        if len(steps) < episode["length"]:
            # Visiting stopped early only because the next step would pass the cap; CartPole
            # has 2 actions, so at most 1 rollout per step: the cap was met exactly.
            assert rollouts == CAP
        total += rollouts
    assert total > 0
    cumulative = [r["env_steps_cumulative"] for r in arsm_run["episodes"]]
    assert cumulative == list(np.cumsum([r["env_steps"] for r in arsm_run["episodes"]]))


def test_step_grad_zero_when_no_pseudo_action_differs(rl):
    # Logits strongly favouring action 1: every swap still picks action 1, so no pseudo action
    # differs and the estimate is exactly zero, whatever the values of the other actions.
    logits = torch.tensor([0.0, 60.0, 0.0])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        log_pi = rl.sample_log_pi((), 3, generator=generator)
        action, pseudo = rl.distinct_pseudo_actions(log_pi, logits)
        assert (action, pseudo) == (1, [])
        g = rl.arsm_step_grad(log_pi, logits, {0: 7.3, 1: 0.1, 2: -4.0})
        assert torch.equal(g, torch.zeros(3, dtype=torch.float64))
    # Equal values for all actions: zero as well, even where the pseudo actions differ.
    log_pi = rl.sample_log_pi((), 3, generator=generator)
    g = rl.arsm_step_grad(log_pi, torch.zeros(3), {0: 0.1, 1: 0.1, 2: 0.1})
    assert torch.equal(g, torch.zeros(3, dtype=torch.float64))


def test_step_grad_nonzero_and_unbiased(rl):
    # Two actions, uniform policy: the swap always flips the action, so the estimate is nonzero
    # and raises the logit of the better action.
    generator = torch.Generator().manual_seed(1)
    log_pi = rl.sample_log_pi((), 2, generator=generator)
    action, pseudo = rl.distinct_pseudo_actions(log_pi, torch.zeros(2))
    assert pseudo == [1 - action]
    g = rl.arsm_step_grad(log_pi, torch.zeros(2), {0: 1.0, 1: 0.0})
    assert g[0] > 0 > g[1]
    assert float(g.sum()) == pytest.approx(0.0, abs=1e-12)
    # Averaged over draws it matches the exact gradient p * (Q - p.Q) of E_a[Q(a)].
    logits = torch.tensor([0.3, -0.5, 0.1])
    q = {0: 2.0, 1: -1.0, 2: 0.5}
    q_vec = torch.tensor([q[a] for a in range(3)], dtype=torch.float64)
    p = logits.double().softmax(-1)
    exact = p * (q_vec - (p * q_vec).sum())
    draws = torch.stack([rl.arsm_step_grad(rl.sample_log_pi((), 3, generator=generator), logits,
                                           q) for _ in range(4000)])
    assert_unbiased(draws, exact, label="try-and-see step gradient")


@pytest.mark.parametrize("env_name", ["CartPole-v1", "Acrobot-v1"])
def test_restored_state_reproduces_the_real_step(rl, env_name):
    torch.manual_seed(0)
    env = rl.make_env(env_name, max_episode_steps=40)
    policy = rl.make_policy(env.observation_space.shape[0], env.action_space.n)
    episode = rl.play_episode(env, policy, torch.Generator().manual_seed(0), reset_seed=11)
    T = len(episode["actions"])
    assert T > 3
    pool = rl.RolloutPool(env_name, seed=123)  # reset with another seed: a different state
    other = pool.get(1)[0]
    for t in sorted({0, 1, T // 2, T - 1}):
        sim = rl.restore_state(other, episode["states"][t])
        obs, _, _, _, _ = sim.step(episode["actions"][t])
        np.testing.assert_array_equal(obs, episode["next_obs"][t])
    # A rollout from step t with the true action has the real episode's horizon: at most T - t
    # steps when the real episode was truncated at the time limit.
    returns, steps = rl.rollout_returns(pool, policy, [(episode["states"][0], 0,
                                                         episode["actions"][0])], 40, 0.99,
                                        torch.Generator().manual_seed(0))
    assert 1 <= steps[0] <= 40 and math.isfinite(returns[0])
