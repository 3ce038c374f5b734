"""ARSM "try-and-see self-critic" policy gradient for discrete actions (CartPole, Acrobot).

The third experiment of Yin, Yue & Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for
Gradient Backpropagation Through Categorical Variables" (ICML 2019, arXiv:1905.01413, section
4.3), rebuilt on the public functions of :mod:`pyro_arsm.estimators`.

The policy is an MLP ``nS -> 10 -> 10 -> nA`` (ReLU) giving the logits ``phi(s)``; Adam, lr 0.03,
discount 0.99 (the paper's defaults). One ARSM episode:

1. Act: ``a_t = argmin(log pi_t - phi(s_t))`` with ``pi_t ~ Dirichlet(1)``
   (``sample_log_pi``, ``categorical_from_log_pi``); ``log pi_t`` and the simulator state before
   each step are stored.
2. Visit the time steps in a random order. At step ``t`` the pseudo actions of all
   ``C(C-1)/2 + 1`` swaps (``pseudo_actions``) are computed; each distinct one that differs from
   ``a_t`` is "tried": a rollout from the SAME simulator state ``s_t`` (a second environment whose
   unwrapped state is set to the stored copy) takes the pseudo action and then follows the current
   policy with fresh Dirichlet draws, until termination or the time limit counted from the start
   of the real episode. Its discounted return from ``t`` is ``Q(s_t, pseudo action)``; the true
   action's value is the real episode's discounted return-to-go from ``t``. No critic, no
   baseline. Visiting stops at the first step whose rollouts would take the episode past
   ``--max-rollouts`` (16); the remaining steps contribute nothing, as in the official code.
   Steps whose pseudo actions all equal ``a_t`` contribute zero and cost no rollout.
3. ``g_t = arsm_grad(Q at the swap rows, log pi_t)`` estimates ``d E[Q(s_t, a)] / d phi_t``; the
   loss ``-sum_t phi(s_t) . g_t`` (``g`` constant) takes one Adam step (ascent on the return).

Competitors (same network, initialization, optimizer and lr; no tuning was done for any method):

    reinforce   REINFORCE, one episode per update: loss ``-sum_t (G_t - b) log p(a_t | s_t)``
                with ``G_t`` the discounted return-to-go and ``b`` a scalar exponential moving
                average (decay ``--baseline-decay`` 0.9) of the past episodes' mean return-to-go
                (updated after the step, so ``b`` does not depend on the current episode).
    rloo        REINFORCE with leave-one-out baselines: ``--rloo-k`` (4) episodes per update,
                ``b_t^i = mean_{j != i} G_t^j`` (``G_t^j = 0`` once episode ``j`` has ended), loss
                ``-(1/K) sum_i sum_t (G_t^i - b_t^i) log p(a_t^i | s_t^i)``.

Both sample actions with the same Dirichlet-argmin sampler (it is exactly ``Categorical``).

Mapping to the official code (``ARM-gradient/ARSM``, ``rl/RL_ARSM.py`` and ``rl/arm_util.py``):

* Same network, initialization (weights ``N(0, 0.3^2)``, biases 0.1), Adam lr 0.03, gamma 0.99,
  ``MaxPseudoActionSequences = 16``, random visiting order with the same stopping rule, unique
  pseudo actions ``!= a_t`` per step, fresh Dirichlet draws in the rollouts (``Share_Pi=False``),
  loss ``sum(logits * -f)``, and no update for an episode with no rollout at all.
* The official code puts the discounted return from time 0 (real prefix plus the rollout) in
  ``F`` and divides ``f_t`` by ``gamma^t``. The common prefix cancels in ``F - colmean(F)``, so
  that equals using the discounted return from ``t`` undivided, which is what is done here.
* The official rollout resets a copy of the environment with the episode's seed and replays the
  true actions up to ``t``; here the unwrapped simulator state is copied instead (same state,
  no re-simulation). The rollout's horizon is the real episode's time limit minus ``t``.
* Not reproduced: the official re-initialization of the actor when an early update is exactly
  zero despite rollouts (practically never triggers), the separate evaluation episode behind its
  score (we report the training episodes' own returns: they are on-policy samples), the process
  pool, and gym's CartPole-v0 (gymnasium has CartPole-v1: limit 500 steps instead of 200; the
  target 195 of v0 is kept for the summary).

Environment steps count every real step and every rollout step. The summary gives, per method
and seed, the first episode (and the environment steps so far) at which the mean return of the
last ``--window`` (10) episodes reaches ``--target`` (195 on CartPole-v1, -100 on Acrobot-v1),
or the final such average if never; the medians over seeds count a seed that never got there as
infinitely late.

Run from the repository root:

    python examples/rl_try_and_see.py                    # CartPole-v1, 3 methods x 5 seeds
    python examples/rl_try_and_see.py --env Acrobot-v1 --episodes 100 --seeds 3
    python examples/rl_try_and_see.py --smoke            # a few episodes, 1 seed

It prints a table and writes ``rl_<env>.png`` (smoothed return against episodes and against
environment steps), ``rl_<env>_episodes.csv`` (one row per episode) and
``rl_<env>_summary.json`` to ``--out`` (``rl_<env>_smoke*`` with ``--smoke``).
"""

