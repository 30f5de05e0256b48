"""Real image-text datasets for the capstone, read from their published formats.

Nothing here downloads: you fetch the data yourself and point `--data` at it.

- Flickr8k: ``Flickr8k.token.txt`` (lines ``IMAGE.jpg#N<TAB>caption``) and an image folder
  (``Flicker8k_Dataset/``, ``Flickr8k_Dataset/`` or ``Images/``).
- COCO captions: ``captions_*.json`` with ``images`` (``id``, ``file_name``) and
  ``annotations`` (``image_id``, ``caption``), and the image folder.
- VQA v2: the questions JSON (``questions``: ``image_id``, ``question``, ``question_id``),
  the annotations JSON (``annotations``: ``question_id``, ``multiple_choice_answer``) and
  the COCO image folder.

A missing or unreadable image is skipped, counted and reported, never silently dropped;
if no image at all can be read, loading fails with a clear error. `safe_extract` unpacks
a zip or tar archive and refuses any member whose path would land outside the target.
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from mmlm_course.validation import positive_int, require_path


@dataclasses.dataclass
class ImageTextRecord:
    """One image with its texts. ``captions``: list of str; ``qa``: list of (question, answer)."""

    image_path: Path
    captions: list[str] = dataclasses.field(default_factory=list)
    qa: list[tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LoadedImages:
    """Decoded images. ``images``: uint8 (N, size, size, 3); ``records`` aligned with them;
    ``skipped``: (path, reason) for every image that could not be read."""

    images: np.ndarray
    records: list[ImageTextRecord]
    skipped: list[tuple[str, str]]

    def report(self) -> str:
        """One line for the logs: how many images were read and skipped, and why."""
        line = f"read {len(self.records)} images, skipped {len(self.skipped)}"
        if self.skipped:
            reasons = {}
            for _, reason in self.skipped:
                reasons[reason.split(":")[0]] = reasons.get(reason.split(":")[0], 0) + 1
            line += " (" + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + ")"
        return line


class DatasetFormatError(ValueError):
    """A dataset file that does not follow its published format."""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Expected the dataset file {path}, but it does not exist.") from None
    except (OSError, ValueError) as error:                # a folder, not UTF-8, not JSON
        raise DatasetFormatError(f"{path} is not valid JSON ({type(error).__name__}: {error}).") from None
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object, got a {type(data).__name__}.")
    return data


def _find_image_folder(root: Path, candidates: tuple[str, ...]) -> Path:
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"No image folder in {root}: expected one of {', '.join(candidates)}.")


def load_flickr8k(root) -> list[ImageTextRecord]:
    """Read Flickr8k from ``root`` (holding ``Flickr8k.token.txt`` and the image folder)."""
    root = Path(root)
    token_file = root / "Flickr8k.token.txt"
    if not token_file.exists():
        raise FileNotFoundError(f"Expected {token_file} (the Flickr8k caption file) in {root}.")
    images = _find_image_folder(root, ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images"))
    records: dict[str, ImageTextRecord] = {}
    try:
        text = token_file.read_text(encoding="utf-8")
    except (OSError, ValueError) as error:                # a folder, not UTF-8
        raise DatasetFormatError(f"{token_file} is not a readable text file "
                                 f"({type(error).__name__}: {error}).") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        name = key.split("#")[0]
        if not sep or "#" not in key or not caption.strip():
            raise DatasetFormatError(f"{token_file}, line {number}: expected 'IMAGE.jpg#N<TAB>caption', got {line[:60]!r}.")
        records.setdefault(name, ImageTextRecord(images / name)).captions.append(caption.strip())
    return list(records.values())


def load_coco_captions(annotations_file, image_folder) -> list[ImageTextRecord]:
    """Read COCO captions: the ``captions_*.json`` file and its image folder."""
    data = _read_json(Path(annotations_file))
    if not {"images", "annotations"} <= set(data):
        raise DatasetFormatError(f"{annotations_file}: expected keys 'images' and 'annotations', got {sorted(data)}.")
    try:
        records = {img["id"]: ImageTextRecord(Path(image_folder) / img["file_name"]) for img in data["images"]}
        for annotation in data["annotations"]:
            record = records.get(annotation["image_id"])
            if record is None:
                raise DatasetFormatError(f"{annotations_file}: caption for unknown image id {annotation['image_id']}.")
            record.captions.append(annotation["caption"].strip())
    except (KeyError, TypeError, AttributeError) as error:
        raise DatasetFormatError(f"{annotations_file}: expected 'images' entries with 'id' and 'file_name' and "
                                 f"'annotations' entries with 'image_id' and a text 'caption' ({type(error).__name__}: "
                                 f"{error}).") from None
    return [r for r in records.values() if r.captions]


def load_vqa(questions_file, annotations_file, image_folder, image_pattern: str = "COCO_{split}_{id:012d}.jpg",
             split: str = "train2014") -> list[ImageTextRecord]:
    """Read VQA v2: questions JSON, annotations JSON and the COCO image folder.

    The answer used is ``multiple_choice_answer`` (the most common human answer).
    """
    questions = _read_json(Path(questions_file)).get("questions")
    annotations = _read_json(Path(annotations_file)).get("annotations")
    if questions is None or annotations is None:
        raise DatasetFormatError("VQA files need a 'questions' list and an 'annotations' list.")
    records: dict[int, ImageTextRecord] = {}
    try:
        answers = {a["question_id"]: a["multiple_choice_answer"] for a in annotations}
        for q in questions:
            if q["question_id"] not in answers:
                raise DatasetFormatError(f"{annotations_file}: no answer for question id {q['question_id']}.")
            path = Path(image_folder) / image_pattern.format(split=split, id=q["image_id"])
            records.setdefault(q["image_id"], ImageTextRecord(path)).qa.append((q["question"],
                                                                                answers[q["question_id"]]))
    except (KeyError, TypeError, ValueError) as error:   # ValueError: an image id that is not a number
        if isinstance(error, DatasetFormatError):
            raise
        raise DatasetFormatError(f"{questions_file}, {annotations_file}: expected questions with 'question_id', "
                                 "'image_id' (a number) and 'question', annotations with 'question_id' and "
                                 f"'multiple_choice_answer' ({type(error).__name__}: {error}).") from None
    return list(records.values())


def read_images(records: list[ImageTextRecord], size: int) -> LoadedImages:
    """Decode and resize every record's image to uint8 (size, size, 3).

    Real datasets contain greyscale, CMYK and 16-bit files: `preprocessing.load_image`
    converts every mode to RGB. Missing or corrupt files are skipped and listed in
    ``skipped``; if none can be read, a ValueError says so.
    """
    from mmlm_course.preprocessing import load_image

    size = positive_int(size, "size")
    given = records
    records = list(records) if hasattr(records, "__iter__") and not isinstance(records, (str, bytes, dict)) else None
    if records is None or not all(isinstance(r, ImageTextRecord) for r in records):
        raise TypeError(f"records must be a list of ImageTextRecord (from load_flickr8k, load_coco_captions or "
                        f"load_vqa), got {type(given).__name__} {given!r:.60}.")
    images, kept, skipped = [], [], []
    for record in records:
        try:
            images.append(load_image(record.image_path, size))          # any mode -> uint8 RGB
            kept.append(record)
        except FileNotFoundError:
            skipped.append((str(record.image_path), "missing: no such file"))
        except ValueError as error:
            skipped.append((str(record.image_path), f"corrupt: {error}"))
    if not images:
        raise ValueError(f"None of the {len(records)} images could be read "
                         f"(first problem: {skipped[0][0]}: {skipped[0][1]})." if skipped else "The dataset has no images.")
    return LoadedImages(np.stack(images).astype(np.uint8), kept, skipped)


MAX_EXTRACT_BYTES = 20 * 2 ** 30     # 20 GiB unpacked: COCO's train2017 images fit, a "zip bomb" does not
MAX_EXTRACT_MEMBERS = 500_000


def safe_extract(archive, target, max_bytes: int = MAX_EXTRACT_BYTES,
                 max_members: int = MAX_EXTRACT_MEMBERS) -> list[Path]:
    """Extract a .zip or .tar(.gz/.bz2/.xz) archive into ``target``; return the extracted paths.

    Every member is checked before anything is written: only regular files and folders
    (links, hard links, devices and pipes are refused, wherever they point), relative names
    that stay inside ``target`` (no absolute path, drive letter or ``..``), and at most
    ``max_members`` members and ``max_bytes`` unpacked bytes in all (a tar is read only up
    to the first member past a limit). The files are then written by this function (never by
    ``extractall``, whose path checks have had holes) into a temporary folder beside
    ``target``, and moved into ``target`` only when all of them are complete and none would
    land outside it through a link already in ``target``; a refusal, a member larger than it
    claims, a corrupt member or a full disk leaves nothing behind. Every failure is a
    ValueError that names the archive.
    """
    import os
    import shutil

    archive, target = require_path(archive, "archive"), require_path(target, "target")
    max_bytes, max_members = positive_int(max_bytes, "max_bytes"), positive_int(max_members, "max_members")
    if not archive.is_file():
        raise ValueError(f"{archive}: no such archive file.")
    limits = (f"the limits are {max_members:,} members and {max_bytes:,} bytes (raise max_members / max_bytes for "
              "an archive you trust)")
    try:
        members, open_member, close = _archive_members(archive, max_members, max_bytes)
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{archive}: not a readable archive ({type(error).__name__}: {error}).") from None
    except _TooLarge as error:
        raise ValueError(f"{archive}: refusing to extract {error}; {limits}.") from None
    created = [p for p in (target, *target.parents) if not p.exists()]     # removed again if extraction fails
    staging, done = None, False
    try:
        bad = [name for name, kind, _ in members if kind not in ("file", "dir")]
        bad += [name for name, kind, _ in members if kind in ("file", "dir") and _safe_parts(name) is None]
        if bad:
            raise ValueError(f"{archive}: refusing to extract links, special files or names outside {target}: "
                             f"{bad[:3]}.")
        total = sum(size for _, _, size in members)
        if len(members) > max_members or total > max_bytes:
            raise ValueError(f"{archive}: refusing to extract {len(members):,} members of {total:,} bytes in all; "
                             f"{limits}.")
        target.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.extracting-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        written, extracted = 0, []
        for index, (name, kind, size) in enumerate(members):
            parts = _safe_parts(name)
            if not parts:
                continue                                     # the archive's root folder itself
            destination = staging.joinpath(*parts)
            extracted.append(target.joinpath(*parts))
            if kind == "dir":
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open_member(index) as source, open(destination, "wb") as sink:
                while chunk := source.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes or sink.tell() + len(chunk) > size:
                        raise ValueError(f"{archive}: member {name!r} unpacks to more than the {size:,} bytes it "
                                         "declares; refusing the archive.")
                    sink.write(chunk)
        root, moves = target.resolve(), sorted(staging.rglob("*"))          # parents before children
        finals = [target / path.relative_to(staging) for path in moves]
        escapes = [f for f in finals if f.is_symlink()] + [folder for folder in {f.parent for f in finals}
                                                           if not folder.resolve().is_relative_to(root)]
        if escapes:
            raise ValueError(f"{archive}: {escapes[0]} would be written through a link in {target} that leads "
                             "outside it; refusing the archive (remove the link first).")
        for path in moves:
            final = target / path.relative_to(staging)
            if path.is_dir():
                final.mkdir(exist_ok=True)
            else:
                os.replace(path, final)
        done = True
        return extracted
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:   # corrupt, disk full
        raise ValueError(f"{archive}: extraction into {target} failed ({type(error).__name__}: {error}); "
                         "nothing was extracted.") from None
    finally:
        close()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in created if not done else ():           # folders this call made, deepest first
            try:
                folder.rmdir()
            except OSError:
                break


class _TooLarge(Exception):
    """An archive past `safe_extract`'s limits, found while its member list is read."""


