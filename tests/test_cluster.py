"""dask.distributed: the model loads on each worker from its file and sha256, never through dask."""

import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from napari_unet_gradcam import CheckpointError, UNet, explain, load_model, save_checkpoint
from napari_unet_gradcam.cluster import (
    ModelSpec,
    StopFlag,
    as_completed_with_stop,
    cluster_client,
    preloaded,
    stop_check,
    worker_model,
)
from napari_unet_gradcam.synthetic import nuclei_2d

from .conftest import tiny_unet

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("cluster") / "tiny.pth"
    return save_checkpoint(tiny_unet(width=4), path, preprocess={"mode": "percentile"})


@pytest.fixture(scope="module")
def client():
    with cluster_client(workers=1, processes=False) as c:
        yield c


def _explain_on_worker(spec, image):
    res = explain(image, worker_model(spec), layers=("up3", "up4"), normalize="none")
    return res.labels, res.stacked()


def test_tasks_carry_the_spec_never_the_model(client, checkpoint, monkeypatch):
    pickled = []

    def refuse(self, protocol):
        pickled.append(type(self).__name__)
        raise TypeError("a UNet was pickled")

    monkeypatch.setattr(UNet, "__reduce_ex__", refuse)
    with pytest.raises(Exception, match="Could not serialize"):  # the detector works: dask pickles what it ships
        client.submit(len, [tiny_unet()]).result()
    assert pickled
    pickled.clear()
    spec = ModelSpec.of(checkpoint, "cpu")
    assert len(pickle.dumps(spec)) < 1000
    image = nuclei_2d(3, (96, 80))
    with preloaded(client, spec):
        labels, maps = client.submit(_explain_on_worker, spec, image, pure=False).result()
    assert not pickled
    local = explain(image, load_model(checkpoint, device="cpu"), layers=("up3", "up4"), normalize="none")
    np.testing.assert_array_equal(labels, local.labels)
    np.testing.assert_allclose(maps, local.stacked(), rtol=1e-5, atol=1e-6)


def test_a_different_checkpoint_on_a_worker_is_one_clear_error(client, checkpoint):
    wrong = ModelSpec(str(checkpoint), "0" * 64, "cpu")
    with (
        pytest.raises(CheckpointError, match=r"has sha256 .* this worker sees a different file"),
        preloaded(client, wrong),
    ):
        pass
    missing = ModelSpec(str(checkpoint.parent / "absent.pth"), "0" * 64, "cpu")
    with pytest.raises(CheckpointError, match=r"On worker .*absent.pth.*Every worker must be able to read"):
        client.submit(worker_model, missing, pure=False).result()


def test_a_model_not_loaded_from_a_file_is_refused():
    with pytest.raises(Exception, match="not loaded from a checkpoint file"):
        ModelSpec.of_model(tiny_unet())


def _wait_for_stop(name):
    stopped = stop_check(name, every=0.01)
    while not stopped():
        time.sleep(0.01)
    return "stopped"


def test_stopping_early_stops_running_and_queued_tasks(client):
    stop = StopFlag(client)
    futures = {client.submit(sum, [1, 2], priority=10): "quick"}  # first: the cluster has one thread
    futures.update({client.submit(_wait_for_stop, stop.name, pure=False): i for i in range(3)})
    for item, fut in as_completed_with_stop(client, futures, stop):
        assert item == "quick" and fut.result() == 3
        break  # as Ctrl-C would: the other tasks loop until the flag is set
    # Stopped by the flag, within the grace time: finished, not cancelled after it ran out.
    assert {f.status for f in futures} == {"finished"}
    assert [f.result() for f in futures if futures[f] != "quick"] == ["stopped"] * 3


