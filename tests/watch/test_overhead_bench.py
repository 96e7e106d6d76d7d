"""`nnstab bench overhead`: its variants run a real training step each (timings themselves are not tested)."""
import pytest
import torch

from nnstab.bench import overhead


def test_every_variant_trains_and_the_item_probe_hooks_every_module():
    for variant in ("plain", "watch", "anomaly", "item"):
        step, monitor = overhead.training_step("mlp", variant)
        step()
        step()
        if variant == "watch":
            assert [r["step"] for r in monitor.records if r["type"] == "step"] == [0, 1]
            monitor.close()
    model, x, y = overhead.make_model("cnn")
    handles = overhead.item_probe(model)
    assert len(handles) == len(list(model.modules())) + sum(1 for m in model.modules() if not list(m.children()))
    with pytest.warns(UserWarning, match="Full backward hook"):   # torch's note: the batch needs no gradient
        model(x).sum().backward()
    for h in handles:
        h.remove()
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert tuple(model(x).shape) == (64, 10) and y.dtype == torch.int64


def test_a_sample_spans_the_whole_schedule_of_a_default_monitor():
    # units every 5 steps, layers and parameter gradients every 10, ranges and parameters every 20, reads every 50
    _, monitor = overhead.training_step("mlp", "watch")
    assert overhead.schedule_period(monitor) == 100
    monitor.close()
    model, _, _ = overhead.make_model("mlp")
    from nnstab.watch import watch
    with watch(model, every=3, checks=["nonfinite", "loss_divergence"]) as quiet:
        assert overhead.schedule_period(quiet) == 60   # nonfinite's parameter reads every 20, reads every 3


def test_a_comparison_in_its_own_process_times_whole_periods_on_both_sides():
    # what the bench runs in a fresh process per comparison: interleaved samples of 100 steps each side
    ours, peer = overhead.compare_in_process("mlp", "watch", repeat=2, min_time=1e-4, quick=False, threads=1)
    assert len(ours) == len(peer) == 2 and all(t > 0 for t in ours + peer)