def _safe_parts(name: str) -> tuple[str, ...] | None:
    """The path parts of a member name that stays inside the target, or None."""
    if not name or "\0" in name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = tuple(part for part in name.replace("\\", "/").split("/") if part not in ("", "."))
    return None if ".." in parts else parts


def _archive_members(archive: Path, max_members: int, max_bytes: int):
    """``(members, open_member, close)``: members are ``(name, kind, size)`` with kind
    "file", "dir" or "other"; ``open_member(i)`` opens member i for reading. A tar is read
    lazily and `_TooLarge` is raised at the first member past ``max_members`` or ``max_bytes``
    (its member list alone could fill the memory)."""
    import stat

    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        infos = zf.infolist()
        members = []
        for info in infos:
            file_type = stat.S_IFMT(info.external_attr >> 16)                   # 0 when no Unix mode is stored
            other = file_type not in (0, stat.S_IFREG, stat.S_IFDIR)            # e.g. a symlink stored by Unix zip
            members.append((info.filename, "other" if other else "dir" if info.is_dir() else "file",
                            0 if info.is_dir() else info.file_size))
        return members, lambda i: zf.open(infos[i]), zf.close
    if tarfile.is_tarfile(archive):
        tar = tarfile.open(archive)
        infos, total = [], 0
        try:
            for member in tar:
                infos.append(member)
                total += member.size if member.isreg() else 0
                if len(infos) > max_members or total > max_bytes:
                    raise _TooLarge(f"at least {len(infos):,} members of {total:,} bytes in all")
        except BaseException:
            tar.close()
            raise
        members = [(m.name, "file" if m.isreg() else "dir" if m.isdir() else "other", m.size if m.isreg() else 0)
                   for m in infos]
        return members, lambda i: tar.extractfile(infos[i]), tar.close
    raise OSError("expected a .zip or .tar archive")


