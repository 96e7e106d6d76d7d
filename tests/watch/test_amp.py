"""AMP: steps GradScaler skips are info (with the scale), not errors; gradient statistics are unscaled."""
import torch
from torch import nn

from nnstab.watch import watch


def amp_run(init_scale, steps=4, name_scaler=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    if name_scaler:
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        mon = watch(model, scaler=scaler)
    else:                     # created after watch(), as a script run by `nnstab run` would
        mon = watch(model)
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = nn.functional.cross_entropy(out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        mon.step(loss=loss)
    mon.close()
    return mon


def test_skipped_steps_are_one_info_with_the_scale():
    mon = amp_run(init_scale=2.0 ** 100)           # every scaled gradient overflows float16
    assert [f.severity for f in mon.findings] == ["info"]
    f = mon.findings[0]
    assert (f.kind, f.step, f.phase, f.count) == ("nonfinite", 0, "backward", 4)
    assert f.details["scale"] == 2.0 ** 100
    steps = [r for r in mon.records if r["type"] == "step"]
    assert all(r["amp_skipped"] for r in steps)
    assert [r["amp_scale"] for r in steps] == [2.0 ** 100, 2.0 ** 99, 2.0 ** 98, 2.0 ** 97]


def test_the_scaler_is_found_without_being_named():
    mon = amp_run(init_scale=2.0 ** 100, steps=2, name_scaler=False)
    assert [f.severity for f in mon.findings] == ["info"]
    assert mon.findings[0].details["scale"] == 2.0 ** 100


def test_gradient_statistics_are_unscaled():
    plain = amp_run(init_scale=1.0, steps=1)
    scaled = amp_run(init_scale=2.0 ** 10, steps=1)
    a = [r for r in plain.records if r["type"] == "step"][0]["layers"]["2"]["grad_out_norm"]
    b = [r for r in scaled.records if r["type"] == "step"][0]["layers"]["2"]["grad_out_norm"]
    assert abs(b / a - 1) < 1e-3          # float16 gradients scaled by 1024, judged at their true size
    assert not plain.findings and not scaled.findings


def test_parameter_gradient_norms_are_unscaled_once():
    # monitor.step() comes after scaler.step(), which already divided .grad by the scale in place
    plain = amp_run(init_scale=1.0, steps=1)
    scaled = amp_run(init_scale=2.0 ** 10, steps=1)
    a = [r for r in plain.records if r["type"] == "step"][0]["layers"]["0"]["param_grad_norm"]
    b = [r for r in scaled.records if r["type"] == "step"][0]["layers"]["0"]["param_grad_norm"]
    assert abs(b / a - 1) < 1e-2


def test_every_skipped_step_is_counted_also_when_only_weight_gradients_overflowed():
    # between the steps that read every gradient, an overflow only in the parameters' gradients is not
    # seen by the monitor, but the scaler's verdict is: the info finding counts every skipped step
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 28)
    x = torch.randn(1024, 20)
    y = (x[:, :5] * 2).argmax(1)
    skipped = []
    mon = watch(model, scaler=scaler)
    for step in range(40):
        batch = torch.randint(0, 1024, (64,))
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x[batch]).float(), y[batch])
        opt.zero_grad()
        scaler.scale(loss).backward()
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if scaler.get_scale() < before:
            skipped.append(step)
        mon.step(loss=loss)
    mon.close()
    assert [f.severity for f in mon.findings] == ["info"]
    f = mon.findings[0]
    assert len(skipped) > 1 and (f.step, f.count, f.last_step) == (skipped[0], len(skipped), skipped[-1])


def test_two_live_scalers_are_not_guessed_between_and_the_run_is_told_so():
    other = torch.amp.GradScaler("cpu")       # another model's scaler, alive in the same process
    scaler = torch.amp.GradScaler("cpu")
    model = nn.Sequential(nn.Linear(16, 4))
    mon = watch(model)                       # auto: two candidates
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        scaler.scale(model(torch.randn(8, 16)).square().mean()).backward()
        scaler.step(opt)
        scaler.update()
        mon.step()
    mon.close()
    notes = [r["message"] for r in mon.records if r["type"] == "note"]
    assert any("2 enabled torch.amp.GradScalers are alive" in n and "scaler=" in n for n in notes), notes
    assert other is not scaler
