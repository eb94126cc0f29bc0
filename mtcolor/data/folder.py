"""Images in an ImageNet-style folder tree: `root/<wnid or class name>/*.JPEG`.

That is the layout of the extracted ILSVRC2012 train tars (and of the validation set after the usual
re-sorting into class folders). A class subset selects folders by wnid or by name; labels are the
positions in the subset (so `PAPER_WNIDS` gives the paper's labels 0..4). Files are listed once, at
construction, in sorted order; they are read and decoded later, in the pipeline's workers, where a
file that has become unreadable is skipped and counted rather than fatal.

An optional split file restricts (and may label) the files:
- plain text: one `relative/path [class]` per line (`#` comments and blank lines ignored); without a
  class column the class is the file's parent folder;
- `.csv` with a header that has a `file` column and a class column (`wnid`, `class` or `name`, first
  found), e.g. `file,label,wnid,name` as in ../shared/data/imagenet-val-1300/labels.csv. This lets a
  flat folder (ILSVRC2012 validation as extracted) be used with its ground-truth list.

A root without class folders (a colorizer's photos) is read as the images directly in it, all with
label 0 and no class names: a classification task on it is refused at start.

Errors at start, naming what was looked for: a missing root, a class with no folder (or no split
entry), a subset with no images.

`ImageFilesSource` lists every image file under a root, at any depth and without labels: a flat
folder of photos or a whole class tree, the unlabeled colorization data (docs/data.md, "Unlabeled
images").
"""

from __future__ import annotations

import csv
import os

from mtcolor.data import PAPER_CLASSES, DataNotFoundError, unknown_classes_error

