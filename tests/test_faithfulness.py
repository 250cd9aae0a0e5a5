import copy
import dataclasses
import json
import math
import sys
import threading

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import stats

from napari_unet_gradcam import UNet, explain, load_model, save_checkpoint
from napari_unet_gradcam.errors import Cancelled, InputError
from napari_unet_gradcam.faithfulness import MapChecks, check_maps, estimate_cost, randomised_copy
from napari_unet_gradcam.synthetic import nuclei_2d

from .conftest import tiny_unet

STEPS = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)


class Windowed(UNet):
    """A U-Net that sees only the pixels inside ``window``: every other pixel provably has no effect."""

    def forward(self, x):
        return super().forward(x * self.window.to(x.dtype))


def windowed_net(size=64):
    net = Windowed(1, 3, bilinear=True, width=4)
    net.load_state_dict(tiny_unet().state_dict())
    net.class_names = ["background", "nucleus", "boundary"]
    window = torch.zeros(size, size)
    window[16:48, 16:48] = 1  # a quarter of the image
    net.window = window
    return net.eval(), window.numpy().astype(bool)


@pytest.fixture
def small_image():
    rng = np.random.default_rng(3)
    img = rng.random((64, 64)).astype(np.float32)
    img[20:40, 22:44] += 1.5
    return img / img.max()


@pytest.fixture(scope="module")
def bundled_case():
    net = load_model(device="cpu")
    img = nuclei_2d(7, (512, 512))[:96, :96]
    return net, img, explain(img, net, layers=["up1", "up4"], classes=[1])


def with_map(result, key, m):
    return dataclasses.replace(result, cams={key: m.astype(np.float32)})


def test_map_beats_random_beats_reversed_where_the_truth_is_known(small_image):
    net, window = windowed_net()
    result = explain(small_image, net, layers=["up4"], classes=[1], target="image")
    noise = np.random.default_rng(0).random(window.shape) * 0.01
    oracle = window + noise  # the pixels the network sees, first
    right = check_maps(small_image, net, with_map(result, ("up4", 1), oracle), steps=STEPS, randomisation=False)
    wrong = check_maps(small_image, net, with_map(result, ("up4", 1), -oracle), steps=STEPS, randomisation=False)
    r, w = right[("up4", 1)], wrong[("up4", 1)]
    assert r.deletion_auc < r.deletion_auc_random < w.deletion_auc
    assert r.insertion_auc > r.insertion_auc_random > w.insertion_auc
    assert r.deletion_vs_random < 1 < w.deletion_vs_random
    assert r.insertion_vs_random > 1 > w.insertion_vs_random
    # Once the window is gone (25% of the pixels) deletion has reached the baseline exactly;
    # the reversed order removes only unseen pixels until then.
    assert r.deletion[STEPS.index(0.4)] == pytest.approx(0.0, abs=1e-5)
    assert w.deletion[STEPS.index(0.6)] == pytest.approx(1.0, abs=1e-5)


def test_a_real_map_beats_its_reversed_order(bundled_case):
    """Grad-CAM's boundary map of the bundled model: its pixel order reversed scores worse in both curves."""
    net, img, _ = bundled_case
    result = explain(img, net, layers=["up3"], classes=[2], normalize="none")
    m = result.cams["up3", 2]
    right = check_maps(img, net, result, randomisation=False)["up3", 2]
    wrong = check_maps(img, net, with_map(result, ("up3", 2), -m), randomisation=False)["up3", 2]
    assert right.deletion_auc < right.deletion_auc_random < wrong.deletion_auc
    assert right.insertion_auc > right.insertion_auc_random > wrong.insertion_auc


