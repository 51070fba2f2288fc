import numpy as np
import pytest

from asit.schedules import cosine_schedule


def test_warmup_then_cosine_endpoints():
    sched = cosine_schedule(5e-4, 1e-6, epochs=10, steps_per_epoch=7, warmup_epochs=2, start_warmup=0.0)
    assert sched.shape == (70,)
    assert sched[0] == 0.0
    assert sched[13] == pytest.approx(5e-4)  # last warm-up step reaches the peak
    assert np.all(np.diff(sched[:14]) > 0)  # linear rise
    assert sched[14] == pytest.approx(5e-4)  # cosine starts at the peak
    assert sched[-1] == pytest.approx(1e-6)  # and ends at the final value
    assert np.all(np.diff(sched[14:]) <= 0)


def test_increasing_schedule_for_weight_decay_and_momentum():
    wd = cosine_schedule(0.04, 0.4, epochs=3, steps_per_epoch=5)
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.4)
    assert np.all(np.diff(wd) >= 0)
    mom = cosine_schedule(0.996, 1.0, epochs=3, steps_per_epoch=5)
    assert mom[0] == pytest.approx(0.996) and mom[-1] == pytest.approx(1.0)
    # halfway through a cosine the value is the midpoint
    mid = cosine_schedule(1.0, 0.0, epochs=1, steps_per_epoch=11)
    assert mid[5] == pytest.approx(0.5)


def test_warmup_longer_than_training_is_clipped():
    sched = cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=3, warmup_epochs=5)
    assert sched.shape == (6,)
    assert sched[-1] == pytest.approx(1.0)


def test_single_step():
    assert cosine_schedule(1.0, 0.0, epochs=1, steps_per_epoch=1).tolist() == [1.0]
