"""Find the image/label pairs of a dataset in any of the supported layouts.

Every layout has a ``train`` and a ``test`` split folder under its root. Within
a split folder:

- ``monuseg``: the MoNuSeg 2018 challenge files as downloaded, one of
  ``side-by-side``: ``<stem>.tif`` with ``<stem>.xml`` (the official test set);
  ``official-train``: ``Tissue Images/<stem>.tif`` with ``Annotations/<stem>.xml``
  (the official training download); ``images-labels``: ``images/<stem>.tif``
  with ``labels/<stem>.tif`` instance maps.
- ``kumar``: HoVer-Net's Kumar layout, ``Images/<stem>.tif|png`` with
  ``Labels/<stem>.mat``.
- ``folder``: ``images/<stem>.tif|png`` with ``labels/<stem>.tif|png``
  instance maps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from nudiff.errors import ConfigError, InputDataError

DatasetFormat = Literal["monuseg", "kumar", "folder"]
Split = Literal["train", "test"]
LabelKind = Literal["instance_map", "monuseg_xml", "kumar_mat"]

SPLITS: tuple[Split, ...] = get_args(Split)
FORMATS: tuple[str, ...] = get_args(DatasetFormat)

_TIFF = (".tif", ".tiff")
_TIFF_OR_PNG = (".tif", ".tiff", ".png")


@dataclass(frozen=True)
class SourceItem:
    """One image of a source dataset and the file that holds its nuclei labels."""

    name: str
    split: Split
    image_path: Path
    label_path: Path
    label_kind: LabelKind


@dataclass(frozen=True)
class _Layout:
    """Where images and labels sit inside one split folder."""

    description: str
    image_dir: str  # relative to the split folder; "" = the folder itself
    image_suffixes: tuple[str, ...]
    label_dir: str
    label_suffixes: tuple[str, ...]
    label_kind: LabelKind


_MONUSEG_LAYOUTS = (
    _Layout("<stem>.tif + <stem>.xml side by side (official test set)", "", _TIFF, "", (".xml",), "monuseg_xml"),
    _Layout(
        "'Tissue Images/<stem>.tif' + 'Annotations/<stem>.xml' (official training download)",
        "Tissue Images",
        _TIFF,
        "Annotations",
        (".xml",),
        "monuseg_xml",
    ),
    _Layout("images/<stem>.tif + labels/<stem>.tif instance maps", "images", _TIFF, "labels", _TIFF, "instance_map"),
)
_KUMAR_LAYOUT = _Layout(
    "Images/<stem>.tif|png + Labels/<stem>.mat", "Images", _TIFF_OR_PNG, "Labels", (".mat",), "kumar_mat"
)
_FOLDER_LAYOUT = _Layout(
    "images/<stem>.tif|png + labels/<stem>.tif|png instance maps",
    "images",
    _TIFF_OR_PNG,
    "labels",
    _TIFF_OR_PNG,
    "instance_map",
)


def _files_with_suffix(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    # Hidden files are skipped: editor backups, macOS '._' forks, atomic temporaries.
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )


def _layout_fits(split_dir: Path, layout: _Layout) -> bool:
    image_dir = split_dir / layout.image_dir
    label_dir = split_dir / layout.label_dir
    if layout.image_dir and not image_dir.is_dir():
        return False
    if layout.label_dir and not label_dir.is_dir():
        return False
    if layout.image_dir:
        return True  # named subfolders exist: the layout is meant, even if empty
    return bool(_files_with_suffix(image_dir, layout.image_suffixes))


def _detect_monuseg_layout(split_dir: Path) -> _Layout:
    fits = [layout for layout in _MONUSEG_LAYOUTS if _layout_fits(split_dir, layout)]
    if len(fits) == 1:
        return fits[0]
    accepted = "; ".join(layout.description for layout in _MONUSEG_LAYOUTS)
    if not fits:
        raise InputDataError(f"{split_dir}: no MoNuSeg layout found; accepted layouts: {accepted}")
    found = "; ".join(layout.description for layout in fits)
    raise InputDataError(f"{split_dir}: ambiguous, several MoNuSeg layouts fit: {found}")


def _label_for(image: Path, split_dir: Path, layout: _Layout) -> Path:
    label_dir = split_dir / layout.label_dir
    candidates = [label_dir / f"{image.stem}{suffix}" for suffix in layout.label_suffixes]
    existing = [c for c in candidates if c.is_file()]
    if not existing:
        expected = " or ".join(str(c) for c in candidates)
        raise InputDataError(f"{image}: label file missing; expected {expected}")
    if len(existing) > 1:
        raise InputDataError(f"{image}: several label files match: {[str(e) for e in existing]}")
    return existing[0]


def _absolute(path: Path) -> Path:
    # abspath, not resolve(): keep the user's symlinked paths in the manifest.
    return Path(os.path.abspath(path))


def _split_items(split_dir: Path, split: Split, layout: _Layout) -> list[SourceItem]:
    image_dir = split_dir / layout.image_dir
    if not image_dir.is_dir():
        raise InputDataError(f"{image_dir}: folder not found; expected layout {layout.description}")
    images = _files_with_suffix(image_dir, layout.image_suffixes)
    if not images:
        raise InputDataError(f"{image_dir}: empty split folder, no {'|'.join(layout.image_suffixes)} images")
    stems = [p.stem for p in images]
    duplicated = sorted({s for s in stems if stems.count(s) > 1})
    if duplicated:
        raise InputDataError(f"{image_dir}: several images share the name(s) {duplicated}")
    # a label without its image would otherwise be dropped without a word
    labels = _files_with_suffix(split_dir / layout.label_dir, layout.label_suffixes)
    unpaired = [str(label) for label in labels if label.stem not in set(stems)]
    if unpaired:
        raise InputDataError(
            f"{unpaired[0]}: label file without an image of the same name in {image_dir}"
            + (f" (and {len(unpaired) - 1} more)" if len(unpaired) > 1 else "")
        )
    return [
        SourceItem(
            name=image.stem,
            split=split,
            image_path=_absolute(image),
            label_path=_absolute(_label_for(image, split_dir, layout)),
            label_kind=layout.label_kind,
        )
        for image in images
    ]


def list_source_items(
    fmt: DatasetFormat,
    root: str | os.PathLike,
    *,
    splits: Sequence[Split] = SPLITS,
    config_key: str = "format",
) -> list[SourceItem]:
    """List the image/label pairs of a dataset, split by split.

    Args:
        fmt: the dataset layout, one of ``"monuseg"``, ``"kumar"``, ``"folder"``
            (see the module docstring).
        root: folder holding one subfolder per split.
        splits: the split folders to read, in output order.
        config_key: the configuration key ``fmt`` came from, named in errors.

    Returns:
        Items ordered by split (as in ``splits``), then by file name; absolute
        paths.

    Raises:
        ConfigError: ``fmt`` is not a known format.
        InputDataError: a split folder is missing or empty, fits no accepted
            layout, or an image has no label file.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"{config_key}: unknown dataset format {fmt!r}; accepted: {FORMATS}")
    bad_splits = [s for s in splits if s not in SPLITS]
    if bad_splits or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {splits!r}")
    root = Path(root)
    if not root.is_dir():
        raise InputDataError(f"{root}: dataset folder not found")

    items: list[SourceItem] = []
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise InputDataError(f"{split_dir}: split folder not found")
        if not any(split_dir.iterdir()):
            raise InputDataError(f"{split_dir}: empty split folder")
        if fmt == "monuseg":
            layout = _detect_monuseg_layout(split_dir)
        elif fmt == "kumar":
            layout = _KUMAR_LAYOUT
        else:
            layout = _FOLDER_LAYOUT
        items.extend(_split_items(split_dir, split, layout))
    return items
