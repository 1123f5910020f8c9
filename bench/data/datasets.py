"""Read an image-classification set once into memory: an ImageFolder directory or CIFAR-10 python batches.

Both formats decode to the same `ImageSet`: uint8 images N x 3 x H x W and int64 labels, split into train and
validation. A CIFAR directory's test_batch is its validation set, and so is the val/ folder of an ImageFolder root
that holds train/ and val/ (ImageNet's layout, class folders in each); a single ImageFolder root gets a fixed,
stratified split that holds out VAL_FRACTION of every class (the same split whatever --seed says, so seeds compare
on one validation set).
Anything that is not a readable set of at least two classes is a UsageError naming the file and the problem.
The writers produce the same formats (the procedural demo set is written both ways).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.errors import UsageError

CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_META = "batches.meta"
CIFAR_SIDE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm")
VAL_FRACTION = 0.2
# The two folders of a root split as ImageNet is: each holds one folder of images per class.
TRAIN_DIR, VAL_DIR = "train", "val"
SPLIT_SEED = 0


@dataclass(frozen=True)
class ImageSet:
    """A decoded image-classification set: uint8 images N x 3 x H x W, int64 labels in [0, len(classes))."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]
    format: str  # "imagefolder" or "cifar10"

    def to(self, device: str) -> ImageSet:
        """The same set with its tensors on `device`."""
        move = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return ImageSet(**move, classes=self.classes, format=self.format)


def read_dataset(path: Path) -> ImageSet:
    """Decode the set at `path`: CIFAR-10 batches when it holds data_batch_* files, train/ and val/ ImageFolders
    when it holds both folders, else one ImageFolder. A directory or file that cannot be read (no permission, a
    failing disk) is a UsageError naming it."""
    try:
        return _read(path)
    except OSError as exc:
        raise UsageError(f"--data: cannot read {exc.filename or path} ({exc.strerror or exc})") from None


def _read(path: Path) -> ImageSet:
    """read_dataset's choice of format; listing the directory first makes an unreadable one fail by its name."""
    if not path.is_dir():
        raise UsageError(f"--data {path} is not a directory; give an ImageFolder or a cifar-10-batches-py directory")
    if not set(CIFAR_TRAIN).isdisjoint(os.listdir(path)):
        return _read_cifar(path)
    if (path / TRAIN_DIR).is_dir() and (path / VAL_DIR).is_dir():
        return _read_split_folders(path)
    return _read_image_folder(path)


def _split(x: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices: VAL_FRACTION of each class (at least one image) held out, drawn with SPLIT_SEED."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    val = []
    for c in range(n_classes):
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        val.append(members[: max(1, round(len(members) * VAL_FRACTION))])
    is_val = torch.zeros(len(y), dtype=torch.bool)
    is_val[torch.cat(val)] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def _checked(path: Path, x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...], fmt: str,
             val: tuple[torch.Tensor, torch.Tensor] | None = None) -> ImageSet:
    if len(classes) < 2:
        raise UsageError(f"--data {path} has {len(classes)} class(es); classification needs at least 2")
    if val is None:
        counts = torch.bincount(y, minlength=len(classes))
        if int(counts.min()) < 2:
            raise UsageError(f"--data {path}: class {classes[int(counts.argmin())]!r} has {int(counts.min())} "
                             "image(s); a train/validation split needs at least 2 per class")
        train, held = _split(x, y, len(classes))
        return ImageSet(x[train], y[train], x[held], y[held], classes, fmt)
    return ImageSet(x, y, val[0], val[1], classes, fmt)


