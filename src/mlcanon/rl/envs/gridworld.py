"""Grid worlds: GridWorld-v0, SuttonBartoGrid-v0 (S&B Example 4.1) and RobotGrid-v0 (position + heading).

Cells are numbered row-major, s = row * cols + col, row 0 at the top. Actions (GridWorld, S&B grid):
0 up, 1 down, 2 left, 3 right; a move off the grid leaves the agent in place. Terminal cells are
absorbing with value 0. Reward of a transition: r(s,a,s') = step_reward + terminals[s'] when s' is a
terminal cell entered from a non-terminal one, step_reward otherwise.
"""

from __future__ import annotations

import numpy as np

from mlcanon.errors import UserError
from mlcanon.rl.envs.tabular_env import ARROWS, MOVES, TabularEnv, disc, fill
from mlcanon.rl.mdp import MDP

CELL = 32  # pixels per cell in rgb_array renders


def _cell(spec, rows: int, cols: int) -> tuple[int, int]:
    """A cell given as (row, col), "row,col", or a state index."""
    if isinstance(spec, str):
        parts = spec.split(",")
        if len(parts) != 2:
            raise UserError(f"a cell given as text must read 'row,col', got {spec!r}")
        spec = (int(parts[0]), int(parts[1]))
    if isinstance(spec, (int, np.integer)):
        spec = divmod(int(spec), cols)
    r, c = (int(x) for x in spec)
    if not (0 <= r < rows and 0 <= c < cols):
        raise UserError(f"cell {(r, c)} is outside the {rows}x{cols} grid; use 0 <= row < {rows}, "
                        f"0 <= col < {cols}")
    return r, c


def grid_mdp(rows: int, cols: int, terminals: dict, step_reward: float, slip: float, gamma: float):
    """(MDP, reward table [S, 4, S]) of a grid world: intended move w.p. 1 - slip, each of the three other
    directions w.p. slip / 3; walls keep the agent in place."""
    S, A = rows * cols, 4
    P = np.zeros((S, A, S))
    rt = np.full((S, A, S), float(step_reward))
    term = np.zeros(S, dtype=bool)
    bonus = np.zeros(S)
    for cell, rew in terminals.items():
        r, c = _cell(cell, rows, cols)
        term[r * cols + c] = True
        bonus[r * cols + c] = float(rew)
    rr, cc = np.divmod(np.arange(S), cols)
    nxt = np.empty((S, A), dtype=np.int64)                      # deterministic successor of each move
    for a, (dr, dc) in enumerate(MOVES):
        r2 = np.clip(rr + dr, 0, rows - 1)
        c2 = np.clip(cc + dc, 0, cols - 1)
        nxt[:, a] = r2 * cols + c2
    for a in range(A):
        for b in range(A):                                     # actual direction b for intended a
            p = 1.0 - slip if a == b else slip / 3.0
            if p:
                np.add.at(P, (np.arange(S), a, nxt[:, b]), p)  # P(s'|s,a) = sum_b p(b|a) [s' = move(s, b)]
    rt += bonus[None, None, :]                                 # r(s,a,s') = step + terminal bonus of s'
    t = np.where(term)[0]
    P[t] = 0.0
    P[t, :, t] = 1.0                                           # terminal cells absorb
    rt[t] = 0.0
    R = (P * rt).sum(-1)                                       # R(s,a) = sum_s' P(s'|s,a) r(s,a,s')
    return MDP(P=P, R=R, gamma=gamma, terminal=term), rt


