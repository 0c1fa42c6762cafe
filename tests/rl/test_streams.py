"""Per-seed random streams: seed i reads exactly default_rng(seed + i)'s uniforms, whatever the block size,
the other seeds or a checkpoint in between."""

import numpy as np

from mlcanon.rl.streams import ENV, SeedStreams, box_muller, generator, int_seed


def test_each_seed_reads_its_own_default_rng_stream_in_order():
    s = SeedStreams([3, 4, 5], block=16)                  # small blocks: several refills, aligned and not
    got = {i: [] for i in range(3)}
    for k in (5, 7, 16, 3):
        u = s.draw(k)
        for i in range(3):
            got[i].append(u[i].copy())
    u = s.draw(6, np.array([1]))                          # seed 4 alone: the others do not move
    got[1].append(u[0])
    u = s.draw(9)
    for i in range(3):
        got[i].append(u[i])
    for i, seed in enumerate((3, 4, 5)):
        mine = np.concatenate(got[i])
        np.testing.assert_array_equal(mine, np.random.default_rng(seed).random(len(mine)))
    np.testing.assert_array_equal(s.positions(), [40, 46, 40])


def test_checkpoint_restores_every_position_exactly():
    a = SeedStreams([7, 8], block=32)
    a.draw(20)
    a.draw(11, np.array([0]))
    b = SeedStreams([7, 8], block=8)                      # another block size reads the same streams
    b.load_state_dict(a.state_dict())
    for k in (3, 8, 5):
        np.testing.assert_array_equal(a.draw(k), b.draw(k))


def test_streams_are_distinct_and_box_muller_is_standard_normal():
    assert generator(1, ENV).random() != generator(1).random() != generator(2).random()
    assert int_seed(1, ENV) != int_seed(2, ENV)
    u = np.random.default_rng(0).random((2, 200_000))
    z = box_muller(u[0], u[1])
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n) and abs(z.var() - 1) < 5 * np.sqrt(2 / n)   # 5 standard errors
    assert abs((z < -1.959964).mean() - 0.025) < 5 * np.sqrt(0.025 * 0.975 / n)      # the 2.5% tail