def test_curves_end_at_image_and_baseline(small_image, net):
    result = explain(small_image, net, layers=["up1", "up4"])
    checks = check_maps(small_image, net, result, randomisation=False, baseline="mean")
    assert checks.steps[0] == 0.0 and checks.steps[-1] == 1.0
    defined = [c for c in checks.checks if checks.score_image[c.class_index] != checks.score_baseline[c.class_index]]
    assert len(defined) >= 2
    for c in defined:
        assert (c.deletion[0], c.deletion[-1], c.insertion[0], c.insertion[-1]) == (1.0, 0.0, 0.0, 1.0)
        assert len(c.deletion) == len(c.insertion) == len(checks.steps)
    for c in checks.checks:
        if c not in defined:  # an empty region (a class never predicted) has no curve, and says so
            assert math.isnan(c.deletion_auc) and any(c.class_name in n for n in checks.notes)


def test_randomised_weights_change_gradcam_maps(bundled_case):
    net, img, result = bundled_case
    checks = check_maps(img, net, result, steps=(0.0, 0.5, 1.0))
    rhos = [c.randomisation_rho for c in checks.checks]
    assert all(math.isfinite(r) and r < 0.8 for r in rhos), rhos
    assert checks.explain_runs == 2


def test_randomisation_matches_explain_on_the_randomised_network(bundled_case):
    """The one-pass-per-layer randomisation gives what explain() gives on the randomised copy,
    scoring each class over its fixed predicted region."""
    net, img, result = bundled_case
    checks = check_maps(img, net, result, steps=(0.0, 0.5, 1.0))
    for ly, c in result.cams:
        again = explain(
            img, randomised_copy(net, ly), layers=[ly], classes=[c], target=result.labels == c, normalize="none"
        )
        rho = stats.spearmanr(result.cams[ly, c].ravel(), again.cams[ly, c].ravel()).statistic
        assert checks[ly, c].randomisation_rho == pytest.approx(rho, abs=1e-3)


def test_randomised_copy_resets_from_the_output_down_to_the_layer():
    net = tiny_unet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rnet = randomised_copy(net, "up3", seed=1)
    after = rnet.state_dict()
    changed = {k.split(".")[0] for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])}
    assert changed == {"up3", "up4", "outc"}
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(InputError, match="not a module"):
        randomised_copy(net, "nope")


