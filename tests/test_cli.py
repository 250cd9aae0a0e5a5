"""The console command, run as a user runs it: a subprocess on real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_unet_gradcam import save_checkpoint
from napari_unet_gradcam.io import output_names
from napari_unet_gradcam.synthetic import nuclei_2d, nuclei_3d

from .conftest import tiny_unet


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "napari_unet_gradcam.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    save_checkpoint(tiny_unet(width=4), d / "tiny.pth", preprocess={"mode": "percentile"})
    tifffile.imwrite(d / "flat.tif", nuclei_2d(1, (96, 120)))
    tifffile.imwrite(d / "stack.tif", nuclei_3d(1, (4, 64, 48)), metadata={"axes": "ZYX"})
    rgb = np.repeat(nuclei_2d(2, (80, 72)).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(rgb).save(d / "colour.png")
    (d / "notes.txt").write_text("not an image")
    (d / "broken.tif").write_bytes(b"II*\x00garbage")
    return d


def test_help_for_every_subcommand():
    for sub in ([], ["demo"], ["explain"], ["train"]):
        r = cli(*sub, "--help")
        assert r.returncode == 0 and "usage: napari-unet-gradcam" in r.stdout


def test_explain_writes_outputs_with_shapes_and_metadata(files, tmp_path):
    out = tmp_path / "out"
    r = cli(
        "explain",
        files / "flat.tif",
        files / "stack.tif",
        "--model",
        files / "tiny.pth",
        "--out",
        out,
        "--layers",
        "up3",
        "up4",
        "--probabilities",
    )
    assert r.returncode == 0, r.stderr
    assert "Done: 2 of 2" in r.stdout and "Traceback" not in r.stderr
    labels = tifffile.imread(out / "flat_labels.tif")
    assert labels.shape == (96, 120)
    with tifffile.TiffFile(out / "stack_maps.tif") as tif:
        maps = tif.series[0].asarray()
        md = tif.shaped_metadata[0]
    assert maps.shape == (2, 3, 4, 64, 48) and maps.dtype == np.float32
    assert md["axes"] == "QCZYX" and md["decoder_layers"] == ["up3", "up4"]
    assert md["classes"] == ["background", "nucleus", "boundary"]
    assert tifffile.imread(out / "stack_probabilities.tif").shape == (3, 4, 64, 48)
    sheet = np.asarray(Image.open(out / "flat_contact_sheet.png"))
    assert sheet.shape[0] > 3 * 200 and sheet.shape[1] >= 3 * 200  # header row + 2 layer rows, 3 classes
    meta = json.loads((out / "flat_metadata.json").read_text())
    assert meta["method"] == "gradcam" and len(meta["model"]["sha256"]) == 64


def test_bad_inputs_get_one_line_each_and_others_still_run(files, tmp_path):
    out = tmp_path / "out"
    r = cli(
        "explain",
        files / "notes.txt",
        files / "broken.tif",
        files / "missing.png",
        files / "colour.png",
        files / "flat.tif",
        "--model",
        files / "tiny.pth",
        "--out",
        out,
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 4, r.stderr
    assert any("notes.txt" in e and "unsupported" in e for e in errors)
    assert any("broken.tif" in e and "TIFF" in e for e in errors)
    assert any("missing.png" in e and "no such file" in e for e in errors)
    assert any("colour.png" in e and "3 channel(s)" in e for e in errors)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"flat_{s}" for s in ("labels.tif", "maps.tif", "contact_sheet.png", "metadata.json")
    )


def test_bad_checkpoint_is_one_line_and_nonzero(files, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 100)
    r = cli("explain", files / "flat.tif", "--model", bad, "--out", tmp_path / "o")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.count("error:") == 1 and "bad.pth" in r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_unknown_layer_is_reported(files, tmp_path):
    r = cli("explain", files / "flat.tif", "--model", files / "tiny.pth", "--layers", "up7", "--out", tmp_path)
    assert r.returncode == 1 and "Unknown layer 'up7'" in r.stderr and "Traceback" not in r.stderr


def test_demo_runs_on_bundled_model(tmp_path):
    from napari_unet_gradcam.checkpoint import default_model_path

    if not default_model_path().exists():
        pytest.skip("bundled model not built")
    r = cli("demo", "--out", tmp_path / "demo", "--instances")
    assert r.returncode == 0, r.stderr
    labels = tifffile.imread(tmp_path / "demo" / "synthetic_nuclei_labels.tif")
    assert labels.shape == (512, 512) and 0.05 < (labels > 0).mean() < 0.9
    assert (tmp_path / "demo" / "synthetic_nuclei_contact_sheet.png").exists()
    inst = tifffile.imread(tmp_path / "demo" / "synthetic_nuclei_instances.tif")
    assert inst.shape == labels.shape and inst.max() > 20 and "objects" in r.stdout


def test_hostile_checkpoints_in_the_cli(files, tmp_path):
    from .conftest import hostile_checkpoints

    for kind, path in hostile_checkpoints(tmp_path / "bad").items():
        r = cli("explain", files / "flat.tif", "--model", path, "--out", tmp_path / "o")
        assert r.returncode != 0 and "Traceback" not in r.stderr, kind
        assert r.stderr.count("error:") == 1 and path.name in r.stderr, (kind, r.stderr)
    assert not (tmp_path / "bad" / "pwned").exists()


def test_train_subcommand_on_user_folders(tmp_path):
    from napari_unet_gradcam.synthetic import generate

    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    for i in range(3):
        s = generate(200 + i, (80, 80))
        tifffile.imwrite(imgs / f"n{i}.tif", s.image)
        tifffile.imwrite(masks / f"n{i}.tif", s.classes)
    r = cli("train", tmp_path / "m.pth", "--images", imgs, "--masks", masks, "--steps", "2", "--width", "4")
    assert r.returncode == 0, r.stderr
    assert "Saved" in r.stdout and (tmp_path / "m.pth").exists()
    r = cli("train", tmp_path / "x.pth", "--images", imgs)
    assert r.returncode == 2 and "--masks" in r.stderr and "Traceback" not in r.stderr


def _lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.strip()]


def test_output_that_would_overwrite_an_input_is_refused_before_any_work(files, tmp_path):
    # `explain *.tif --out .` beside a ground truth named like our labels output.
    work = tmp_path / "w"
    work.mkdir()
    tifffile.imwrite(work / "cell1.tif", nuclei_2d(3, (64, 64)))
    truth = np.zeros((64, 64), np.uint8)
    truth[10:20, 10:20] = 1
    tifffile.imwrite(work / "cell1_labels.tif", truth)
    before = (work / "cell1_labels.tif").read_bytes()
    r = cli("explain", "cell1.tif", "cell1_labels.tif", "--model", files / "tiny.pth", "--out", ".", cwd=work)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert _lines(r.stderr) == [
        "napari-unet-gradcam: error: cell1.tif: its output cell1_labels.tif would overwrite cell1_labels.tif; "
        "nothing was done for it. Choose another --out folder."
    ]
    assert (work / "cell1_labels.tif").read_bytes() == before
    assert (work / "cell1_labels_labels.tif").exists() and not (work / "cell1_maps.tif").exists()
    assert "Done: 1 of 2" in r.stdout


def test_inputs_writing_the_same_outputs_are_refused(files, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / "x.tif", nuclei_2d(4, (64, 64)))
    Image.fromarray(nuclei_2d(4, (64, 64)).astype(np.uint8)).save(tmp_path / "a" / "x.png")
    names = [tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif", tmp_path / "a" / "x.png", files / "flat.tif"]
    r = cli("explain", *names, "--model", files / "tiny.pth", "--out", tmp_path / "o")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = _lines(r.stderr)
    assert len(errors) == 3 and all("would write the same output files (x_*)" in e for e in errors), r.stderr
    assert sorted(os.listdir(tmp_path / "o")) == sorted(output_names("flat"))
    assert "Done: 1 of 4" in r.stdout


def test_one_file_named_twice_is_explained_once(files, tmp_path):
    twice = (files / "flat.tif", files / "." / "flat.tif", files / "flat.tif")
    r = cli("explain", *twice, "--model", files / "tiny.pth", "--out", tmp_path)
    assert r.returncode == 0 and "Done: 1 of 1" in r.stdout, r.stderr


@pytest.mark.parametrize("out", ["a_file", "a_file/sub"])
def test_out_that_is_a_file_is_refused_before_loading(files, tmp_path, out):
    (tmp_path / "a_file").write_text("keep me")
    r = cli("explain", files / "flat.tif", "--model", files / "tiny.pth", "--out", tmp_path / out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(_lines(r.stderr)) == 1 and "is a file" in r.stderr and "choose" in r.stderr
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_a_failure_while_writing_one_input_does_not_stop_the_batch(files, tmp_path):
    out = tmp_path / "o"
    (out / "flat_labels.tif").mkdir(parents=True)  # the rename onto this name fails
    r = cli("explain", files / "flat.tif", files / "stack.tif", "--model", files / "tiny.pth", "--out", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert _lines(r.stderr) == [ln for ln in _lines(r.stderr) if "flat.tif: could not write its outputs" in ln]
    assert len(_lines(r.stderr)) == 1 and "Done: 1 of 2" in r.stdout
    assert (out / "stack_labels.tif").exists() and not [p for p in os.listdir(out) if ".part" in p]


def test_sigterm_while_writing_removes_what_was_being_written(files, tmp_path):
    # The signal arrives right after the first output file of the first input is written.
    out = tmp_path / "o"
    driver = (
        "import os, signal, sys\n"
        "import napari_unet_gradcam.io as io\n"
        "real = io.tifffile.imwrite\n"
        "def imwrite(*a, **k):\n"
        "    real(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "io.tifffile.imwrite = imwrite\n"
        "from napari_unet_gradcam.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["explain", files / "flat.tif", files / "stack.tif", "--model", files / "tiny.pth", "--out", out]
    r = subprocess.run([sys.executable, "-c", driver, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 128 + 15 and "Traceback" not in r.stderr
    assert _lines(r.stderr) == [
        "napari-unet-gradcam: error: stopped by SIGTERM; files being written were removed, finished ones kept"
    ]
    assert not out.exists() or os.listdir(out) == []


def test_train_into_a_folder_or_a_missing_folder_fails_at_once(tmp_path):
    (tmp_path / "models").mkdir()
    for dest, message in ((tmp_path / "models", "is a folder"), (tmp_path / "nope" / "m.pth", "does not exist")):
        r = cli("train", dest, "--steps", "1", "--width", "4")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert len(_lines(r.stderr)) == 1 and message in r.stderr and "epoch" not in r.stdout
    assert os.listdir(tmp_path / "models") == []


def test_threshold_and_mask_values_as_upstream_writes_them(files, tmp_path):
    from .test_upstream import balanced

    img = tifffile.imread(files / "flat.tif")
    binary = balanced(tiny_unet(n_classes=1, width=4, seed=3), img, 1.0)
    torch_save_upstream(binary, tmp_path / "binary.pth", [0, 1])
    out = tmp_path / "out"
    args = ("explain", files / "flat.tif", "--model", tmp_path / "binary.pth", "--out", out, "--layers", "up4")
    r = cli(*args, "--threshold", "0.3", "--mask-values", "--probabilities")
    assert r.returncode == 0, r.stderr
    labels = tifffile.imread(out / "flat_labels.tif")
    fg = tifffile.imread(out / "flat_probabilities.tif")[1] > 0.3
    assert 0 < fg.mean() < 1
    np.testing.assert_array_equal(labels, np.where(fg, 255, 0))  # upstream's binary mask: 0/255
    three = tmp_path / "three.pth"
    torch_save_upstream(tiny_unet(width=4), three, [0, 200])  # fewer values than classes loads
    r = cli("explain", files / "flat.tif", "--model", three, "--out", out, "--mask-values")
    assert r.returncode == 0, r.stderr
    assert set(np.unique(tifffile.imread(out / "flat_labels.tif"))) <= {0, 200}
    r = cli("explain", files / "flat.tif", "--model", three, "--out", out, "--threshold", "0.3")
    assert r.returncode == 1 and "one-channel" in r.stderr


def torch_save_upstream(net, path, mask_values):
    """As upstream's train.py saves: the state_dict with mask_values added to it."""
    import torch

    torch.save(dict(net.state_dict(), mask_values=mask_values), path)