import argparse
import csv
import json
import math
import statistics
import time
from pathlib import Path

import gymnasium as gym
import matplotlib

matplotlib.use("Agg")  # headless: only files are written
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pyro_arsm.estimators import (  # noqa: E402
    arsm_grad,
    categorical_from_log_pi,
    pseudo_actions,
    sample_log_pi,
)

try:
    from tqdm.auto import tqdm
except ImportError:  # the progress bar is optional
    tqdm = None

METHODS = {"arsm": "ARSM (try-and-see)", "reinforce": "REINFORCE + EMA baseline",
           "rloo": "RLOO (K episodes)"}
TARGETS = {"CartPole-v1": 195.0, "Acrobot-v1": -100.0}
DEFAULTS = dict(gamma=0.99, lr=0.03, hidden=10, max_rollouts=16, rloo_k=4, baseline_decay=0.9)


# ---------------------------------------------------------------------------------------------
# Policy and environments
# ---------------------------------------------------------------------------------------------


def make_policy(num_states, num_actions, hidden=10):
    """The paper's actor ``nS -> hidden -> hidden -> nA`` (ReLU), initialized as the official
    code: weights ``N(0, 0.3^2)``, biases 0.1. Seed with ``torch.manual_seed`` first."""
    policy = nn.Sequential(nn.Linear(num_states, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                           nn.ReLU(), nn.Linear(hidden, num_actions))
    for layer in policy:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, 0.3)
            nn.init.constant_(layer.bias, 0.1)
    return policy


def make_env(env_name, max_episode_steps=None):
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    return gym.make(env_name, **kwargs)


def snapshot_state(env):
    """A copy of the simulator state of ``env`` (CartPole and Acrobot: ``unwrapped.state``)."""
    return np.array(env.unwrapped.state, copy=True)


def restore_state(env, state):
    """Put the simulator of ``env`` in ``state`` (from :func:`snapshot_state`). ``env`` must
    have been reset once. Returns the unwrapped env, which rollouts step directly (the time limit
    is applied by the caller, counted from the real episode's start)."""
    sim = env.unwrapped
    sim.state = np.array(state, copy=True)
    if hasattr(sim, "steps_beyond_terminated"):  # CartPole: forget an earlier termination
        sim.steps_beyond_terminated = None
    return sim


class RolloutPool:
    """Environments for the pseudo-action rollouts, reset once and then only restored."""

    def __init__(self, env_name, seed):
        self.env_name, self.seed, self.envs = env_name, seed, []

    def get(self, n):
        while len(self.envs) < n:
            env = gym.make(self.env_name).unwrapped
            env.reset(seed=self.seed + len(self.envs))  # the state is overwritten before use
            self.envs.append(env)
        return self.envs[:n]


