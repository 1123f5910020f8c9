"""`rvbench transfer`: the procedural set in both formats, bad input, and a real run from locally cached weights.

The run test makes its own "pretrained" weights: it trains vit_tiny briefly from scratch on another draw of the
procedural set (1000-class head, as ImageNet weights have) and stores them where timm's loader looks, in a
temporary Hugging Face cache, so the command finds them exactly as it finds real cached weights. The linear probe
and full fine-tuning then start from features that carry over; that is what makes a linear probe meaningful
offline. It runs as a subprocess because the cache location is fixed when huggingface_hub is imported.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.columns import for_mode
from bench.data.datasets import read_dataset
from bench.data.procedural import CLASSES, write_demo_data
from bench.results import load

# Its module-scoped fixture is costly: one xdist worker makes it once (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("transfer")

ROOT = Path(__file__).resolve().parents[1]
ARCH = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_demo_data(tmp_path_factory.mktemp("demo"), n_train=300, n_test=100, seed=0)


def _images(data) -> list[tuple[int, bytes]]:
    x, y = torch.cat([data.train_x, data.val_x]), torch.cat([data.train_y, data.val_y])
    return sorted((int(label), image.numpy().tobytes()) for image, label in zip(x, y))


def test_demo_set_written_both_ways_loads_to_the_same_images(demo: tuple[Path, Path]) -> None:
    folder, cifar = (read_dataset(path) for path in demo)
    assert folder.format == "imagefolder" and cifar.format == "cifar10"
    assert folder.classes == cifar.classes == CLASSES
    assert cifar.train_x.shape == (300, 3, 32, 32) and cifar.val_x.shape == (100, 3, 32, 32)
    assert cifar.train_x.dtype == folder.train_x.dtype == torch.uint8
    assert _images(folder) == _images(cifar)
    # the ImageFolder split holds out a fifth of every class, the same way every time
    assert torch.bincount(folder.val_y).tolist() == [8] * 10
    assert torch.equal(read_dataset(demo[0]).val_x, folder.val_x)


def _exit(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["transfer", ARCH, "--device", "cpu", *argv])
    return code, capsys.readouterr().err


def test_bad_data_exits_2_with_one_line_and_writes_nothing(demo: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "reports"
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "data_batch_1").write_bytes(b"not a pickle")
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    (shapes / "data_batch_1").write_bytes(pickle.dumps({b"data": torch.zeros(4, 100, dtype=torch.uint8).numpy(),
                                                        b"labels": [0, 1, 0, 1]}))
    no_images = tmp_path / "no-images"
    no_images.mkdir()
    (no_images / "data_batch_1").write_bytes(pickle.dumps({b"data": torch.zeros(0, 3072, dtype=torch.uint8).numpy(),
                                                           b"labels": []}))
    bomb = tmp_path / "bomb"
    _write_images(bomb, {"cat": 2, "dog": 2})
    _write_png_header(bomb / "dog" / "huge.png", 30000, 30000)
    cases = {
        "missing": ([str(tmp_path / "nowhere")], "is not a directory"),
        "empty": ([str(empty)], "has no images"),
        "corrupt": ([str(corrupt)], "data_batch_1 is not a CIFAR-10 batch (UnpicklingError"),
        "shapes": ([str(shapes)], "b'data' is uint8 (4, 100)"),
        "no images": ([str(no_images)], f"{no_images / 'data_batch_1'} holds 0 images"),
        "bomb": ([str(bomb)], f"{bomb / 'dog' / 'huge.png'} is not a readable image (Image size (900000000 pixels)"),
        "classes": ([str(demo[1]), "--num-classes", "5"], "has 10 classes (0-grating000"),
    }
    for name, (data, message) in cases.items():
        code, err = _exit(["--data", *data, "--out", str(out)], capsys)
        assert code == 2, name
        assert message in err and err.count("\n") == 1, (name, err)
    assert not out.exists()


def test_bad_options_exit_2(demo: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    for argv, message in ((["--strategy", "staged", "--epochs", "2"], "staged needs --epochs >= 3"),
                          (["--strategy", "probe"], "unknown strategy 'probe'"),
                          (["--precision", "fp16"], "precision 'fp16' casts the weights, so it cannot train here"),
                          (["--impls", "torchvision"], "torchvision has no vit_tiny_patch16_224"),
                          (["--target-acc", "80"], "--target-acc is a top-1 fraction")):
        code, err = _exit(["--data", str(demo[1]), *argv], capsys)
        assert code == 2 and message in err, (argv, err)


def _write_png_header(file: Path, width: int, height: int) -> None:
    """A real, tiny PNG whose IHDR claims width x height RGB pixels (its one IDAT holds a single row)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    file.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * 16))) + chunk(b"IEND", b""))


def _write_images(folder: Path, counts: dict[str, int], side: int = 8, suffix: str = ".png") -> None:
    """Tiny images, one folder per class; each class a flat colour of its own (its index in `counts`)."""
    from PIL import Image

    for index, (name, n) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (side, side), (40 * index, 10 * i, 0)).save(folder / name / f"{i}{suffix}")


def test_train_and_val_folders_are_the_split(tmp_path: Path) -> None:
    """ImageNet's layout: val/ validates as it is (no fifth held out), classes from train/, images of
    val/ resized to train/'s side."""
    _write_images(tmp_path / "train", {"cat": 3, "dog": 4})
    _write_images(tmp_path / "val", {"cat": 1, "dog": 2}, side=12, suffix=".jpg")
    data = read_dataset(tmp_path)
    assert data.classes == ("cat", "dog") and data.format == "imagefolder"
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 1] and data.val_y.tolist() == [0, 1, 1]
    assert data.train_x.shape == (7, 3, 8, 8) and data.val_x.shape == (3, 3, 8, 8)
    assert data.val_x[1:, 0].eq(40).all()  # dog's red channel, kept through the resize