def test_repeat_channels_is_a_cli_option_as_the_hint_says(files, tmp_path):
    save_checkpoint(tiny_unet(n_channels=3, width=4), tmp_path / "three.pth")
    args = ("explain", files / "flat.tif", "--model", tmp_path / "three.pth", "--layers", "up4")
    r = cli(*args, "--out", tmp_path / "a")
    assert r.returncode == 1 and "--repeat-channels" in r.stderr
    r = cli(*args, "--out", tmp_path / "b", "--repeat-channels")
    assert r.returncode == 0, r.stderr
    assert tifffile.imread(tmp_path / "b" / "flat_labels.tif").shape == (96, 120)


def test_train_artefacts_takes_a_fraction(monkeypatch, capsys):
    from napari_unet_gradcam import cli, train

    seen = []
    monkeypatch.setattr(train, "train", lambda out, **kw: seen.append(kw) or {"seconds": 0, "history": [{}]})
    assert cli.main(["train", "a.pth", "--artefacts"]) == 0
    assert cli.main(["train", "b.pth", "--artefacts", "0.333"]) == 0
    assert seen[0]["artefacts"] is True and seen[0]["n_train"] == 480
    assert seen[1]["artefacts"] == 0.333 and seen[1]["n_train"] == train.MIXED_RECIPE["n_train"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "d.pth", "--artefacts", "1.5"])
    assert exit_info.value.code == 2 and "not a fraction in (0, 1]" in capsys.readouterr().err