# Lower-case extensions read from class folders; other files (.txt, .DS_Store, ...) are not listed.
IMAGE_EXTENSIONS = (
    ".jpeg",
    ".jpg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)

_PAPER_ALIASES = {c.wnid: c.name for c in PAPER_CLASSES} | {c.name: c.wnid for c in PAPER_CLASSES}


def _name_variants(name: str) -> list[str]:
    """A requested class and the spellings a folder for it may have (wnid <-> paper name, _ vs
    space)."""
    variants = [name, name.replace(" ", "_"), name.replace("_", " ")]
    alias = _PAPER_ALIASES.get(name.replace("_", " ")) or _PAPER_ALIASES.get(name)
    if alias:
        variants += [alias, alias.replace(" ", "_")]
    return list(dict.fromkeys(variants))


def _read_split_file(path: str) -> list[tuple[str, str | None]]:
    """(relative path, class or None) entries of a split file."""
    if not os.path.isfile(path):
        raise DataNotFoundError(f"split file {path!r} does not exist")
    entries: list[tuple[str, str | None]] = []
    if path.lower().endswith(".csv"):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if "file" not in fields:
                raise ValueError(f"split file {path!r}: CSV header {fields} has no 'file' column")
            class_column = next((c for c in ("wnid", "class", "name") if c in fields), None)
            for row in reader:
                entries.append((row["file"], row[class_column] if class_column else None))
        return entries
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            entries.append((parts[0], " ".join(parts[1:]) or None))
    return entries


class FolderSource:
    """grain random-access source of {"path", "label", "key"} records from a folder tree.

    A folder of images without class folders (a colorizer's photos) has no labels: its images,
    directly in the root, are records with label 0 and ``class_names`` is empty, so that a
    classification task on it is refused before training (`mtcolor.train.validation`).
    """

    def __init__(
        self,
        root: str,
        *,
        classes: list[str] | tuple[str, ...] | None = None,
        split_file: str | None = None,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        label_classes: list[str] | tuple[str, ...] | None = None,
    ):
        """Args:
        root: the tree (or, with ``split_file``, the folder its paths are relative to).
        classes: a subset, by wnid or name; labels are positions in it. None: every class.
        split_file: restricts (and may label) the files (module docstring).
        extensions: the lower-case file extensions listed.
        label_classes: with ``classes`` None, the class folders (or split-file classes) of
          another split whose labels this one must share, in their order: a validation split
          then labels its images as training did even if it lacks a class, and a class it has
          that training does not is an error (not a silently shifted label).
        """
        if classes is not None and label_classes is not None:
            raise ValueError("give FolderSource either classes or label_classes, not both")
        root = self.root = _existing_directory(
            root,
            "dataset directory {!r} does not exist (expected an ImageNet-style tree root/<wnid or "
            "class name>/*.JPEG; set data.folder.train_root / val_root)",
        )
        extensions = tuple(e.lower() for e in extensions)
        if split_file:
            entries = _read_split_file(split_file)
            # A class column wins; without one the parent folder names the class.
            labelled = [
                (p, c if c is not None else os.path.dirname(p).split(os.sep)[-1] or None)
                for p, c in entries
            ]
            if any(c is None for _, c in labelled):
                bad = next(p for p, c in labelled if c is None)
                raise ValueError(
                    f"split file {split_file!r}: entry {bad!r} has no class column "
                    "and no class folder"
                )
            available = sorted({c for _, c in labelled})
            where = f"split file {split_file!r}"
        else:
            available = sorted(
                e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")
            )
            labelled = None
            where = f"directory {root!r}"
        if not available and labelled is None:
            self._init_without_labels(root, extensions, classes, label_classes)
            return
        if not available:
            raise DataNotFoundError(f"no class folders / entries found in {where}")

        if label_classes is not None:
            requested = list(label_classes)
            unknown = [c for c in available if c not in requested]
            if unknown:
                shown = ", ".join(unknown[:20]) + (
                    f", ... ({len(unknown)} in all)" if len(unknown) > 20 else ""
                )
                raise ValueError(
                    f"{where} has class(es) the training split does not have: {shown}; the "
                    f"labels follow the training split's {len(requested)} classes. Remove those "
                    "images, or name the classes to use in data.classes"
                )
            selected = [c for c in requested if c in available]
        elif classes is None:
            selected = available
            requested = list(available)
        else:
            requested = list(classes)
            selected = []
            missing = []
            for name in requested:
                match = next((v for v in _name_variants(name) if v in available), None)
                (selected if match else missing).append(match or name)
            if missing:
                raise unknown_classes_error(
                    missing,
                    where,
                    available,
                    detail=": looked for a folder/class named by wnid or name "
                    f"(tried {[_name_variants(m) for m in missing]})",
                )
        self.class_names = tuple(requested)
        self.class_dirs = tuple(selected)
        if label_classes is not None:
            label_of = {d: requested.index(d) for d in selected}
        else:
            label_of = {d: i for i, d in enumerate(selected)}

        files: list[tuple[str, int]] = []
        if labelled is not None:
            for rel, cls in labelled:
                if cls in label_of:
                    files.append((os.path.join(root, rel), label_of[cls]))
        else:
            for directory in selected:
                for path in _images_directly_in(os.path.join(root, directory), extensions):
                    files.append((path, label_of[directory]))
        if not files:
            raise DataNotFoundError(
                f"no image files ({', '.join(extensions)}) for classes {list(selected)} in {where}"
            )
        if split_file:
            _check_split_file_root([p for p, _ in files], root, split_file)
        self.paths = tuple(p for p, _ in files)
        self.labels = tuple(label for _, label in files)

    def _init_without_labels(self, root, extensions, classes, label_classes) -> None:
        """The images directly in a root that has no class folders, each with label 0."""
        where = f"directory {root!r}"
        paths = _images_directly_in(root, extensions)
        if not paths:
            raise DataNotFoundError(
                f"no class folders and no image files ({', '.join(extensions)}) found in {where}"
            )
        if classes is not None:
            raise ValueError(
                f"data.classes names {len(classes)} classes but {where} has no class folders, only "
                f"{len(paths)} image files; sort them into class folders, give a split file with a "
                "class column, or set data.classes to None"
            )
        if label_classes:
            raise ValueError(
                f"{where} has no class folders, only {len(paths)} image files, but the training "
                f"split is labelled ({len(label_classes)} classes): sort the validation images "
                "into class folders or give data.folder.val_split_file with a class column"
            )
        self.class_names = ()
        self.class_dirs = ()
        self.paths = tuple(paths)
        self.labels = (0,) * len(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        return {"path": self.paths[index], "label": self.labels[index], "key": self.paths[index]}

    def __repr__(self) -> str:
        return (
            f"FolderSource(root={self.root!r}, classes={list(self.class_dirs)}, "
            f"num_examples={len(self)})"
        )


class ImageFilesSource:
    """grain random-access source of {"path", "label": 0, "key"} records: every image under a root.

    For data without labels (the colorization-only stream): a flat folder, nested folders or an
    ImageNet-style class tree (class folders are just folders here). Files are listed recursively
    once, sorted by relative path; hidden files and folders and other extensions are not listed;
    symlinked folders are followed (each real folder once). With a split file only its entries are
    used (its class column, if any, is ignored).
    """

    def __init__(
        self,
        root: str,
        *,
        split_file: str | None = None,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    ):
        root = self.root = _existing_directory(
            root,
            "image directory {!r} does not exist (expected a folder of images, at any depth; set "
            "data.unlabeled.folder.root)",
        )
        extensions = tuple(e.lower() for e in extensions)
        if split_file:
            paths = [os.path.join(root, rel) for rel, _ in _read_split_file(split_file)]
            if paths:
                _check_split_file_root(paths, root, split_file)
            where = f"split file {split_file!r}"
        else:
            paths = _list_images(root, extensions)
            where = f"directory {root!r} (searched recursively)"
        if not paths:
            raise DataNotFoundError(f"no image files ({', '.join(extensions)}) in {where}")
        self.paths = tuple(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        return {"path": self.paths[index], "label": 0, "key": self.paths[index]}

    def __repr__(self) -> str:
        return f"ImageFilesSource(root={self.root!r}, num_examples={len(self)})"


def _images_directly_in(folder: str, extensions: tuple[str, ...]) -> list[str]:
    """The non-hidden entries of one folder with an image extension, sorted by name (an entry
    that is not a readable file is listed, then skipped and counted when decoded)."""
    return [
        e.path
        for e in sorted(os.scandir(folder), key=lambda e: e.name)
        if not e.name.startswith(".") and e.name.lower().endswith(extensions)
    ]


def _list_images(root: str, extensions: tuple[str, ...]) -> list[str]:
    """Image files under root at any depth, sorted by relative path; each real folder read once."""
    found: list[str] = []
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink cycle or a second link to the same folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if not name.startswith(".") and name.lower().endswith(extensions):
                found.append(os.path.join(folder, name))
    return sorted(found, key=lambda p: os.path.relpath(p, root).split(os.sep))


# Entries of a split file looked up at start: if none exists, its paths are not relative to the
# root given (a wrong root, or the images one folder deeper). Few, so that a listing of a million
# files on a network disk costs nothing; missing files beyond them are skipped and counted later.
_SPLIT_FILE_ENTRIES_CHECKED = 20


def _check_split_file_root(paths: list[str], root: str, split_file: str) -> None:
    """FileNotFoundError naming the split file and the root when none of the first entries of a
    split file exist under the root (rather than every file skipped as unreadable later)."""
    first = paths[:_SPLIT_FILE_ENTRIES_CHECKED]
    if any(os.path.exists(p) for p in first):
        return
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    hint = f"; {root!r} has the folders {folders[:10]}" if folders else ""
    raise DataNotFoundError(
        f"split file {split_file!r}: none of its first {len(first)} files exist under the root "
        f"{root!r} (e.g. {first[0]!r}); its paths are relative to that root (data.folder."
        f"train_root / val_root, data.unlabeled.folder.root){hint}"
    )


def _existing_directory(root, message: str) -> str:
    """`root` with "~" expanded; DataNotFoundError(message.format(root)) if it is not a
    directory."""
    root = os.path.expanduser(str(root))
    if not root or not os.path.isdir(root):
        raise DataNotFoundError(message.format(root))
    return root