class GridWorldEnv(TabularEnv):
    """A rows x cols grid world (default 4x4, +1 bottom-right and -1 top-left terminals, reward 0
    elsewhere, no slip, gamma 0.9). ``terminals`` maps a cell (row, col) to the bonus paid on entering it.

    gamma defaults to 0.9: with reward 0 everywhere but the terminals, gamma = 1 makes every policy that
    eventually reaches +1 optimal, so a greedy policy read off V* may wander forever; discounting makes the
    shortest path the unique optimum."""

    def __init__(self, size=4, terminals: dict | None = None, step_reward: float = 0.0, slip: float = 0.0,
                 gamma: float = 0.9, start=None, render_mode: str | None = None):
        rows, cols = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        if rows < 1 or cols < 1 or rows * cols < 2:
            raise UserError(f"grid size must be at least 1x2, got {rows}x{cols}")
        if not 0.0 <= slip <= 1.0:
            raise UserError(f"slip must be a probability in [0, 1], got {slip}")
        if terminals is None:
            terminals = {(rows - 1, cols - 1): 1.0, (0, 0): -1.0}
        self.shape = (rows, cols)
        self.terminals = {_cell(k, rows, cols): float(v) for k, v in terminals.items()}
        mdp, rt = grid_mdp(rows, cols, self.terminals, step_reward, slip, gamma)
        if mdp.terminal.all():
            raise UserError("every cell is terminal; leave at least one non-terminal cell")
        if start is not None:
            r, c = _cell(start, rows, cols)
            p0 = np.zeros(rows * cols)
            p0[r * cols + c] = 1.0
            mdp = MDP(P=mdp.P, R=mdp.R, gamma=mdp.gamma, terminal=mdp.terminal, start=p0)
        self._setup(mdp, rt, render_mode)

    @property
    def terminal_mask(self) -> np.ndarray:
        """Terminal cells as a bool [rows, cols] array (for plots)."""
        return self.mdp.terminal.reshape(self.shape)

    def _render_text(self) -> str:
        rows, cols = self.shape
        lines = []
        for r in range(rows):
            row = []
            for c in range(cols):
                s = r * cols + c
                if s == self.state:
                    row.append("A")
                elif self.mdp.terminal[s]:
                    bonus = self.terminals.get((r, c), 0.0)
                    row.append("+" if bonus > 0 else "-" if bonus < 0 else "T")
                else:
                    row.append(".")
            lines.append(" ".join(row))
        if self.last_action is not None:
            lines.append(f"({ARROWS[self.last_action]})")
        return "\n".join(lines) + "\n"

    def _render_rgb(self) -> np.ndarray:
        rows, cols = self.shape
        img = np.full((rows * CELL, cols * CELL, 3), 255, np.uint8)
        for (r, c), bonus in self.terminals.items():
            color = (120, 200, 120) if bonus > 0 else (220, 120, 120) if bonus < 0 else (170, 170, 170)
            fill(img, r * CELL, c * CELL, (r + 1) * CELL, (c + 1) * CELL, color)
        img[::CELL, :] = 0                                     # grid lines
        img[:, ::CELL] = 0
        r, c = divmod(self.state, cols)
        disc(img, (r + 0.5) * CELL, (c + 0.5) * CELL, CELL * 0.3, (40, 80, 220))
        return img


class SuttonBartoGridEnv(GridWorldEnv):
    """Sutton & Barto Example 4.1: 4x4 grid, terminal corners (0,0) and (3,3) (one state in the book,
    two absorbing cells here), reward -1 on every transition, gamma = 1."""

    def __init__(self, slip: float = 0.0, gamma: float = 1.0, render_mode: str | None = None):
        super().__init__(size=4, terminals={(0, 0): 0.0, (3, 3): 0.0}, step_reward=-1.0, slip=slip,
                         gamma=gamma, render_mode=render_mode)


# --- robot with a heading ----------------------------------------------------------------------------

TURN_LEFT, TURN_RIGHT, FORWARD = 0, 1, 2
HEADINGS = "NESW"                                   # 0 north (up), 1 east, 2 south, 3 west
HEADING_MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])