def discounted_returns_to_go(rewards, gamma):
    """``G_t = sum_{k >= t} gamma^(k-t) r_k`` as float64 numpy array."""
    returns = np.zeros(len(rewards))
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def play_episode(env, policy, generator, *, reset_seed=None):
    """One on-policy episode with the Dirichlet-argmin sampler. Returns a dict with the
    observations ``[T, nS]``, logits ``[T, nA]``, ``log pi`` ``[T, nA]``, actions ``[T]``, rewards,
    the simulator states before each step, and the next observations."""
    obs, _ = env.reset(seed=reset_seed)
    num_actions = env.action_space.n
    observations, logits_seq, log_pis, actions, rewards, states, next_obs = ([] for _ in range(7))
    while True:
        states.append(snapshot_state(env))
        x = torch.as_tensor(obs, dtype=torch.float32)
        with torch.no_grad():
            logits = policy(x)
        log_pi = sample_log_pi((), num_actions, generator=generator)
        action = int(categorical_from_log_pi(log_pi, logits))
        observations.append(x)
        logits_seq.append(logits)
        log_pis.append(log_pi)
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(float(reward))
        next_obs.append(obs)
        if terminated or truncated:
            break
    return {"obs": torch.stack(observations), "logits": torch.stack(logits_seq),
            "log_pi": torch.stack(log_pis), "actions": actions, "rewards": rewards,
            "states": states, "next_obs": next_obs, "terminated": bool(terminated)}


def rollout_returns(pool, policy, starts, horizon, gamma, generator):
    """Try-and-see rollouts, run in lockstep (one batched policy call per step).

    :param starts: list of ``(state, t, action)``: restore ``state`` (the state before step
        ``t`` of the real episode), take ``action``, then follow ``policy`` until termination or
        until ``horizon`` steps have passed since the real episode's start.
    :returns: ``(returns, steps)``: per start the discounted return from ``t`` and the number
        of environment steps taken.
    """
    n = len(starts)
    returns, discount = np.zeros(n), np.ones(n)
    steps, elapsed = [0] * n, [0] * n
    obs, active = [None] * n, []
    envs = pool.get(n)
    for i, (state, t, action) in enumerate(starts):
        sim = restore_state(envs[i], state)
        o, reward, terminated, _, _ = sim.step(int(action))
        returns[i] += reward
        discount[i] = gamma
        steps[i], elapsed[i] = 1, t + 1
        if not terminated and elapsed[i] < horizon:
            obs[i] = o
            active.append(i)
    num_actions = envs[0].action_space.n if n else 0
    while active:
        x = torch.as_tensor(np.stack([obs[i] for i in active]), dtype=torch.float32)
        with torch.no_grad():
            logits = policy(x)
        log_pi = sample_log_pi((len(active),), num_actions, generator=generator)
        chosen = categorical_from_log_pi(log_pi, logits).tolist()
        still = []
        for i, action in zip(active, chosen, strict=True):
            o, reward, terminated, _, _ = envs[i].step(action)
            returns[i] += discount[i] * reward
            discount[i] *= gamma
            steps[i] += 1
            elapsed[i] += 1
            if not terminated and elapsed[i] < horizon:
                obs[i] = o
                still.append(i)
        active = still
    return returns, steps


# ---------------------------------------------------------------------------------------------
# ARSM per-step gradient
# ---------------------------------------------------------------------------------------------


def distinct_pseudo_actions(log_pi, logits):
    """``(a_t, pseudo)``: the true action and the sorted distinct pseudo actions ``!= a_t`` over
    all swaps (:func:`pyro_arsm.estimators.pseudo_actions`, row 0 = true action)."""
    actions = pseudo_actions(log_pi, logits).tolist()
    return actions[0], sorted(set(actions) - {actions[0]})