def test_the_users_net_is_unchanged(small_image, net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()  # the check runs in eval mode and hands the mode back
    result = explain(small_image, net, layers=["up2", "up4"], classes=[0, 1])
    check_maps(small_image, net, result, steps=(0.0, 0.5, 1.0))
    assert net.training
    assert before.keys() == net.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_progress_reaches_total_and_matches_the_estimate(small_image, net):
    result = explain(small_image, net, layers=["up3", "up4"], classes=[1, 2])
    calls = []
    checks = check_maps(small_image, net, result, steps=STEPS, progress=lambda d, t: calls.append((d, t)))
    done = [d for d, _ in calls]
    assert done == list(range(1, len(calls) + 1)) and calls[-1][0] == calls[-1][1]
    cost = estimate_cost(result, steps=STEPS)
    assert (checks.forward_passes, checks.explain_runs) == (cost.forward_passes, cost.explain_runs)
    # One randomised network per layer: a forward pass, then a backward pass per class (its own region).
    assert (cost.explain_runs, cost.backward_passes) == (2, 4)


def test_maps_that_rank_alike_share_their_passes(small_image, net):
    result = explain(small_image, net, method="eigencam")  # one map per layer, whatever the class
    cost = estimate_cost(result, steps=STEPS, randomisation=False)
    inner = len(STEPS) - 2
    assert cost.forward_passes == 2 * inner * (4 + 1) + 2
    checks = check_maps(small_image, net, result, steps=STEPS, randomisation=False)
    assert checks.forward_passes == cost.forward_passes and len(checks.checks) == 12


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_raises(small_image, net, kind):
    result = explain(small_image, net, classes=[1])
    event = threading.Event()
    cancel = event if kind == "event" else event.is_set
    with pytest.raises(Cancelled):
        check_maps(small_image, net, result, progress=lambda d, t: event.set(), cancel=cancel)
    event.set()
    with pytest.raises(Cancelled, match="before it started"):
        check_maps(small_image, net, result, cancel=cancel)


def test_json_round_trip(small_image, net):
    result = explain(small_image, net, layers=["up4"])
    checks = check_maps(small_image, net, result, steps=(0.0, 0.3, 1.0), randomisation=False)
    text = checks.to_json()
    json.loads(text)  # plain JSON: NaN written as null
    back = MapChecks.from_json(text)
    assert back.to_json() == text
    assert back.random_deletion.keys() == checks.random_deletion.keys()
    assert back.checks[0].key == checks.checks[0].key
    rows = back.summary_rows()
    assert [r[0] for r in rows] == ["up4/background", "up4/nucleus", "up4/boundary"]
    assert all(math.isnan(r[5]) for r in rows)  # randomisation was off


def test_mask_target_and_pixel_target(small_image, net):
    mask = np.zeros(small_image.shape, bool)
    mask[10:20, 10:30] = True
    result = explain(small_image, net, layers=["up4"], classes=[1], target=mask)
    with pytest.raises(InputError, match="same target"):
        check_maps(small_image, net, result)
    checks = check_maps(small_image, net, result, target=mask, steps=(0.0, 0.5, 1.0))
    assert math.isfinite(checks.checks[0].deletion_auc) and math.isfinite(checks.checks[0].randomisation_rho)
    result = explain(small_image, net, layers=["up4"], classes=[1], target=(12, 12), scale=0.5)
    checks = check_maps(small_image, net, result, target=(12, 12), steps=(0.0, 0.5, 1.0), randomisation=False)
    assert checks.score_image[1] != checks.score_baseline[1]


def test_bad_input_is_refused(small_image, net):
    result = explain(small_image, net, layers=["up4"], classes=[1])
    with pytest.raises(InputError, match="baseline"):
        check_maps(small_image, net, result, baseline="zeros")
    with pytest.raises(InputError, match="steps"):
        check_maps(small_image, net, result, steps=(0.0, 1.5))
    with pytest.raises(InputError, match="no map"):
        check_maps(small_image, net, result, maps=[("up1", 1)])
    with pytest.raises(InputError, match="image that explain"):
        check_maps(small_image[:32], net, result)
    tiled = explain(small_image, net, layers=["up4"], classes=[1], tile_size=32, halo=16)
    assert tiled.metadata["tile_size"]
    with pytest.raises(InputError, match="tiles"):
        check_maps(small_image, net, tiled)
    stack = np.stack([small_image, small_image])
    with pytest.raises(InputError, match="one slice"):
        check_maps(stack, net, explain(stack, net, layers=["up4"], classes=[1]))


def test_batching_does_not_change_the_curves(small_image, net):
    result = explain(small_image, net, layers=["up3"], classes=[1, 2])
    one = check_maps(small_image, net, result, steps=STEPS, randomisation=False, batch_size=1)
    many = check_maps(small_image, net, result, steps=STEPS, randomisation=False, batch_size=5)
    assert one.forward_passes == many.forward_passes
    for a, b in zip(one.checks, many.checks, strict=True):
        np.testing.assert_allclose(a.deletion, b.deletion, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.insertion, b.insertion, rtol=1e-4, atol=1e-5)


def test_batchnorm_folding_keeps_the_logits(small_image, net):
    from napari_unet_gradcam.faithfulness import fold_batchnorm

    x = torch.from_numpy(small_image[None, None])
    folded = fold_batchnorm(copy.deepcopy(net).eval())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        a, b = net.eval()(x), folded(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_cost_estimate_counts_what_runs(small_image, net):
    result = explain(small_image, net, layers=["up1", "up4"])
    cost = estimate_cost(result)
    checks = check_maps(small_image, net, result)
    assert (checks.forward_passes, checks.explain_runs) == (cost.forward_passes, cost.explain_runs)
    assert cost.backward_passes == 6 and cost.times_predict > cost.forward_passes * 0.5
    no_rand = estimate_cost(result, randomisation=False)
    assert (no_rand.explain_runs, no_rand.backward_passes) == (0, 0)


# -- the curves plot and the CLI's --check ------------------------------------------------------
@pytest.fixture
def small_checks(small_image, net):
    result = explain(small_image, net, layers=["up3", "up4"])
    return check_maps(small_image, net, result, steps=(0.0, 0.2, 0.5, 1.0), randomisation=False)


def test_plot_has_every_map_and_the_random_order_and_highlights_one(small_checks):
    pytest.importorskip("matplotlib")
    from napari_unet_gradcam.curves_plot import plot_curves

    fig = plot_curves(small_checks)
    axes = fig.get_axes()
    assert len(axes) == 2 * 3  # deletion and insertion, one column per class
    for ax in axes:
        solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(solid) == 2 and len(dashed) == 1  # two layers, the random order
    check = small_checks["up4", 1]
    np.testing.assert_allclose(axes[1].get_lines()[1].get_ydata(), check.deletion)
    fig = plot_curves(small_checks, fig, highlight=("up4", 1))
    widths = {ln.get_label(): ln.get_linewidth() for ln in fig.get_axes()[1].get_lines()}
    assert widths["up4"] > widths["up3"]


def test_plot_without_matplotlib_says_what_to_install(small_checks, monkeypatch):
    from napari_unet_gradcam.curves_plot import plot_curves
    from napari_unet_gradcam.errors import UnetGradcamError

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UnetGradcamError, match="pip install matplotlib"):
        plot_curves(small_checks)


@pytest.fixture
def cli_files(tmp_path):
    save_checkpoint(tiny_unet(width=4), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})
    tifffile.imwrite(tmp_path / "cells.tif", nuclei_2d(1, (64, 80)))
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([nuclei_2d(1, (64, 64))] * 2), metadata={"axes": "ZYX"})
    return tmp_path


