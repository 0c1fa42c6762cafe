"""Per-seed random streams for algorithms vectorized over N independent seeds (DESIGN.md section 5).

``--num-seeds N`` runs N independent seeds as one array, and seed i's results must be bitwise those of a
single run with ``--seed seed+i``. So seed i draws only from its own stream: the numpy
``Generator(PCG64(SeedSequence(seed + i)))`` (the same as ``np.random.default_rng(seed + i)``) for the
stream ``AGENT``, or the child ``SeedSequence(seed + i, spawn_key=(k,))`` for another stream ``k`` (a
gymnasium env's seeds, a bandit testbed), and the order in which it reads that stream depends on its own
trajectory only, never on the other seeds.

:class:`SeedStreams` keeps the N streams vectorized: each seed's generator fills a block of uniforms at a
time into one ``[N, B]`` buffer (one generator call per seed per block), and every step reads its uniforms
for all seeds with one slice. The block size changes nothing in what a seed reads, only how often the
buffer is refilled. A seed's state is one integer, the number of uniforms it has read (its position in its
stream): a checkpoint stores these positions, and a restore rebuilds each generator and advances it there
(PCG64 jumps ahead in O(log n)).
"""

from __future__ import annotations

import math

import numpy as np

AGENT, ENV, PROBLEM = 0, 1, 2          # stream ids: the learner's draws, a real env's seeds, a random problem

_BUFFER_DOUBLES = 1 << 20              # ~8 MB of buffered uniforms at most (the buffer is rewritten in place)


def seed_sequence(seed: int, stream: int = AGENT) -> np.random.SeedSequence:
    """The SeedSequence of ``stream`` of ``seed``: the root one for AGENT, child ``spawn_key=(stream,)`` else."""
    if stream == AGENT:
        return np.random.SeedSequence(int(seed))
    return np.random.SeedSequence(int(seed), spawn_key=(int(stream),))


def generator(seed: int, stream: int = AGENT) -> np.random.Generator:
    """``numpy.random.Generator(PCG64(seed_sequence(seed, stream)))``; stream AGENT is ``default_rng(seed)``."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, stream)))


def int_seed(seed: int, stream: int) -> int:
    """A 32-bit integer seed derived from (seed, stream), e.g. for ``env.reset(seed=...)``."""
    return int(seed_sequence(seed, stream).generate_state(1, np.uint32)[0])


def box_muller(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Standard normals from two uniforms in [0, 1): z = sqrt(-2 ln(1 - u1)) cos(2 pi u2) (Box-Muller)."""
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * math.pi * u2)


class SeedStreams:
    """N independent streams of uniforms in [0, 1), one per seed, read in blocks.

    ``draw(k)`` returns ``[N, k]``: the next k uniforms of every seed's own stream. ``draw(k, idx)`` reads
    only the seeds ``idx`` (the others' positions do not move). Only uniforms are read (normals come from
    them by :func:`box_muller`), so a seed's position in its stream is a count of uniforms.
    """

    def __init__(self, seeds, stream: int = AGENT, block: int | None = None):
        self.seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
        self.stream = int(stream)
        N = len(self.seeds)
        self.N = N
        self.B = int(block) if block is not None else int(min(1024, max(256, _BUFFER_DOUBLES // max(N, 1))))
        self.gens = [generator(int(s), stream) for s in self.seeds]
        self.buf = np.empty((N, self.B))
        self._spare = np.empty((N, self.B))         # refills alternate between two buffers (no new pages)
        for i, g in enumerate(self.gens):
            g.random(out=self.buf[i])
        self.base = np.zeros(N, dtype=np.int64)     # stream position of buf[:, 0]
        self.c0 = 0                                 # read cursor shared by all seeds while they are aligned
        self.cur: np.ndarray | None = None          # per-seed cursors once some seed has read alone

    # -- reading -----------------------------------------------------------------------------------
    def draw(self, k: int, idx: np.ndarray | None = None) -> np.ndarray:
        """The next ``k`` uniforms of each seed (``idx``: only those seeds) -> ``[N or len(idx), k]``.

        For all seeds the result may be a view of the buffer: use it before drawing again."""
        if k > self.B:
            raise ValueError(f"cannot draw {k} uniforms at once from blocks of {self.B}")
        if idx is None and self.cur is None:        # aligned: one slice for all seeds
            if self.c0 + k > self.B:
                self._refill_aligned()
            u = self.buf[:, self.c0:self.c0 + k]
            self.c0 += k
            return u
        if self.cur is None:                        # leave the aligned mode; the last view handed out keeps its data
            self.cur = np.full(self.N, self.c0, dtype=np.int64)
            self.buf = self.buf.copy()
        idx = np.arange(self.N) if idx is None else np.asarray(idx, dtype=np.int64)
        low = idx[self.cur[idx] + k > self.B]
        for i in low:
            self._refill_one(int(i))
        c = self.cur[idx]
        u = self.buf[idx[:, None], c[:, None] + np.arange(k)]
        self.cur[idx] = c + k
        return u

    def _refill_aligned(self) -> None:
        """Keep the unread tail, fill the rest of every row from its generator (into the spare buffer, so the
        view handed out by the last draw stays valid)."""
        c, B = self.c0, self.B
        new = self._spare
        new[:, :B - c] = self.buf[:, c:]
        for i, g in enumerate(self.gens):
            g.random(out=new[i, B - c:])
        self._spare, self.buf = self.buf, new
        self.base += c
        self.c0 = 0

    def _refill_one(self, i: int) -> None:
        c, B = int(self.cur[i]), self.B
        row = np.empty(B)
        row[:B - c] = self.buf[i, c:]
        self.gens[i].random(out=row[B - c:])
        self.buf[i] = row                            # (in this mode draw returns copies)
        self.base[i] += c
        self.cur[i] = 0

    # -- checkpoint --------------------------------------------------------------------------------
    def positions(self) -> np.ndarray:
        """Uniforms read so far by each seed (its position in its stream) [N]."""
        return self.base + (self.cur if self.cur is not None else self.c0)

    def state_dict(self) -> dict:
        return {"seeds": self.seeds.copy(), "stream": self.stream, "positions": self.positions()}

    def load_state_dict(self, d: dict) -> None:
        """Rebuild each generator at its saved position: fresh PCG64, advanced by ``positions[i]`` draws."""
        seeds = np.asarray(d["seeds"], dtype=np.int64)
        if not np.array_equal(seeds, self.seeds) or int(d["stream"]) != self.stream:
            raise ValueError("the saved random streams belong to other seeds")
        pos = np.asarray(d["positions"], dtype=np.int64)
        for i, s in enumerate(self.seeds):
            bg = np.random.PCG64(seed_sequence(int(s), self.stream))
            bg.advance(int(pos[i]))                  # one double = one 64-bit draw
            self.gens[i] = np.random.Generator(bg)
            self.gens[i].random(out=self.buf[i])
        self.base = pos.copy()
        self.c0 = 0
        self.cur = None