def parse_data_spec(spec: str) -> tuple[str, list[str]]:
    """``"flickr8k:PATH"`` -> ("flickr8k", [PATH]); ``"vqa:Q.json,A.json,IMAGES"`` -> ("vqa", [...]).

    Known kinds: shapeworld (no path), flickr8k:ROOT, coco:CAPTIONS_JSON,IMAGE_DIR,
    vqa:QUESTIONS_JSON,ANNOTATIONS_JSON,IMAGE_DIR.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str such as 'shapeworld' or 'flickr8k:ROOT', got {type(spec).__name__}.")
    kind, _, rest = spec.partition(":")
    expected = {"shapeworld": 0, "flickr8k": 1, "coco": 2, "vqa": 3}
    if kind not in expected:
        raise ValueError(f"Unknown data kind {kind!r} in --data {spec!r}; expected one of "
                         "shapeworld, flickr8k:ROOT, coco:CAPTIONS_JSON,IMAGE_DIR, vqa:QUESTIONS_JSON,ANNOTATIONS_JSON,IMAGE_DIR.")
    parts = [p for p in rest.split(",") if p] if rest else []
    if len(parts) != expected[kind]:
        raise ValueError(f"--data {spec!r}: {kind} needs {expected[kind]} comma-separated path(s), got {len(parts)}.")
    return kind, parts


def load_records(spec: str) -> list[ImageTextRecord]:
    """The records for a non-ShapeWorld ``--data`` spec (see `parse_data_spec`)."""
    kind, parts = parse_data_spec(spec)
    if kind == "flickr8k":
        return load_flickr8k(parts[0])
    if kind == "coco":
        return load_coco_captions(parts[0], parts[1])
    if kind == "vqa":
        return load_vqa(parts[0], parts[1], parts[2])
    raise ValueError("ShapeWorld is generated, not loaded from records.")
