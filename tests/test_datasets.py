"""Real-dataset loaders on tiny fake copies in the published formats, and safe extraction."""

import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from mmlm_course import datasets


def _image(path, mode="RGB", size=(12, 9)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)


@pytest.fixture
def flickr(tmp_path):
    root = tmp_path / "flickr8k"
    for name in ("a.jpg", "b.jpg"):
        _image(root / "Flicker8k_Dataset" / name)
    _image(root / "Flicker8k_Dataset" / "gray.jpg", mode="L")
    (root / "Flicker8k_Dataset" / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    lines = ["a.jpg#0\tA dog runs .", "a.jpg#1\tA brown dog running", "b.jpg#0\tTwo kids play",
             "gray.jpg#0\tA gray photo", "corrupt.jpg#0\tBroken", "missing.jpg#0\tNo file"]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    return root


def test_flickr8k_reads_captions_and_reports_bad_images(flickr):
    records = datasets.load_flickr8k(flickr)
    assert [r.image_path.name for r in records] == ["a.jpg", "b.jpg", "gray.jpg", "corrupt.jpg", "missing.jpg"]
    assert records[0].captions == ["A dog runs .", "A brown dog running"]
    loaded = datasets.read_images(records, size=8)
    assert loaded.images.shape == (3, 8, 8, 3) and loaded.images.dtype == np.uint8
    assert [r.image_path.name for r in loaded.records] == ["a.jpg", "b.jpg", "gray.jpg"]
    assert sorted(reason.split(":")[0] for _, reason in loaded.skipped) == ["corrupt", "missing"]
    assert loaded.report() == "read 3 images, skipped 2 (1 corrupt, 1 missing)"


def test_no_readable_image_fails_clearly(flickr):
    records = [r for r in datasets.load_flickr8k(flickr) if r.image_path.name in ("corrupt.jpg", "missing.jpg")]
    with pytest.raises(ValueError, match="None of the 2 images could be read"):
        datasets.read_images(records, size=8)


def test_flickr8k_bad_token_line_names_the_line(flickr):
    (flickr / "Flickr8k.token.txt").write_text("a.jpg#0\tfine\nno tab here\n")
    with pytest.raises(datasets.DatasetFormatError, match="line 2"):
        datasets.load_flickr8k(flickr)


def test_coco_captions(tmp_path):
    _image(tmp_path / "img" / "000000000001.jpg")
    _image(tmp_path / "img" / "000000000002.jpg")
    data = {"images": [{"id": 1, "file_name": "000000000001.jpg"}, {"id": 2, "file_name": "000000000002.jpg"}],
            "annotations": [{"id": 9, "image_id": 1, "caption": "A cat. "}, {"id": 10, "image_id": 1, "caption": "Cat"},
                            {"id": 11, "image_id": 2, "caption": "A bus"}]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(data))
    records = datasets.load_coco_captions(tmp_path / "captions_val2017.json", tmp_path / "img")
    assert [(r.image_path.name, r.captions) for r in records] == [
        ("000000000001.jpg", ["A cat.", "Cat"]), ("000000000002.jpg", ["A bus"])]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(datasets.DatasetFormatError, match="not valid JSON"):
        datasets.load_coco_captions(tmp_path / "bad.json", tmp_path / "img")


def test_vqa_v2(tmp_path):
    _image(tmp_path / "img" / "COCO_train2014_000000000007.jpg")
    questions = {"questions": [{"image_id": 7, "question": "What color is the bus?", "question_id": 70},
                               {"image_id": 7, "question": "Is it raining?", "question_id": 71}]}
    annotations = {"annotations": [
        {"question_id": 70, "image_id": 7, "multiple_choice_answer": "red", "answers": [{"answer": "red"}]},
        {"question_id": 71, "image_id": 7, "multiple_choice_answer": "no", "answers": [{"answer": "no"}]}]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    records = datasets.load_records(f"vqa:{tmp_path / 'q.json'},{tmp_path / 'a.json'},{tmp_path / 'img'}")
    assert len(records) == 1 and records[0].qa == [("What color is the bus?", "red"), ("Is it raining?", "no")]
    assert datasets.read_images(records, 4).images.shape == (1, 4, 4, 3)


@pytest.mark.parametrize("spec,message", [
    ("imagenet:/x", "Unknown data kind 'imagenet'"),
    ("coco:/only/one", "needs 2 comma-separated path"),
])
def test_bad_data_spec(spec, message):
    with pytest.raises(ValueError, match=message):
        datasets.parse_data_spec(spec)


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name in members:
            zf.writestr(name, b"x")


def test_safe_extract_zip(tmp_path):
    _zip(tmp_path / "ok.zip", ["data/a.txt", "data/b.txt"])
    extracted = datasets.safe_extract(tmp_path / "ok.zip", tmp_path / "out")
    assert (tmp_path / "out" / "data" / "a.txt").read_bytes() == b"x" and len(extracted) == 2
    _zip(tmp_path / "evil.zip", ["data/a.txt", "../../escaped.txt"])
    with pytest.raises(ValueError, match="refusing to extract"):
        datasets.safe_extract(tmp_path / "evil.zip", tmp_path / "out2")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out2" / "data").exists()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_safe_extract_tar_refuses_escapes(tmp_path, kind):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo({"dotdot": "../escaped.txt", "absolute": "/tmp/escaped.txt", "symlink": "link"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
            tf.addfile(info)
        else:
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="refusing to extract"):
        datasets.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_safe_extract_rejects_other_files(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="expected a .zip or .tar"):
        datasets.safe_extract(tmp_path / "x.txt", tmp_path / "out")


def _tar(path, members):
    """members: (name, type, size or linkname)."""
    with tarfile.open(path, "w") as tf:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = extra
                tf.addfile(info, io.BytesIO(b"x" * extra))
            else:
                info.linkname = extra if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
                tf.addfile(info)
    return path


@pytest.mark.parametrize("kind,extra", [
    (tarfile.SYMTYPE, "data/a.txt"),            # a link that points inside the target is refused too
    (tarfile.LNKTYPE, "data/a.txt"),
    (tarfile.CHRTYPE, ""),
    (tarfile.FIFOTYPE, ""),
])
def test_safe_extract_refuses_links_and_special_members_before_writing_anything(tmp_path, kind, extra):
    archive = _tar(tmp_path / "a.tar", [("data/a.txt", tarfile.REGTYPE, 1), ("data/odd", kind, extra)])
    with pytest.raises(ValueError, match="refusing to extract links, special files"):
        datasets.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [archive]


def test_safe_extract_refuses_a_zip_symlink(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("data/link")
        info.external_attr = (0o120777 << 16)                       # how Unix zip stores a symlink
        zf.writestr(info, "../../etc/passwd")
    with pytest.raises(ValueError, match="refusing to extract links"):
        datasets.safe_extract(archive, tmp_path / "out")


def test_safe_extract_checks_counts_and_sizes_before_writing(tmp_path):
    archive = _tar(tmp_path / "big.tar", [(f"f{i}.txt", tarfile.REGTYPE, 100) for i in range(5)])
    with pytest.raises(ValueError, match="5 members of 500 bytes"):
        datasets.safe_extract(archive, tmp_path / "out", max_bytes=499)
    with pytest.raises(ValueError, match="the limits are 4 members"):
        datasets.safe_extract(archive, tmp_path / "out", max_members=4)
    assert not (tmp_path / "out").exists()
    extracted = datasets.safe_extract(archive, tmp_path / "out", max_bytes=500)
    assert sorted(p.name for p in extracted) == [f"f{i}.txt" for i in range(5)]
    assert (tmp_path / "out" / "f4.txt").read_bytes() == b"x" * 100


def test_safe_extract_merges_into_an_existing_folder_and_names_a_broken_archive(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("kept")
    _zip(tmp_path / "ok.zip", ["data/a.txt"])
    datasets.safe_extract(tmp_path / "ok.zip", tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "kept" and (tmp_path / "out" / "data" / "a.txt").exists()
    (tmp_path / "cut.zip").write_bytes((tmp_path / "ok.zip").read_bytes()[:-30])
    with pytest.raises(ValueError, match="cut.zip"):
        datasets.safe_extract(tmp_path / "cut.zip", tmp_path / "out2")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]     # no staging folder left


# Issue #16: a spec that is not a str raises a TypeError naming the expected form.
@pytest.mark.parametrize("spec", [None, 5])
def test_parse_data_spec_needs_a_str(spec):
    with pytest.raises(TypeError, match="spec"):
        datasets.parse_data_spec(spec)


# Issue #16, part 2: archives a reviewer's fuzzer tried.
def test_safe_extract_refuses_to_write_through_a_link_already_in_the_target(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "data").symlink_to(tmp_path / "outside")
    archive = _tar(tmp_path / "a.tar", [("data/evil.txt", tarfile.REGTYPE, 1)])
    with pytest.raises(ValueError, match="through a link in"):
        datasets.safe_extract(archive, tmp_path / "out")
    assert list((tmp_path / "outside").iterdir()) == []


def test_safe_extract_stops_reading_a_tar_at_the_first_member_past_a_limit(tmp_path):
    archive = _tar(tmp_path / "many.tar", [(f"f{i}.txt", tarfile.REGTYPE, 1) for i in range(50)])
    with pytest.raises(ValueError, match="at least 11 members of 11 bytes"):
        datasets.safe_extract(archive, tmp_path / "new" / "out", max_members=10)
    assert not (tmp_path / "new").exists()                       # folders it made are removed again


def test_safe_extract_refuses_corrupt_members_and_leaves_nothing(tmp_path):
    with zipfile.ZipFile(tmp_path / "crc.zip", "w") as zf:
        zf.writestr("data/a.txt", b"x" * 1000)
    data = bytearray((tmp_path / "crc.zip").read_bytes())
    data[data.index(b"x" * 1000)] = ord("y")                     # the CRC no longer matches
    (tmp_path / "crc.zip").write_bytes(bytes(data))
    long_name = _tar(tmp_path / "long.tar", [("d/" + "n" * 300, tarfile.REGTYPE, 1)])
    for archive in (tmp_path / "crc.zip", long_name):
        with pytest.raises(ValueError, match="nothing was extracted"):
            datasets.safe_extract(archive, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_safe_extract_and_read_images_check_their_argument_types(tmp_path):
    with pytest.raises(TypeError, match="archive must be a file path"):
        datasets.safe_extract(None, tmp_path / "out")
    for records in ("a.jpg", [None], 5):
        with pytest.raises(TypeError, match="records must be a list of ImageTextRecord"):
            datasets.read_images(records, 8)


@pytest.mark.parametrize("kind, content, message", [
    ("coco", {"images": [{"id": 1}], "annotations": []}, "'id' and 'file_name'"),
    ("coco", {"images": [1, 2], "annotations": []}, "'id' and 'file_name'"),
    ("coco", [], "expected a JSON object"),
    ("vqa", {"questions": [{"question_id": 1, "image_id": "x", "question": "?"}],
             "annotations": [{"question_id": 1, "multiple_choice_answer": "yes"}]}, "'image_id' \\(a number\\)"),
    ("vqa", {"questions": [{"image_id": 1}], "annotations": []}, "'question_id'"),
    ("flickr8k", b"a.jpg#0\t\xff\xfe caption\n", "not a readable text file"),
])
def test_a_malformed_dataset_file_is_one_clear_error(tmp_path, kind, content, message):
    (tmp_path / "Images").mkdir()
    if kind == "flickr8k":
        (tmp_path / "Flickr8k.token.txt").write_bytes(content)
        spec = f"flickr8k:{tmp_path}"
    else:
        (tmp_path / "data.json").write_text(json.dumps(content))
        spec = f"coco:{tmp_path / 'data.json'},{tmp_path / 'Images'}" if kind == "coco" else \
            f"vqa:{tmp_path / 'data.json'},{tmp_path / 'data.json'},{tmp_path / 'Images'}"
    with pytest.raises(datasets.DatasetFormatError, match=message):
        datasets.load_records(spec)
