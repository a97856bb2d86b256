"""Admission control: refuse at the door when the queue ahead already exceeds max latency."""
from serving.service import admit


def test_admit_compares_the_queue_ahead_with_max_latency():
    # 10 ms of model per image, 1 s budget: 99 ahead + this one = 1.0 s fits, 100 ahead does not
    assert admit(0, 0.010, 1.0)
    assert admit(99, 0.010, 1.0)
    assert not admit(100, 0.010, 1.0)
    assert not admit(0, 2.0, 1.0)  # a model slower than the budget refuses even an idle server's request
    # the defaults (10 s, ~5 ms/image on this CPU) admit far more than the 256 concurrent connections allowed
    assert admit(255, 0.005, 10.0)
