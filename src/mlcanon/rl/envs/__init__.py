"""Our tabular environments, registered with gymnasium on import, and MDP models of toy-text envs.

Ids: ``mlcanon/GridWorld-v0``, ``mlcanon/SuttonBartoGrid-v0``, ``mlcanon/RobotGrid-v0``,
``mlcanon/Bandit-v0``, ``mlcanon/RandomRewards-v0``. Grid envs carry a TimeLimit of 100 steps
(truncation, not termination). Every env exposes ``env.unwrapped.mdp`` and ``env.unwrapped.shape``.
``mdp_of(env_or_id)`` also converts gymnasium toy-text envs with a ``P`` table (FrozenLake, CliffWalking,
Taxi) into an :class:`~mlcanon.rl.mdp.MDP`.
"""

from __future__ import annotations

import difflib

import gymnasium as gym
import numpy as np

from mlcanon.errors import UserError
from mlcanon.rl.envs.bandits import BanditEnv, RandomRewardsEnv
from mlcanon.rl.envs.gridworld import GridWorldEnv, RobotGridEnv, SuttonBartoGridEnv
from mlcanon.rl.mdp import MDP

__all__ = ["ENV_IDS", "BanditEnv", "GridWorldEnv", "RandomRewardsEnv", "RobotGridEnv",
           "SuttonBartoGridEnv", "make", "mdp_of", "toy_text_mdp"]

_SPECS = {
    "mlcanon/GridWorld-v0": ("mlcanon.rl.envs.gridworld:GridWorldEnv", 100),
    "mlcanon/SuttonBartoGrid-v0": ("mlcanon.rl.envs.gridworld:SuttonBartoGridEnv", 100),
    "mlcanon/RobotGrid-v0": ("mlcanon.rl.envs.gridworld:RobotGridEnv", 100),
    "mlcanon/Bandit-v0": ("mlcanon.rl.envs.bandits:BanditEnv", None),
    "mlcanon/RandomRewards-v0": ("mlcanon.rl.envs.bandits:RandomRewardsEnv", None),
}
ENV_IDS = tuple(_SPECS)

for _id, (_entry, _limit) in _SPECS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry, max_episode_steps=_limit)


def make(env_id: str, **kwargs) -> gym.Env:
    """gymnasium.make with a UserError for unknown ids (listing ours and close matches)."""
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown environment {env_id!r}.{hint} Ours: {', '.join(ENV_IDS)}; any gymnasium "
                        f"id works too (see gymnasium.registry).")
    return gym.make(env_id, **kwargs)


def mdp_of(env_or_id, gamma: float | None = None, **kwargs) -> MDP:
    """The tabular model of an env (or env id): ``env.unwrapped.mdp`` for ours, converted from the ``P``
    table for gymnasium toy-text envs (FrozenLake, CliffWalking, Taxi). ``gamma`` overrides the discount
    (default: the env's own, 1.0 for toy-text envs)."""
    env = make(env_or_id, **kwargs) if isinstance(env_or_id, str) else env_or_id
    u = env.unwrapped
    if hasattr(u, "mdp"):
        mdp = u.mdp
    elif isinstance(getattr(u, "P", None), dict):
        mdp = toy_text_mdp(u.P, u.observation_space.n, u.action_space.n, gamma=1.0,
                           start=getattr(u, "initial_state_distrib", None))
    else:
        name = env.spec.id if env.spec is not None else type(u).__name__
        raise UserError(f"environment {name!r} has no tabular model (no .mdp and no toy-text P table); "
                        f"dynamic programming needs one of ours ({', '.join(ENV_IDS)}) or FrozenLake-v1, "
                        f"CliffWalking-v1, Taxi-v3/v4")
    return mdp if gamma is None else mdp.with_gamma(gamma)


def toy_text_mdp(P_table: dict, S: int, A: int, gamma: float = 1.0, start=None) -> MDP:
    """Convert a toy-text table P[s][a] = [(prob, s', r, done), ...] into an MDP.

    R(s,a) = sum prob * r; a state entered by a done transition is terminal (absorbing, value 0); its own
    table rows are replaced by a zero-reward self-loop. A state entered both by done and by not-done
    transitions cannot be modelled without extra states: that raises UserError.
    """
    P = np.zeros((S, A, S))
    R = np.zeros((S, A))
    done_into = np.zeros(S, dtype=bool)
    live_into = np.zeros(S, dtype=bool)
    for s in range(S):
        for a in range(A):
            for prob, s2, r, done in P_table[s][a]:
                P[s, a, s2] += prob
                R[s, a] += prob * r                      # R(s,a) = sum_s' P(s'|s,a) r(s,a,s')
                if prob > 0:
                    (done_into if done else live_into)[s2] = True
    term = done_into
    # Only states reachable from the start (through non-terminal states) must be consistent: a state
    # entered by a done transition and also by a live transition from a reachable state is ambiguous.
    # (Taxi's "passenger delivered" states form a closed set that the start never reaches alive.)
    p0 = np.ones(S) if start is None else np.asarray(start, dtype=np.float64)
    seen = (p0 > 0) & ~term
    frontier = list(np.where(seen)[0])
    live_into[:] = False
    while frontier:
        s = frontier.pop()
        for a in range(A):
            for prob, s2, _r, done in P_table[s][a]:
                if prob > 0 and not done:
                    live_into[s2] = True
                    if not seen[s2] and not term[s2]:
                        seen[s2] = True
                        frontier.append(s2)
    both = term & live_into
    if both.any():
        raise UserError(f"state {int(np.argmax(both))} is entered by both terminating and non-terminating "
                        f"transitions; this env cannot be converted to an MDP with absorbing states")
    t = np.where(term)[0]
    P[t] = 0.0
    P[t, :, t] = 1.0
    R[t] = 0.0
    if start is not None:
        start = np.asarray(start, dtype=np.float64)
        start = start / start.sum()
    return MDP(P=P, R=R, gamma=gamma, terminal=term, start=start)