class RobotGridEnv(TabularEnv):
    """A robot on a rows x cols grid (default 3x3) with a heading: state s = (row * cols + col) * 4 + heading
    (36 states by default), headings 0 N / 1 E / 2 S / 3 W; actions 0 turn-left, 1 turn-right, 2 forward
    (a wall keeps it in place). Reaching ``goal`` (default (2, 2)) facing ``goal_heading`` (default 1 =
    east; None accepts any heading) ends the episode. Reward -1 per action (``step_reward``), gamma 1."""

    def __init__(self, size=3, goal=(2, 2), goal_heading: int | None = 1, step_reward: float = -1.0,
                 gamma: float = 1.0, render_mode: str | None = None):
        rows, cols = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        if rows < 1 or cols < 1:
            raise UserError(f"grid size must be at least 1x1, got {rows}x{cols}")
        if goal_heading is not None and goal_heading not in (0, 1, 2, 3):
            raise UserError(f"goal_heading must be 0 (N), 1 (E), 2 (S), 3 (W) or None, got {goal_heading}")
        gr, gc = _cell(goal, rows, cols)
        self.shape = (rows, cols, 4)
        self.goal = (gr, gc)
        self.goal_heading = goal_heading
        S, A = rows * cols * 4, 3
        cell, h = np.divmod(np.arange(S), 4)
        r, c = np.divmod(cell, cols)
        nxt = np.empty((S, A), dtype=np.int64)
        nxt[:, TURN_LEFT] = cell * 4 + (h - 1) % 4              # heading <- heading - 1 (mod 4)
        nxt[:, TURN_RIGHT] = cell * 4 + (h + 1) % 4             # heading <- heading + 1 (mod 4)
        r2 = np.clip(r + HEADING_MOVES[h, 0], 0, rows - 1)
        c2 = np.clip(c + HEADING_MOVES[h, 1], 0, cols - 1)
        nxt[:, FORWARD] = (r2 * cols + c2) * 4 + h              # one cell along the heading
        term = (r == gr) & (c == gc) & ((h == goal_heading) if goal_heading is not None else True)
        P = np.zeros((S, A, S))
        P[np.arange(S)[:, None], np.arange(A)[None, :], nxt] = 1.0
        t = np.where(term)[0]
        P[t] = 0.0
        P[t, :, t] = 1.0
        rt = np.full((S, A, S), float(step_reward))
        rt[t] = 0.0
        R = (P * rt).sum(-1)
        self._setup(MDP(P=P, R=R, gamma=gamma, terminal=term), rt, render_mode)

    @staticmethod
    def decode(s: int) -> tuple[int, int]:
        """State index -> (cell index, heading)."""
        return divmod(int(s), 4)

    def _render_text(self) -> str:
        rows, cols, _ = self.shape
        cell, h = self.decode(self.state)
        lines = []
        for r in range(rows):
            row = []
            for c in range(cols):
                if r * cols + c == cell:
                    row.append("^>v<"[h])
                elif (r, c) == self.goal:
                    row.append("G")
                else:
                    row.append(".")
            lines.append(" ".join(row))
        return "\n".join(lines) + f"\nheading {HEADINGS[h]}\n"

    def _render_rgb(self) -> np.ndarray:
        rows, cols, _ = self.shape
        img = np.full((rows * CELL, cols * CELL, 3), 255, np.uint8)
        gr, gc = self.goal
        fill(img, gr * CELL, gc * CELL, (gr + 1) * CELL, (gc + 1) * CELL, (120, 200, 120))
        img[::CELL, :] = 0
        img[:, ::CELL] = 0
        cell, h = self.decode(self.state)
        r, c = divmod(cell, cols)
        cy, cx = (r + 0.5) * CELL, (c + 0.5) * CELL
        disc(img, cy, cx, CELL * 0.3, (40, 80, 220))
        dy, dx = HEADING_MOVES[h]
        disc(img, cy + dy * CELL * 0.3, cx + dx * CELL * 0.3, CELL * 0.12, (250, 200, 0))   # the "nose"
        return img