def arsm_step_grad(log_pi, logits, q_values):
    """ARSM estimate of ``d E_a[Q(s_t, a)] / d phi_t`` for one time step (ascent direction).

    :param log_pi: ``[C]`` the step's Dirichlet draw (log).
    :param logits: ``[C]`` the policy's logits at ``s_t`` when acting.
    :param dict q_values: ``{action: Q}`` for the true action and every distinct pseudo action.
    :returns: float64 ``[C]``. Rows are taken relative to ``Q(s_t, a_t)``, which leaves the
        estimate unchanged (``arsm_grad`` centres each column) and makes it exactly zero when
        every pseudo action equals ``a_t``.
    """
    actions = pseudo_actions(log_pi, logits).tolist()  # [P], row 0 = a_t
    taken = q_values[actions[0]]
    rows = torch.tensor([q_values[a] - taken for a in actions], dtype=torch.float64)
    return arsm_grad(rows, log_pi.to(torch.float64))


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _apply(policy, optimizer, loss):
    optimizer.zero_grad()
    loss.backward()
    grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in policy.parameters()))
    optimizer.step()
    return grad_norm


def arsm_update(episode, policy, optimizer, pool, horizon, gamma, max_rollouts, generator):
    """Try-and-see rollouts for one episode and one Adam step. Returns ``(per-step records,
    rollout steps, grad norm or None)``; a record per visited step: ``t``, ``action``,
    ``pseudo`` (distinct pseudo actions ``!= a_t``), ``rollouts`` (rollouts actually run from
    ``t``), ``rollout_steps`` (their lengths)."""
    T = len(episode["actions"])
    plan, used = [], 0
    for t in torch.randperm(T, generator=generator).tolist():
        action, pseudo = distinct_pseudo_actions(episode["log_pi"][t], episode["logits"][t])
        if used + len(pseudo) > max_rollouts:
            break  # as the official code: stop at the first step that does not fit
        used += len(pseudo)
        plan.append((t, action, pseudo))
    starts = [(episode["states"][t], t, a) for t, _, pseudo in plan for a in pseudo]
    returns, steps = rollout_returns(pool, policy, starts, horizon, gamma, generator)
    G = discounted_returns_to_go(episode["rewards"], gamma)
    grads = torch.zeros(T, episode["logits"].shape[-1], dtype=torch.float64)
    records, k = [], 0
    for t, action, pseudo in plan:
        q = {action: G[t]}
        lengths = []
        for a in pseudo:
            assert starts[k][1] == t and starts[k][2] == a
            q[a] = returns[k]
            lengths.append(steps[k])
            k += 1
        if pseudo:
            grads[t] = arsm_step_grad(episode["log_pi"][t], episode["logits"][t], q)
        records.append({"t": t, "action": action, "pseudo": pseudo, "rollouts": len(lengths),
                        "rollout_steps": lengths})
    grad_norm = None
    if starts:  # official: no update for an episode without any pseudo action
        logits = policy(episode["obs"])
        grad_norm = _apply(policy, optimizer, -(logits * grads.to(logits.dtype)).sum())
    return records, sum(steps), grad_norm


def reinforce_loss(policy, episode, advantages):
    logits = policy(episode["obs"])
    log_p = logits.log_softmax(-1)[torch.arange(len(episode["actions"])),
                                   torch.tensor(episode["actions"])]
    return -(log_p * torch.as_tensor(advantages, dtype=log_p.dtype)).sum()


def rloo_advantages(returns_to_go):
    """``G_t^i - mean_{j != i} G_t^j`` with ``G_t^j = 0`` past the end of episode ``j``."""
    K, T = len(returns_to_go), max(len(g) for g in returns_to_go)
    padded = np.zeros((K, T))
    for i, g in enumerate(returns_to_go):
        padded[i, :len(g)] = g
    loo = (padded.sum(0, keepdims=True) - padded) / (K - 1)
    return [padded[i, :len(g)] - loo[i, :len(g)] for i, g in enumerate(returns_to_go)]