def test_a_single_root_still_holds_out_a_fifth(tmp_path: Path) -> None:
    _write_images(tmp_path, {"cat": 5, "dog": 10})
    data = read_dataset(tmp_path)
    assert torch.bincount(data.val_y).tolist() == [1, 2] and torch.bincount(data.train_y).tolist() == [4, 8]


def test_val_folders_other_than_train_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    _write_images(data / "train", {"cat": 2, "dog": 2})
    _write_images(data / "val", {"cat": 1, "cow": 1})
    code, err = _exit(["--data", str(data), "--out", str(tmp_path / "reports")], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "val/ must hold the class folders of train/; missing in val/: dog; only in val/: cow" in err
    assert not (tmp_path / "reports").exists()


PRETRAIN = r"""
import sys
from pathlib import Path
import safetensors.torch, timm, torch
from bench.config.precision import numerics, plan_for
from bench.data.datasets import ImageSet
from bench.data.procedural import CLASSES, make_images
from bench.execute.transfer import TransferRun, prepare, random_weights

x, y = make_images(500, seed=1)  # another draw than the set the command trains on
data = ImageSet(x, y, x[:0], y[:0], CLASSES, "procedural")
run = TransferRun("vit_tiny_patch16_224", "timm", "scratch", 8, 32, 32, "fp32", "cpu", seed=1, num_classes=1000,
                  lr=1e-3)
plan = plan_for("fp32")
with numerics(plan, torch.device("cpu")):
    trainer, schedule = prepare(run, random_weights(run.arch, 32, 1), plan)
    generator = torch.Generator().manual_seed(1)
    for epoch in range(schedule.epochs):
        schedule.apply(trainer.model, epoch)
        for _ in trainer.train_epoch(data.train_x, data.train_y, 32, generator):
            pass
repo_id = timm.models.get_pretrained_cfg(run.arch).hf_hub_id
snapshot = Path(sys.argv[1]) / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots" / ("0" * 40)
snapshot.mkdir(parents=True)
(snapshot.parents[1] / "refs").mkdir()
(snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
safetensors.torch.save_file(trainer.model.state_dict(), snapshot / "model.safetensors")
"""


@pytest.fixture(scope="module")
def transfer_run(demo: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("caches")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TORCH_HOME"))}
    env.update(HF_HOME=str(home), TORCH_HOME=str(home / "torch"), PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", PRETRAIN, str(home)], env=env, check=True, timeout=400)
    out = tmp_path_factory.mktemp("reports")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "transfer", ARCH, "--data", str(demo[1]), "--impls", "rv",
         "--strategy", "linear,full", "--epochs", "2", "--image-size", "32", "--batch-size", "32", "--device", "cpu",
         "--target-acc", "0.3", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=400, check=True)
    return out / "latest", done.stdout


def test_linear_probe_and_fine_tuning_beat_chance_from_cached_weights(transfer_run: tuple[Path, str]) -> None:
    run_dir, stdout = transfer_run
    df = load(run_dir)
    assert set(df["mode"]) == {"transfer"} and set(df["status"]) == {"ok"}
    runs = df[df["record"] == "run"]
    assert len(runs) == 2 and set(runs["weights"]) == {"timm timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"}
    for _, run in runs.iterrows():
        assert run["val_top1"] >= 0.3, (run["impl"], run["strategy"], run["val_top1"])  # chance: 0.1
        assert run["time_to_target_s"] > 0
    epochs = df[df["record"] == "epoch"]
    assert len(epochs) == 4 and (epochs["images_per_s"] > 0).all() and epochs["mem_note"].str.contains("RSS").all()
    assert set(epochs[epochs["strategy"] == "linear"]["trained_groups"]) == {"head"}
    assert "no pretrained weights" not in stdout and "rv  " in stdout
    carried = {c for c in df.columns if df[c].notna().any()}
    assert carried <= set(for_mode("transfer")), carried - set(for_mode("transfer"))  # as bench.columns declares


@pytest.mark.parametrize("argv, says", [
    (["compare", "{run}", "{run}"], "{run} is an `rvbench transfer` run; compare compares `rvbench run` sweeps"),
    (["run", "--resume", "{run}"], "{run} was made by `rvbench transfer`, which has no --resume"),
], ids=["compare", "resume"])
def test_compare_and_resume_refuse_a_transfer_run_naming_its_command(
        transfer_run: tuple[Path, str], capsys: pytest.CaptureFixture, argv: list[str], says: str) -> None:
    """Compare would pool strategies and epochs into one configuration (and it keeps no raw step times)."""
    run_dir, _ = transfer_run
    files = sorted(run_dir.resolve().rglob("*"))
    assert main([a.format(run=run_dir) for a in argv]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert says.format(run=run_dir) in line and sorted(run_dir.resolve().rglob("*")) == files


def test_report_shows_accuracy_vs_time(transfer_run: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    run_dir, _ = transfer_run
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "index.html").read_text()
    section = html.split('<section id="transfer">')[1].split("</section>")[0]
    assert 'data-plot="transfer_accuracy"' in section
    assert section.count("<tr>") == 1 + 2 and "timm/vit_tiny_patch16_224" in section
    # A transfer-only run shows its own section, not the sweep's (empty) ones.
    assert '<section id="summary">' not in html and '<section id="flops">' not in html

