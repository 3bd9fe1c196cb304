"""A folder of image files as a dataset, with optional labels from a CSV or JSON file."""
import csv
import json
from pathlib import Path
from typing import List, Mapping, Optional, Tuple, Union

import torch
from torch.utils.data import Dataset

from captum_global._checks import check_int
from captum_global.errors import InvalidArgumentError
from captum_global.loading.tensors import _check_file

__all__ = ["ImageFiles", "IMAGE_EXTENSIONS"]

PathLike = Union[str, Path]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SHOWN = 8


class ImageFiles(Dataset):
    """The image files of a folder (and its sub-folders) as a dataset, in sorted order.

    Item ``i`` is the image ``[C, H, W]`` in ``[0, 1]`` (RGB for
    ``channels=3``, grey for ``channels=1``), resized to ``size``; or
    ``(image, label)`` when ``labels`` is given.

    Args:
        root: the folder.
        size: ``(H, W)`` every image is resized to (bilinear); default the
            size of the first image (the others are resized to it).
        channels: 3 or 1. 8-bit images of any mode are converted by
            Pillow (an alpha channel is dropped); 16-bit grey images are
            scaled by 1/65535 and float images read as ``[0, 1]``, instead
            of Pillow's conversion, which clips them at 255.
        labels: a CSV file of ``file,label`` rows (an optional header row),
            a JSON file ``{"file": label}``, or a mapping; files are named by
            their path relative to ``root`` with ``/`` separators.

    Attributes:
        names: the relative file names, in item order.
        labels: the labels in item order, or ``None``.

    Examples::

        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from captum_global.loading import ImageFiles
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("b.png", "a.png"):
        ...     Image.new("RGB", (8, 6), (255, 0, 0)).save(root / name)
        >>> files = ImageFiles(root, size=(4, 4), labels={"a.png": 1, "b.png": 0})
        >>> files.names, files[0][0].shape, files[0][0][:, 0, 0].tolist(), files[0][1]
        (['a.png', 'b.png'], torch.Size([3, 4, 4]), [1.0, 0.0, 0.0], 1)
    """

    def __init__(self, root: PathLike, size: Optional[Tuple[int, int]] = None, channels: int = 3,
                 labels: Union[None, PathLike, Mapping[str, int]] = None) -> None:
        from PIL import Image

        root = Path(root)
        if not root.is_dir():
            raise InvalidArgumentError(f"images: no such folder: {str(root)!r}")
        self.root = root
        # hidden files and folders (names starting with '.') are skipped: '.ipynb_checkpoints/' copies,
        # macOS '._name.png' resource forks and '.git/' are not images of the data set
        self.files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not self.files:
            raise InvalidArgumentError(f"images: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {str(root)!r} "
                                       "(hidden files and folders are skipped)")
        self.names = [p.relative_to(root).as_posix() for p in self.files]
        self.channels = check_int(channels, "channels", minimum=1)
        if self.channels not in (1, 3):
            raise InvalidArgumentError(f"channels must be 1 or 3, got {channels}")
        if size is None:
            try:
                with Image.open(self.files[0]) as first:
                    size = _upright_size(first)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise InvalidArgumentError(f"images: cannot read {str(self.files[0])!r}: {error}") from None
        self.size = (check_int(size[0], "size[0]", minimum=1), check_int(size[1], "size[1]", minimum=1))
        self.labels = None if labels is None else _labels_for(self.names, labels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as image:
                array = _unit_array(image, self.channels, self.size)
        except (OSError, ValueError, Image.DecompressionBombError) as error:  # damaged, unsupported, too large
            raise InvalidArgumentError(f"images: cannot read {str(path)!r}: {error}") from None
        tensor = torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1)).permute(2, 0, 1).contiguous()
        return tensor if self.labels is None else (tensor, self.labels[index])


# Single-band modes with more than 8 bits, and the full scale of their values:
# PIL's convert("RGB"/"L") clips them at 255 instead of scaling them.
_WIDE_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def _upright_size(image) -> Tuple[int, int]:
    """``(H, W)`` of ``image`` as shown, after its EXIF orientation (a quarter turn swaps them)."""
    orientation = image.getexif().get(0x0112, 1)
    return (image.width, image.height) if orientation in (5, 6, 7, 8) else (image.height, image.width)


def _unit_array(image, channels: int, size: Tuple[int, int]):
    """``[H, W]`` (grey) or ``[H, W, 3]`` float32 in ``[0, 1]`` at ``size``.

    8-bit images (RGB, RGBA, palette, grey, 1-bit...) are converted by PIL.
    16-bit grey images (``I;16``, and ``I`` as PIL opens 16-bit PNGs) are
    divided by 65535 and float images (``F``) are taken as ``[0, 1]``, both
    clipped, instead of PIL's conversion that clips them at 255.
    """
    import numpy as np
    from PIL import Image, ImageOps

    height, width = size
    image = ImageOps.exif_transpose(image)  # a camera's EXIF orientation: the picture as it is shown
    if image.mode in _WIDE_MODES:
        array = np.asarray(image, dtype=np.float64) / _WIDE_MODES[image.mode]
        grey = Image.fromarray(np.clip(array, 0.0, 1.0).astype(np.float32), mode="F")
        if (grey.height, grey.width) != (height, width):
            grey = grey.resize((width, height), Image.BILINEAR)
        array = np.clip(np.asarray(grey, dtype=np.float32), 0.0, 1.0)
        return np.repeat(array[:, :, None], 3, axis=2) if channels == 3 else array
    image = image.convert("RGB" if channels == 3 else "L")
    if (image.height, image.width) != (height, width):
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def _labels_for(names: List[str], labels: Union[PathLike, Mapping[str, int]]) -> List[int]:
    if not isinstance(labels, Mapping):
        path = _check_file(labels, "labels")
        try:
            text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark from a spreadsheet export
        except UnicodeDecodeError:
            raise InvalidArgumentError(f"labels: {str(path)!r} is not a text file (CSV 'file,label' rows or JSON "
                                       "{file: label}) in UTF-8") from None
        if path.suffix.lower() == ".json":
            try:
                labels = json.loads(text)
            except json.JSONDecodeError as error:
                raise InvalidArgumentError(f"labels: {str(path)!r} is not valid JSON: {error}") from None
            if not isinstance(labels, dict):
                raise InvalidArgumentError(f"labels: {str(path)!r} must hold a JSON object {{file: label}}")
        else:
            rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
            if rows and not _is_number(rows[0][-1]):
                rows = rows[1:]  # a header row ('file,label'); a row with a number such as 1.5 is data
            if any(len(r) != 2 for r in rows):
                raise InvalidArgumentError(f"labels: {str(path)!r} must have rows 'file,label'")
            labels = {}
            for name, value in ((r[0].strip(), r[1].strip()) for r in rows):
                if name in labels and labels[name] != value:
                    raise InvalidArgumentError(f"labels: {str(path)!r} gives {name!r} two labels, "
                                               f"{labels[name]!r} and {value!r}")
                labels[name] = value
    missing = [n for n in names if n not in labels]
    if missing:
        raise InvalidArgumentError(f"labels: no label for {len(missing)} image(s), e.g. {missing[:_SHOWN]}")
    out = []
    for name in names:
        value = labels[name]
        try:
            out.append(check_int(int(value) if isinstance(value, str) else value, f"labels[{name!r}]", minimum=0))
        except ValueError:
            raise InvalidArgumentError(f"labels[{name!r}] must be a class index, got {value!r}") from None
    return out


def _is_number(text: str) -> bool:
    try:
        float(text.strip())
    except ValueError:
        return False
    return True