BLOCK_DISTRIBUTED = """
import importlib.abc, sys
class _No(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "distributed":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, _No())
import napari_unet_gradcam.cluster
from napari_unet_gradcam.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_distributed_the_cli_says_how_to_install_it(tmp_path, checkpoint):
    tifffile.imwrite(tmp_path / "a.tif", nuclei_2d(1, (64, 64)))
    r = subprocess.run(
        [sys.executable, "-c", BLOCK_DISTRIBUTED, "explain", str(tmp_path / "a.tif"), "--workers", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "pip install napari-unet-gradcam[cluster]" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "gradcam-output" / "a_labels.tif").exists()


@pytest.mark.slow
def test_cli_on_a_local_cluster_writes_what_the_cli_writes(tmp_path, checkpoint):
    zarr = pytest.importorskip("zarr")
    for i in range(2):
        tifffile.imwrite(tmp_path / f"im{i}.tif", nuclei_2d(i, (96, 112)))
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    big = zarr.open_array(tmp_path / "big.zarr", mode="w", shape=(96, 80), chunks=(48, 48), dtype=np.float32)
    big[:] = nuclei_2d(3, (96, 80))
    names = ["im0.tif", "im1.tif", "bad.tif"]
    options = ["--model", str(checkpoint), "--device", "cpu", "--layers", "up4", "--tile-size", "48"]

    def cli(names, *args):
        cmd = [sys.executable, "-m", "napari_unet_gradcam.cli", "explain", *names, *options, *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)

    alone = cli(names, "--out", "alone")
    cluster = cli([*names, "big.zarr"], "--out", "cluster", "--workers", "1")
    assert alone.returncode == cluster.returncode == 1, cluster.stderr
    assert "Done: 3 of 4 image(s) explained" in cluster.stdout
    errors = cluster.stderr.strip().splitlines()
    assert len(errors) == 1 and "bad.tif: not a readable TIFF" in errors[0] and "Traceback" not in cluster.stderr
    for stem in ("im0", "im1"):
        for suffix in ("labels", "maps"):
            a = tifffile.imread(tmp_path / "alone" / f"{stem}_{suffix}.tif")
            b = tifffile.imread(tmp_path / "cluster" / f"{stem}_{suffix}.tif")
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    written = sorted(p.name for p in (tmp_path / "cluster").iterdir())
    assert written == sorted([p.name for p in (tmp_path / "alone").iterdir()] + ["big.ome.zarr"])
    # The zarr input ran as block tasks into OME-Zarr: its labels are one process's.
    one = explain(big[:], load_model(checkpoint, device="cpu"), layers=("up4",), tile_size=48)
    labels = zarr.open_array(tmp_path / "cluster" / "big.ome.zarr" / "labels" / "classes" / "0", mode="r")
    np.testing.assert_array_equal(labels[:], one.labels)


# Grad-CAM++ needs pass 1's global sums in pass 2; HiResCAM's maps come from pass 2 itself.
@pytest.mark.parametrize("method", ["gradcampp", "hirescam"])
def test_one_image_as_block_passes_on_a_cluster_equals_one_process(client, checkpoint, tmp_path, method):
    zarr = pytest.importorskip("zarr")
    from napari_unet_gradcam.cluster_graph import explain_on_cluster

    image = zarr.open_array(tmp_path / "image.zarr", mode="w", shape=(96, 80), chunks=(48, 48), dtype=np.uint16)
    image[:] = (nuclei_2d(5, (96, 80)) * 1000).astype(np.uint16)
    spec = ModelSpec.of(checkpoint, "cpu")
    with preloaded(client, spec):
        res = explain_on_cluster(
            client, image, spec, tmp_path / "out.ome.zarr", method=method, tile_size=48, halo=16, normalize="none"
        )
    one = explain(image, load_model(checkpoint, device="cpu"), method=method, tile_size=48, halo=16, normalize="none")
    np.testing.assert_array_equal(np.asarray(res.labels), one.labels)
    assert list(res.cams) == list(one.cams)
    for key, m in res.cams.items():
        a, b = np.asarray(m).ravel(), one.cams[key].ravel()
        if b.std() > 0:  # a map can be flat (zero) for a class no pixel is predicted as
            assert np.corrcoef(a, b)[0, 1] >= 0.9999, key
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(b.max())))
    assert res.metadata["tile_size"] == 48 and res.metadata["out"].endswith("out.ome.zarr")


class _FailingBelowTheTop:
    """An image whose reads fail away from its top edge, as a file system gone mid-run would."""

    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype

    def __getitem__(self, index):
        if index[0].start:  # the strided sample of the whole image starts at None: it succeeds
            raise OSError("disk gone")
        return self.array[index]


def test_a_failing_block_stops_the_run_and_removes_the_store(client, checkpoint, tmp_path):
    pytest.importorskip("zarr")
    from napari_unet_gradcam.cluster_graph import explain_on_cluster

    spec = ModelSpec.of(checkpoint, "cpu")
    image = _FailingBelowTheTop(nuclei_2d(5, (96, 80)))
    with preloaded(client, spec), pytest.raises(OSError, match="disk gone"):
        explain_on_cluster(client, image, spec, tmp_path / "out.ome.zarr", tile_size=48, halo=16)
    assert not (tmp_path / "out.ome.zarr").exists()


@pytest.mark.slow
def test_cli_on_a_separately_started_scheduler_and_worker(tmp_path, checkpoint):
    """The README's `dask scheduler` / `dask worker` set-up, each its own process, reached over TCP."""
    import json

    tifffile.imwrite(tmp_path / "im.tif", nuclei_2d(4, (96, 112)))
    info = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    worker_cmd = [sys.executable, "-m", "distributed.cli.dask_worker"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": tmp_path}
    scheduler = subprocess.Popen([*dask, "--scheduler-file", str(info), "--port", "0", "--no-dashboard"], **quiet)
    worker = None
    try:
        deadline = time.monotonic() + 120
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        assert address.startswith("tcp://")
        worker = subprocess.Popen(
            [*worker_cmd, address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard"], **quiet
        )
        options = ["--model", str(checkpoint), "--device", "cpu", "--layers", "up4"]
        cmd = [sys.executable, "-m", "napari_unet_gradcam.cli", "explain", "im.tif", *options]
        alone = subprocess.run([*cmd, "--out", "alone"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        remote = subprocess.run(
            [*cmd, "--out", "remote", "--scheduler", address], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        assert alone.returncode == remote.returncode == 0, remote.stderr
        for suffix in ("labels", "maps"):
            a = tifffile.imread(tmp_path / "alone" / f"im_{suffix}.tif")
            b = tifffile.imread(tmp_path / "remote" / f"im_{suffix}.tif")
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)