def run(env_name, method, episodes, seed, *, gamma=0.99, lr=0.03, hidden=10, max_rollouts=16,
        rloo_k=4, baseline_decay=0.9, max_episode_steps=None, record_steps=False,
        progress=None):
    """Train one method from one seed. Returns a dict: ``episodes`` (one record per episode:
    ``episode``, ``return``, ``length``, ``env_steps`` (real + rollout), ``env_steps_cumulative``,
    ``rollouts``, ``grad_norm`` (None when no update)), ``policy`` (the trained module),
    ``seconds``, and with ``record_steps`` (ARSM) ``steps``: per episode the per-step records of
    :func:`arsm_update`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    env = make_env(env_name, max_episode_steps)
    horizon = env.spec.max_episode_steps
    pool = RolloutPool(env_name, seed + 10_000)
    policy = make_policy(env.observation_space.shape[0], env.action_space.n, hidden)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    records, step_records, batch = [], [], []
    baseline, cumulative = None, 0
    start = time.perf_counter()
    for e in range(episodes):
        episode = play_episode(env, policy, generator, reset_seed=seed if e == 0 else None)
        T = len(episode["actions"])
        rollout_steps, rollouts, grad_norm = 0, 0, None
        if method == "arsm":
            steps, rollout_steps, grad_norm = arsm_update(episode, policy, optimizer, pool,
                                                          horizon, gamma, max_rollouts, generator)
            rollouts = sum(r["rollouts"] for r in steps)
            if record_steps:
                step_records.append(steps)
        elif method == "reinforce":
            G = discounted_returns_to_go(episode["rewards"], gamma)
            advantages = G - (0.0 if baseline is None else baseline)
            grad_norm = _apply(policy, optimizer, reinforce_loss(policy, episode, advantages))
            baseline = G.mean() if baseline is None else (
                baseline_decay * baseline + (1 - baseline_decay) * G.mean())
        else:  # rloo
            batch.append(episode)
            if len(batch) == rloo_k:
                advantages = rloo_advantages(
                    [discounted_returns_to_go(b["rewards"], gamma) for b in batch])
                loss = sum(reinforce_loss(policy, b, adv)
                           for b, adv in zip(batch, advantages, strict=True))
                grad_norm = _apply(policy, optimizer, loss / rloo_k)
                batch = []
        cumulative += T + rollout_steps
        records.append({"episode": e + 1, "return": float(sum(episode["rewards"])), "length": T,
                        "env_steps": T + rollout_steps, "env_steps_cumulative": cumulative,
                        "rollouts": rollouts, "grad_norm": grad_norm})
        if progress is not None:
            progress.update(1)
            recent = [r["return"] for r in records[-10:]]
            progress.set_postfix_str(f"{method} seed {seed} avg10 {sum(recent) / len(recent):.0f}")
    result = {"env": env_name, "method": method, "seed": seed, "episodes": records,
              "policy": policy, "seconds": time.perf_counter() - start}
    if record_steps:
        result["steps"] = step_records
    return result


# ---------------------------------------------------------------------------------------------
# Summary, plot, table
# ---------------------------------------------------------------------------------------------


def moving_average(values, window):
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def time_to_target(records, target, window):
    """First episode whose trailing ``window``-episode mean return reaches ``target`` (a full
    window is required) and the cumulative environment steps then; ``None`` if never."""
    ma = moving_average([r["return"] for r in records], window)
    for i in range(window - 1, len(records)):
        if ma[i] >= target:
            return records[i]["episode"], records[i]["env_steps_cumulative"]
    return None, None


def _median(values):
    """Median where ``None`` (never reached) counts as infinitely late."""
    finite = [v if v is not None else math.inf for v in values]
    m = statistics.median(finite)
    return None if math.isinf(m) else m


def summarize(runs, target, window):
    summary = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        per_seed = []
        for r in (r for r in runs if r["method"] == method):
            episode, steps = time_to_target(r["episodes"], target, window)
            returns = [x["return"] for x in r["episodes"]]
            per_seed.append({
                "seed": r["seed"], "episodes_to_target": episode, "env_steps_to_target": steps,
                "final_avg_return": sum(returns[-window:]) / len(returns[-window:]),
                "total_env_steps": r["episodes"][-1]["env_steps_cumulative"],
                "rollouts": sum(x["rollouts"] for x in r["episodes"]),
                "seconds": r["seconds"]})
        summary[method] = {
            "label": METHODS[method], "per_seed": per_seed,
            "reached": sum(s["episodes_to_target"] is not None for s in per_seed),
            "median_episodes_to_target": _median([s["episodes_to_target"] for s in per_seed]),
            "median_env_steps_to_target": _median([s["env_steps_to_target"] for s in per_seed]),
            "median_final_avg_return": statistics.median(s["final_avg_return"] for s in per_seed),
            "median_total_env_steps": statistics.median(s["total_env_steps"] for s in per_seed)}
    return summary


def plot(runs, target, window, title, path):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, method in enumerate(dict.fromkeys(r["method"] for r in runs)):
        mine = [r for r in runs if r["method"] == method]
        color = colors[k % len(colors)]
        curves = np.array([moving_average([x["return"] for x in r["episodes"]], window)
                           for r in mine])  # [seeds, episodes]
        mean = curves.mean(0)
        se = curves.std(0, ddof=1) / math.sqrt(len(mine)) if len(mine) > 1 else 0 * mean
        episodes = np.arange(1, curves.shape[1] + 1)
        axes[0].plot(episodes, mean, color=color, label=f"{METHODS[method]} ({len(mine)} seeds)")
        axes[0].fill_between(episodes, mean - se, mean + se, color=color, alpha=0.2)
        # Against environment steps: each seed's curve interpolated on a common grid up to the
        # smallest total over the seeds (so every point averages all seeds).
        ends = [r["episodes"][-1]["env_steps_cumulative"] for r in mine]
        begin = max(r["episodes"][0]["env_steps_cumulative"] for r in mine)
        grid = np.geomspace(begin, min(ends), 200)
        on_grid = np.array([np.interp(grid, [x["env_steps_cumulative"] for x in r["episodes"]], c)
                            for r, c in zip(mine, curves, strict=True)])
        mean = on_grid.mean(0)
        se = on_grid.std(0, ddof=1) / math.sqrt(len(mine)) if len(mine) > 1 else 0 * mean
        axes[1].plot(grid, mean, color=color)
        axes[1].fill_between(grid, mean - se, mean + se, color=color, alpha=0.2)
    for ax in axes:
        ax.axhline(target, color="black", linestyle="--", linewidth=1)
        ax.set_ylabel(f"return (mean of last {window} episodes)")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("episode")
    axes[1].set_xlabel("environment steps (real + rollouts)\n"
                       "each curve ends at its method's smallest total over the seeds")
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}; mean over seeds, band = +/- 1 s.e.; dashed: target {target:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(value):
    return "-" if value is None else f"{value:g}"


def print_table(summary, target, window):
    header = (f"{'method':<26}{'reached':>8}{'median ep':>11}{'median steps':>14}"
              f"{'med final avg':>15}  per-seed episodes / env steps to target")
    print(header)
    print("-" * len(header))
    for record in summary.values():
        seeds = ", ".join(f"{_fmt(s['episodes_to_target'])}/{_fmt(s['env_steps_to_target'])}"
                          for s in record["per_seed"])
        print(f"{record['label']:<26}{record['reached']:>5}/{len(record['per_seed']):<2}"
              f"{_fmt(record['median_episodes_to_target']):>11}"
              f"{_fmt(record['median_env_steps_to_target']):>14}"
              f"{record['median_final_avg_return']:>15.1f}  {seeds}")
    print(f"target: mean return of the last {window} episodes >= {target:g}; '-' = not reached "
          f"(medians count it as infinitely late)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--env", choices=sorted(TARGETS), default="CartPole-v1")
    parser.add_argument("--methods", default="arsm,reinforce,rloo",
                        help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--episodes", type=int, default=200, help="episodes per run")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 for every method")
    parser.add_argument("--gamma", type=float, default=DEFAULTS["gamma"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam, all methods")
    parser.add_argument("--hidden", type=int, default=DEFAULTS["hidden"])
    parser.add_argument("--max-rollouts", type=int, default=DEFAULTS["max_rollouts"],
                        help="ARSM: pseudo-action rollouts per episode at most")
    parser.add_argument("--rloo-k", type=int, default=DEFAULTS["rloo_k"],
                        help="RLOO: episodes per update")
    parser.add_argument("--baseline-decay", type=float, default=DEFAULTS["baseline_decay"],
                        help="REINFORCE: decay of the moving-average baseline")
    parser.add_argument("--max-episode-steps", type=int, default=None,
                        help="override the environment's time limit (default: its own, 500)")
    parser.add_argument("--target", type=float, default=None,
                        help="return to reach (default: 195 on CartPole-v1, -100 on Acrobot-v1)")
    parser.add_argument("--window", type=int, default=10,
                        help="episodes in the moving average of the return")
    parser.add_argument("--smoke", action="store_true", help="5 episodes, 1 seed")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error(f"--methods takes a subset of {','.join(METHODS)}, got {unknown}")
    if args.smoke:
        args.episodes, args.seeds = 5, 1
    if args.episodes < 1 or args.seeds < 1 or args.window < 1:
        parser.error("--episodes, --seeds and --window must be positive")
    if args.rloo_k < 2:
        parser.error(f"--rloo-k must be at least 2, got {args.rloo_k}")
    if args.target is None:
        args.target = TARGETS[args.env]
    return args


def main(argv=None):
    """Train every method from every seed, write the PNG, CSV and JSON, print the table and
    return the summary dict."""
    args = parse_args(argv)
    torch.set_num_threads(1)  # tiny networks: threads only add overhead
    total = len(args.methods) * args.seeds * args.episodes
    progress = tqdm(total=total, desc="rl", disable=None) if tqdm is not None else None
    start = time.perf_counter()
    runs = []
    for method in args.methods:
        for seed in range(args.seeds):
            runs.append(run(args.env, method, args.episodes, seed, gamma=args.gamma, lr=args.lr,
                            hidden=args.hidden, max_rollouts=args.max_rollouts,
                            rloo_k=args.rloo_k, baseline_decay=args.baseline_decay,
                            max_episode_steps=args.max_episode_steps, progress=progress))
    if progress is not None:
        progress.close()
    seconds = time.perf_counter() - start

    summary = summarize(runs, args.target, args.window)
    stem = f"rl_{args.env}" + ("_smoke" if args.smoke else "")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"{stem}_episodes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seed", "episode", "return", "length", "env_steps",
                         "env_steps_cumulative", "rollouts"])
        for r in runs:
            for x in r["episodes"]:
                writer.writerow([r["method"], r["seed"], x["episode"], x["return"], x["length"],
                                 x["env_steps"], x["env_steps_cumulative"], x["rollouts"]])
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    with open(args.out / f"{stem}_summary.json", "w") as handle:
        json.dump({"config": config, "seconds": seconds, "methods": summary}, handle, indent=1)
    plot(runs, args.target, args.window,
         f"{args.env}, {args.episodes} episodes, lr {args.lr}", args.out / f"{stem}.png")
    print_table(summary, args.target, args.window)
    print(f"{seconds:.0f} s; wrote {stem}.png, {stem}_episodes.csv and {stem}_summary.json "
          f"to {args.out}")
    return summary


if __name__ == "__main__":
    main()