def run_cli(*args):
    from napari_unet_gradcam.cli import main

    return main([str(a) for a in args])


def test_cli_check_writes_the_numbers_and_the_curves(cli_files, capsys):
    out = cli_files / "out"
    args = ["explain", cli_files / "cells.tif", "--model", cli_files / "tiny.pth", "--device", "cpu", "--out", out]
    assert run_cli(*args, "--layers", "up3", "up4", "--check") == 0
    meta = json.loads((out / "cells_metadata.json").read_text())
    back = MapChecks.from_json(json.dumps(meta["checks"]))
    assert [c.key for c in back.checks] == [(ly, c) for ly in ("up3", "up4") for c in range(3)]
    assert back.explain_runs == 2 and back.forward_passes > 2
    png = out / "cells_checks.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert "cells_checks.png" in capsys.readouterr().out
    assert not any(p.name.endswith(".part.png") for p in out.iterdir())


def test_cli_check_without_matplotlib_warns_and_keeps_the_numbers(cli_files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = cli_files / "out"
    args = ["explain", cli_files / "cells.tif", "--model", cli_files / "tiny.pth", "--device", "cpu", "--out", out]
    assert run_cli(*args, "--layers", "up4", "--classes", "1", "--check") == 0
    err = capsys.readouterr().err
    assert "warning" in err and "pip install matplotlib" in err and "Traceback" not in err
    assert not (out / "cells_checks.png").exists()
    assert "checks" in json.loads((out / "cells_metadata.json").read_text())


def test_cli_check_of_a_stack_is_one_clear_line(cli_files, capsys):
    out = cli_files / "out"
    args = ["explain", cli_files / "stack.tif", "--model", cli_files / "tiny.pth", "--device", "cpu", "--out", out]
    assert run_cli(*args, "--layers", "up4", "--check") == 1
    err = capsys.readouterr().err
    assert "one slice" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
