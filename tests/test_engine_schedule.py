"""Learning-rate schedules: multistep (RepDistiller/CRD), cosine, linear warmup, checkpointable."""

import math

import pytest
import torch

from multikd.train.schedule import LRSchedule


def test_multistep_drops_after_each_milestone_epoch():
    s = LRSchedule("multistep", steps_per_epoch=10, epochs=240, milestones=[150, 180, 210], decay=0.1)
    # step 1499 is the last step of epoch 150 (1-based); step 1500 starts epoch 151
    assert [s(0), s(1499), s(1500), s(1799), s(1800), s(2100), s(2399)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.001, 0.001]
    )


def test_cosine_goes_from_one_to_zero():
    s = LRSchedule("cosine", steps_per_epoch=4, epochs=10, milestones=[], decay=0.1)
    assert s(0) == 1.0
    assert s(20) == pytest.approx(0.5)
    assert s(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s(40) == pytest.approx(0.0, abs=1e-12)


def test_warmup_ramps_linearly_then_hands_over():
    s = LRSchedule("cosine", steps_per_epoch=5, epochs=12, milestones=[], decay=0.1, warmup_epochs=2)
    assert [s(i) for i in range(10)] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert s(10) == 1.0 and s(35) == pytest.approx(0.5)  # cosine over the 50 steps after warmup
    m = LRSchedule("multistep", steps_per_epoch=5, epochs=12, milestones=[3], decay=0.5, warmup_epochs=2)
    assert [m(9), m(10), m(14), m(15)] == pytest.approx([1.0, 1.0, 1.0, 0.5])


def test_scheduler_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, LRSchedule("multistep", 3, 6, [2, 4], 0.1))

    opt, sched = make()
    for _ in range(7):
        opt.step()
        sched.step()
    torch.save({"o": opt.state_dict(), "s": sched.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    opt2, sched2 = make()
    opt2.load_state_dict(state["o"])
    sched2.load_state_dict(state["s"])
    for _ in range(8):
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * 0.01)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="multistep or cosine"):
        LRSchedule("step", 1, 1, [], 0.1)