def test_train_init_and_lr_reach_training(monkeypatch):
    from napari_unet_gradcam import cli, train

    seen = []
    monkeypatch.setattr(train, "train", lambda out, **kw: seen.append(kw) or {"seconds": 0, "history": [{}]})
    assert cli.main(["train", "a.pth", "--images", "i", "--masks", "m", "--init", "bundled", "--lr", "5e-4"]) == 0
    assert cli.main(["train", "b.pth", "--steps", "10"]) == 0
    assert seen[0]["init"] == "bundled" and seen[0]["lr"] == 5e-4
    assert seen[1]["init"] is None and "lr" not in seen[1] and seen[1]["steps"] == 10


def test_train_with_no_options_runs_the_bundled_recipe_in_two_stages(monkeypatch, tmp_path, capsys):
    from napari_unet_gradcam import cli, train

    calls = []

    def fake(out, **kw):
        calls.append((Path(out), kw))
        Path(out).write_bytes(b"stage")
        return {"seconds": 0, "history": [{"foreground_iou": 0.9}]}

    monkeypatch.setattr(train, "train", fake)
    assert cli.main(["train", str(tmp_path / "bundled.pth"), "--threads", "2"]) == 0
    (plain, first), (out, second) = calls
    assert out == tmp_path / "bundled.pth" and plain.parent != tmp_path and not plain.exists()
    assert first == {"threads": 2, "log": print}  # the plain recipe, unchanged
    assert second == {"init": plain, "threads": 2, "log": print, **train.FINETUNE_RECIPE}
    assert "Saved" in capsys.readouterr().out


def test_train_plain_stage_runs_only_the_second_stage(monkeypatch, tmp_path, capsys):
    from napari_unet_gradcam import cli, train

    calls = []
    monkeypatch.setattr(train, "train", lambda out, **kw: calls.append((out, kw)) or {"history": [{}]})
    plain = tmp_path / "plain.pth"
    assert cli.main(["train", str(tmp_path / "b.pth"), "--plain-stage", str(plain)]) == 0
    assert calls == [(tmp_path / "b.pth", {"init": str(plain), "threads": None, "log": print, **train.FINETUNE_RECIPE})]
    assert cli.main(["train", str(tmp_path / "c.pth"), "--plain-stage", str(plain), "--steps", "3"]) != 0
    assert "--plain-stage reproduces the bundled model's second stage" in capsys.readouterr().err
    assert len(calls) == 1


def test_train_lr_zero_reaches_the_check(tmp_path, capsys):
    from napari_unet_gradcam import cli

    assert cli.main(["train", str(tmp_path / "m.pth"), "--lr", "0", "--steps", "1", "--width", "4"]) != 0
    assert "--lr must be a positive learning rate such as 5e-4, not 0.0" in capsys.readouterr().err
    assert not (tmp_path / "m.pth").exists()