def _read_cifar_batch(file: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch: b'data' uint8 N x 3072 (channel-major 32 x 32), b'labels' N ints."""
    try:
        with open(file, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 - unpickling a damaged file raises almost any type
        raise UsageError(f"--data: {file} is not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * CIFAR_SIDE**2 or labels.shape != (len(data),):
        raise UsageError(f"--data: {file} is not a CIFAR-10 batch: b'data' is {data.dtype} {data.shape}, "
                         f"b'labels' {labels.shape}; expected uint8 N x {3 * CIFAR_SIDE**2} and N labels")
    if not len(data):
        raise UsageError(f"--data: {file} holds 0 images; a CIFAR-10 batch holds at least one")
    x = torch.from_numpy(data.copy()).view(-1, 3, CIFAR_SIDE, CIFAR_SIDE)
    return x, torch.from_numpy(labels)


def _read_cifar(path: Path) -> ImageSet:
    """CIFAR-10 python batches: data_batch_1..5 (those present) train, test_batch validates, batches.meta names."""
    parts = [_read_cifar_batch(path / name) for name in CIFAR_TRAIN if (path / name).exists()]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test = _read_cifar_batch(path / CIFAR_TEST) if (path / CIFAR_TEST).exists() else None
    n_classes = int(max(y.max(), test[1].max() if test else 0)) + 1
    classes = tuple(str(i) for i in range(n_classes))
    if (path / CIFAR_META).exists():
        try:
            with open(path / CIFAR_META, "rb") as fh:
                names = pickle.load(fh, encoding="bytes")[b"label_names"]
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        except Exception as exc:  # noqa: BLE001 - as for the batches
            raise UsageError(f"--data: {path / CIFAR_META} is damaged ({type(exc).__name__}: {exc})") from None
    labels = torch.cat([y, test[1]]) if test else y
    if int(labels.min()) < 0 or int(labels.max()) >= len(classes):
        raise UsageError(f"--data {path}: labels run {int(labels.min())}..{int(labels.max())} but "
                         f"{CIFAR_META} names {len(classes)} classes")
    return _checked(path, x, y, classes, "cifar10", test)


def _decode(file: Path, side: int | None) -> torch.Tensor:
    """One image as uint8 3 x S x S: RGB, the shorter side resized to S (the first image's) and center-cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image = image.convert("RGB")
    # DecompressionBombError: a header that claims more pixels than PIL decodes (2 x Image.MAX_IMAGE_PIXELS)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise UsageError(f"--data: {file} is not a readable image ({exc})") from None
    side = side or min(image.size)
    if image.size != (side, side):
        scale = side / min(image.size)
        w, h = max(side, round(image.width * scale)), max(side, round(image.height * scale))
        image = image.resize((w, h), Image.BILINEAR)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _class_folders(path: Path) -> tuple[str, ...]:
    """An ImageFolder's classes: its subdirectories' names, sorted (their order is the labels)."""
    return tuple(sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")))


def _decode_folder(path: Path, classes: tuple[str, ...], side: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the ImageFolder at `path`, decoded at `side` (None: the first image's)."""
    files = [(f, label) for label, c in enumerate(classes)
             for f in sorted((path / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UsageError(f"--data {path} has no images: expected an ImageFolder (one subdirectory of "
                         f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files per class), {TRAIN_DIR}/ and {VAL_DIR}/ "
                         "folders of those, or CIFAR-10 data_batch_* files")
    empty = [c for label, c in enumerate(classes) if not any(lab == label for _, lab in files)]
    if empty:
        raise UsageError(f"--data {path}: class folder(s) {', '.join(empty)} hold no images")
    first = _decode(files[0][0], side)
    x = torch.stack([first] + [_decode(f, first.shape[-1]) for f, _ in files[1:]])
    return x, torch.tensor([label for _, label in files], dtype=torch.int64)


def _read_image_folder(path: Path) -> ImageSet:
    """ImageFolder: one subdirectory per class, images inside; VAL_FRACTION of each class validates."""
    classes = _class_folders(path)
    return _checked(path, *_decode_folder(path, classes, None), classes, "imagefolder")


def _read_split_folders(path: Path) -> ImageSet:
    """train/ and val/ ImageFolders with the same class folders: train/ trains, val/ validates (its images at
    train/'s side)."""
    classes = _class_folders(path / TRAIN_DIR)
    val_classes = _class_folders(path / VAL_DIR)
    if val_classes != classes:
        missing = [c for c in classes if c not in val_classes]
        extra = [c for c in val_classes if c not in classes]
        raise UsageError(f"--data {path}: {VAL_DIR}/ must hold the class folders of {TRAIN_DIR}/; "
                         + "; ".join(f"{where} {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
                                     for where, names in ((f"missing in {VAL_DIR}/:", missing),
                                                          (f"only in {VAL_DIR}/:", extra)) if names))
    x, y = _decode_folder(path / TRAIN_DIR, classes, None)
    return _checked(path, x, y, classes, "imagefolder", _decode_folder(path / VAL_DIR, classes, x.shape[-1]))


def write_image_folder(path: Path, x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...]) -> None:
    """Write uint8 images N x 3 x H x W as PNGs in an ImageFolder: path/<class>/<index>.png."""
    from PIL import Image

    for c in classes:
        (path / c).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(x, y.tolist())):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path / classes[label] / f"{i:06d}.png")


def write_cifar_batches(path: Path, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                        classes: tuple[str, ...]) -> None:
    """Write 32 x 32 uint8 images as CIFAR-10 python batches: the train set over data_batch_1..5, test_batch,
    batches.meta."""
    path.mkdir(parents=True, exist_ok=True)

    def dump(name: str, content: dict) -> None:
        with open(path / name, "wb") as fh:
            pickle.dump(content, fh)

    x, y = train
    for i, chunk in enumerate(torch.arange(len(x)).chunk(len(CIFAR_TRAIN))):
        dump(CIFAR_TRAIN[i], {b"data": x[chunk].reshape(len(chunk), -1).numpy(), b"labels": y[chunk].tolist()})
    dump(CIFAR_TEST, {b"data": test[0].reshape(len(test[0]), -1).numpy(), b"labels": test[1].tolist()})
    dump(CIFAR_META, {b"label_names": [c.encode() for c in classes]})
