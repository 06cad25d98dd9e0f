"""Inputs read as the user meant them, and nothing dropped in silence (issue 14, item 4).

Label strings as written (NFC), NA-like strings and 'unlabeled' read as unlabeled with a counted
notice, integral float labels as integers, multi-label refused, one class noticed; every file that
cannot be a sample listed with its reason, one symlink policy for manifests and class folders;
images over Pillow's limit skipped as 'too large' by every backend; --pred-probs rows summing to 1.
"""

from __future__ import annotations

import csv
import io
import os
import string
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from labelkit import artifacts
from labelkit.config import DatasetConfig
from labelkit.dataset import NA_STRINGS, discover
from labelkit.embedders.base import image_size, open_image
from labelkit.errors import BadInputError
from labelkit.pred_probs import SUM_TOLERANCE
from labelkit.pred_probs import normalise_rows as _normalise_rows
from labelkit.stages._common import input_warnings, prepare_samples
from labelkit.workspace import Workspace
from tests.conftest import write_csv

CAFE_NFC = unicodedata.normalize("NFC", "café")
CAFE_NFD = unicodedata.normalize("NFD", "café")


def _png(path: Path, side: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Distinct bytes per file name: identical images in two class folders are one multi-label sample.
    Image.fromarray(np.full((side, side), zlib.crc32(path.name.encode()) % 256, np.uint8)).save(path)
    return path


def _codes(s) -> list[str]:
    return [n["code"] for n in s.notices]


def _notice(s, code: str) -> str:
    return next(n["message"] for n in s.notices if n["code"] == code)


# -- label strings --------------------------------------------------------------------------


def test_na_strings_and_unlabeled_read_as_unlabeled_with_a_counted_notice(tmp_path):
    write_csv(tmp_path, "text,label\na,cat\nb,nan\nc,None\nd,nan\ne,unlabeled\nf,\ng,dog\nh,NA\n")
    s = discover(tmp_path)
    assert s.table["label"].tolist() == ["cat", None, None, None, None, None, "dog", None]
    assert s.classes == ["cat", "dog"] and s.n_labeled == 2
    assert _notice(s, "labels_read_as_unlabeled") == "5 labels written as 'nan' (2), 'None' (1), 'unlabeled' (1), 'NA' (1) read as unlabeled"


def test_empty_cells_and_parquet_nulls_are_unlabeled_without_a_notice(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["x", None, "y", ""]}).to_parquet(tmp_path / "labels.parquet")
    s = discover(tmp_path)
    assert s.table["label"].tolist() == ["x", None, "y", None]
    assert s.notices == []


def test_na_strings_in_parquet_are_noticed_too(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "null", "y"]}).to_parquet(tmp_path / "labels.parquet")
    s = discover(tmp_path)
    assert s.table["label"].tolist() == ["x", None, "y"]
    assert _notice(s, "labels_read_as_unlabeled") == "1 label written as 'null' (1) read as unlabeled"


def test_image_folder_unlabeled_keeps_its_meaning_silently(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "dog" / "b.png")
    _png(tmp_path / "unlabeled" / "c.png")
    s = discover(tmp_path)
    assert s.table["label"].tolist() == ["cat", "dog", None] and s.notices == []


def test_integral_float_labels_read_as_integers_with_a_notice(tmp_path):
    # What pandas writes for an integer label column with gaps: 0.0, 1.0 and empty cells.
    write_csv(tmp_path, "text,label\na,0.0\nb,1.0\nc,\nd,1\n")
    s = discover(tmp_path)
    assert s.table["label"].tolist() == ["0", "1", None, "1"] and s.classes == ["0", "1"]
    assert _notice(s, "float_labels") == "2 labels written as whole-number floats read as integers (e.g. '0.0' read as '0')"


def test_float_parquet_label_column_reads_as_integers(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0.0, np.nan, 2.0]}).to_parquet(tmp_path / "labels.parquet")
    s = discover(tmp_path)
    assert s.table["label"].tolist() == ["0", None, "2"]
    assert "float_labels" in _codes(s)


def test_integer_parquet_label_column_is_silent(tmp_path):
    pd.DataFrame({"text": ["a", "b"], "label": np.array([3, 7], np.int64)}).to_parquet(tmp_path / "labels.parquet")
    s = discover(tmp_path)
    assert s.table["label"].tolist() == ["3", "7"] and s.notices == []


@pytest.mark.parametrize("cells", [["0.5", "1.0"], ["1.0", "cat"], ["1e3", "2.0"]])
def test_non_integral_or_mixed_float_labels_stay_as_written(tmp_path, cells):
    write_csv(tmp_path, "text,label\n" + "".join(f"t{i},{c}\n" for i, c in enumerate(cells)))
    s = discover(tmp_path)
    assert s.table["label"].tolist() == cells
    assert "float_labels" not in _codes(s)


def test_nfc_and_nfd_spellings_merge_into_one_class_with_a_notice(tmp_path):
    write_csv(tmp_path, f"text,label\na,{CAFE_NFC}\nb,{CAFE_NFD}\nc,{CAFE_NFD}\nd,tea\n")
    s = discover(tmp_path)
    assert s.classes == [CAFE_NFC, "tea"]
    assert s.table["label"].tolist() == [CAFE_NFC, CAFE_NFC, CAFE_NFC, "tea"]
    assert _notice(s, "class_spellings_merged").startswith(f"1 class name ({CAFE_NFC!r}) written in two Unicode spellings")
    assert "(2 labels respelled)" in _notice(s, "class_spellings_merged")


def test_one_nfd_spelling_alone_is_normalised_silently(tmp_path):
    write_csv(tmp_path, f"text,label\na,{CAFE_NFD}\nb,tea\n")
    s = discover(tmp_path)
    assert s.classes == [CAFE_NFC, "tea"] and s.notices == []


def test_image_folder_names_are_nfc_but_ids_keep_the_path_on_disk(tmp_path):
    _png(tmp_path / CAFE_NFD / "a.png")
    _png(tmp_path / "tea" / "b.png")
    s = discover(tmp_path)
    assert s.classes == [CAFE_NFC, "tea"]
    assert s.table["id"].tolist()[0] == f"{CAFE_NFD}/a.png"  # the id opens the file


def test_classes_option_is_nfc_too(tmp_path):
    write_csv(tmp_path, f"text,label\na,{CAFE_NFC}\n")
    assert discover(tmp_path, classes=(CAFE_NFD, "tea")).classes == [CAFE_NFC, "tea"]


def test_spaces_around_labels_are_removed_with_a_notice(tmp_path):
    write_csv(tmp_path, 'text,label\na," cat"\nb,cat\nc,dog \n')
    s = discover(tmp_path)
    assert s.table["label"].tolist() == ["cat", "cat", "dog"]
    assert _notice(s, "labels_stripped") == "2 labels had spaces around them, removed (e.g. ' cat' read as 'cat')"


def test_one_class_only_is_noticed(tmp_path):
    write_csv(tmp_path, "text,label\na,cat\nb,cat\nc,\n")
    assert _codes(discover(tmp_path)) == ["one_class"]


def test_multi_label_rows_are_a_multi_label_task_never_unlabeled(tmp_path):
    # issue 16: 3,000 multi-label rows were once read as unlabeled in silence
    write_csv(tmp_path, "text,labels\na,x|y\nb,x\nc,\nd,[]\n")
    s = discover(tmp_path)
    assert s.task == "multi-label" and s.n_labeled == 3
    assert s.table["labels"].tolist() == [["x", "y"], ["x"], None, []]
    assert s.table["label"].tolist() == [None] * 4
    assert s.label_matrix().tolist() == [[1, 1], [1, 0], [-1, -1], [0, 0]]
    with pytest.raises(BadInputError, match="does not support multi-label data yet"):
        s.label_codes()


def test_empty_parts_of_a_label_set_are_dropped_and_only_brackets_write_an_empty_set(tmp_path):
    write_csv(tmp_path, "text,labels\na,x|\nb, | \nc,y|x\nd,[]\ne,NA\n")
    s = discover(tmp_path)
    assert s.table["labels"].tolist() == [["x"], None, ["y", "x"], [], None]
    assert s.label_matrix().tolist() == [[1, 0], [-1, -1], [1, 1], [0, 0], [-1, -1]]
    assert _notice(s, "labels_read_as_unlabeled").startswith("1 label written as 'NA'")


def test_multi_label_list_in_parquet_empty_list_is_no_class_and_null_unlabeled(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c"], "labels": [["x", "y"], [], None]}).to_parquet(tmp_path / "labels.parquet")
    s = discover(tmp_path)
    assert s.task == "multi-label" and s.classes == ["x", "y"]
    assert s.label_matrix().tolist() == [[1, 1], [0, 0], [-1, -1]]


def test_multi_label_row_with_its_label_keeps_the_set(tmp_path):
    write_csv(tmp_path, "text,label,labels\na,x,x|y\nb,y,y\nc,,\n")
    s = discover(tmp_path)
    assert s.task == "multi-label"
    assert s.table["labels"].tolist() == [["x", "y"], ["y"], None]
    assert s.table["label"].tolist() == [None, None, None]


def test_a_label_without_labels_in_a_multi_label_manifest_is_ambiguous(tmp_path):
    write_csv(tmp_path, "text,label,labels\na,,x|y\nb,y,\n")
    with pytest.raises(BadInputError) as e:
        discover(tmp_path)
    assert str(e.value).startswith("labels.csv: row 3 has a 'label' ('y') but no 'labels', while other rows carry several classes")


def test_a_class_twice_in_one_label_set_is_an_error(tmp_path):
    write_csv(tmp_path, "text,labels\na,x|y|x\n")
    with pytest.raises(BadInputError, match="labels.csv: row 2 lists 'x' twice in 'labels'"):
        discover(tmp_path)


def test_one_class_label_sets_stay_a_multi_class_task(tmp_path):
    write_csv(tmp_path, "text,labels\na,x\nb,y\nc,\n")
    s = discover(tmp_path)
    assert s.task == "multi-class" and s.table["label"].tolist() == ["x", "y", None]
    assert s.label_codes().tolist() == [0, 1, -1]


def test_identical_images_in_several_class_folders_are_one_multi_label_sample(tmp_path):
    for rel, value in (("cat/a.png", 10), ("dog/a_copy.png", 10), ("cat/b.png", 20), ("cat/b_again.png", 20),
                       ("dog/c.png", 30), ("unlabeled/u.png", 10)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4), value, np.uint8)).save(tmp_path / rel)
    s = discover(tmp_path)
    assert s.task == "multi-label"
    # a copy inside one class folder stays its own sample; an unlabeled copy stays unlabeled
    assert s.table["id"].tolist() == ["cat/a.png", "cat/b.png", "cat/b_again.png", "dog/c.png", "unlabeled/u.png"]
    assert s.table["labels"].tolist() == [["cat", "dog"], ["cat"], ["cat"], ["dog"], None]
    assert _notice(s, "multi_label_from_folders").startswith(
        "2 images sit with identical bytes in several class folders: read as 1 multi-label sample (first: cat/a.png in cat, dog)")


LABEL_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Co", "Cn")), min_size=1, max_size=20).filter(
    lambda t: t.strip() == t and t not in NA_STRINGS and t.lower() not in ("unlabeled", "unlabelled")
    and not all(c in string.digits + ".+-" for c in t)  # numbers are the float rule's (tested above)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.lists(LABEL_TEXT, min_size=1, max_size=4), quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
def test_label_strings_round_trip_through_csv_as_written_nfc(tmp_path, labels, quoting):
    buf = io.StringIO()
    w = csv.writer(buf, quoting=quoting, lineterminator="\n")
    w.writerow(["text", "label"])
    w.writerows([f"t{i}", lab] for i, lab in enumerate(labels))
    (tmp_path / "labels.csv").write_text(buf.getvalue(), encoding="utf-8")
    s = discover(tmp_path)
    want = [unicodedata.normalize("NFC", lab) for lab in labels]
    assert s.table["label"].tolist() == want
    assert s.classes == sorted(set(want))
    assert not {"labels_read_as_unlabeled", "labels_stripped", "float_labels"} & set(_codes(s))


# -- files: skipped, listed, one symlink policy ----------------------------------------------


def test_dangling_link_and_links_leaving_data_are_skipped_in_an_image_folder(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    _png(data / "cat" / "a.png")
    _png(data / "dog" / "b.png")
    _png(outside / "x.png")
    _png(outside / "more" / "y.png")
    (data / "cat" / "gone.png").symlink_to(tmp_path / "nope.png")
    (data / "cat" / "out.png").symlink_to(outside / "x.png")
    (data / "cat" / "in.png").symlink_to(data / "dog" / "b.png")  # inside DATA: followed
    (data / "cat" / "outdir").symlink_to(outside / "more", target_is_directory=True)
    (data / "bird").symlink_to(outside / "more", target_is_directory=True)  # a whole class folder outside
    s = discover(data)
    # the link inside DATA is followed: dog/b.png's bytes then sit in two class folders, one
    # multi-label sample (issue 16)
    assert s.table["id"].tolist() == ["cat/a.png", "cat/in.png"]
    assert s.table["labels"].tolist() == [["cat"], ["cat", "dog"]]
    assert s.skipped == [("bird/", "link leaves DATA"), ("cat/gone.png", "dangling link"),
                         ("cat/out.png", "link leaves DATA"), ("cat/outdir/", "link leaves DATA")]
    assert _notice(s, "skipped_files").startswith("4 files skipped: 1 dangling link, 3 link leaves DATA (first: bird/ (link leaves DATA)")


def test_the_same_links_in_a_manifest_are_skipped_alike(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    _png(data / "img" / "a.png")
    _png(outside / "x.png")
    (data / "img" / "gone.png").symlink_to(tmp_path / "nope.png")
    (data / "img" / "out.png").symlink_to(outside / "x.png")
    (data / "img" / "in.png").symlink_to(data / "img" / "a.png")
    write_csv(data, "path,label\nimg/a.png,x\nimg/gone.png,x\nimg/out.png,y\nimg/in.png,y\nimg/none.png,y\nimg,y\n")
    s = discover(data)
    assert s.table["id"].tolist() == ["img/a.png", "img/in.png"]
    assert s.table["label"].tolist() == ["x", "y"]
    assert s.skipped == [("img/gone.png", "dangling link"), ("img/out.png", "link leaves DATA"), ("img/none.png", "missing"), ("img", "not a file")]


def test_a_manifest_path_written_to_escape_stays_an_error(tmp_path):
    _png(tmp_path / "x.png")
    write_csv(tmp_path / "data", "path,label\na/../../x.png,y\n")
    with pytest.raises(BadInputError, match=r"row 2 path 'a/../../x.png' escapes the dataset folder"):
        discover(tmp_path / "data")


def test_manifest_whose_files_are_all_skipped_is_an_error(tmp_path):
    write_csv(tmp_path, "path,label\na.png,x\nb.png,y\n")
    with pytest.raises(BadInputError, match=r"labels.csv: none of the 2 files can be read \(first: a.png: missing\)"):
        discover(tmp_path)


def test_undecodable_file_names_are_skipped_not_fatal(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "dog" / "b.png")
    bad = os.path.join(os.fsencode(tmp_path / "cat"), b"caf\xe9.png")  # Latin-1, not UTF-8
    with open(bad, "wb") as f:
        f.write((tmp_path / "cat" / "a.png").read_bytes())
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"\xff"))
    s = discover(tmp_path)
    assert s.table["id"].tolist() == ["cat/a.png", "dog/b.png"]
    assert s.skipped == [("cat/caf\\xe9.png", "undecodable name"), ("\\xff", "undecodable name")]


def test_unreadable_files_and_stray_files_are_listed(tmp_path, monkeypatch):
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "cat" / "locked.png")
    _png(tmp_path / "stray.png")
    (tmp_path / "cat" / "notes.txt").write_text("hi")
    (tmp_path / "cat" / ".DS_Store").write_text("hidden: ignored")
    (tmp_path / "README.md").write_text("top-level non-image: not a sample candidate")
    real_access = os.access
    # As root chmod 000 still reads, so permission is denied by stand-in.
    monkeypatch.setattr("labelkit.dataset.os.access", lambda p, mode: not str(p).endswith("locked.png") and real_access(p, mode))
    s = discover(tmp_path)
    assert s.table["id"].tolist() == ["cat/a.png"]
    assert s.skipped == [("cat/locked.png", "unreadable"), ("cat/notes.txt", "not an image"), ("stray.png", "not in a class folder")]


def test_folder_link_loop_is_skipped(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    (tmp_path / "cat" / "again").symlink_to(tmp_path / "cat", target_is_directory=True)
    s = discover(tmp_path)
    assert s.table["id"].tolist() == ["cat/a.png"]
    assert s.skipped == [("cat/again/", "link loop")]


FILE_NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Co", "Cn"), blacklist_characters="/\\"), min_size=1, max_size=12).filter(
    lambda t: not t.startswith(".") and t.strip() == t)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(FILE_NAME, min_size=1, max_size=3, unique_by=lambda n: unicodedata.normalize("NFC", n).lower()))
def test_any_utf8_file_name_round_trips_through_a_manifest_and_a_folder(tmp_path_factory, names):
    data = tmp_path_factory.mktemp("d")
    files = [f"img/{n}.png" for n in names]
    for f in files:
        _png(data / f)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["path", "label"], *([f, "x"] for f in files)])
    (data / "labels.csv").write_text(buf.getvalue(), encoding="utf-8")
    s = discover(data)
    assert s.table["id"].tolist() == files and s.skipped == []
    (data / "labels.csv").unlink()
    s = discover(data)
    assert s.table["id"].tolist() == sorted(files) and s.skipped == []


# -- images too large to decode ----------------------------------------------------------------


def test_an_image_over_pillows_limit_is_too_large_for_every_backend(tmp_path, monkeypatch):
    from labelkit.embedders.pixels import PixelsEmbedder

    big = _png(tmp_path / "big.png", side=40)  # 1,600 pixels: over 2 x 500, Pillow's error limit here
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ValueError, match="^too large: "):
        open_image(str(big), "RGB")
    with pytest.raises(ValueError, match="^too large: "):
        PixelsEmbedder(8).load(str(big))
    assert image_size(str(big)) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert image_size(str(big)) == (40, 40)


def test_efficientnet_load_skips_too_large_alike(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite_pytorch")
    from labelkit.embedders.efficientnet import EfficientNetLite0Embedder

    big = _png(tmp_path / "big.png", side=40)
    emb = EfficientNetLite0Embedder()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ValueError, match="^too large: "):
        emb.load(str(big))


# -- where the notices go ------------------------------------------------------------------


def test_prepare_samples_records_notices_and_skipped_files_in_samples_parquet(tmp_path):
    data = tmp_path / "data"
    _png(data / "cat" / "a.png")
    _png(data / "dog" / "b.png")
    (data / "cat" / "gone.png").symlink_to(tmp_path / "nope.png")
    ws = Workspace.open(data)
    samples, _ = prepare_samples(ws, DatasetConfig())
    meta = artifacts.read_metadata(ws.path(artifacts.SAMPLES))
    assert meta["skipped"] == [["cat/gone.png", "dangling link"]] and meta["n_skipped"] == 1
    assert [n["code"] for n in meta["notices"]] == ["skipped_files"]
    # A change in what was skipped alone rewrites the metadata.
    (data / "cat" / "gone.png").unlink()
    prepare_samples(ws, DatasetConfig())
    meta = artifacts.read_metadata(ws.path(artifacts.SAMPLES))
    assert meta["skipped"] == [] and meta["notices"] == []


def test_input_warnings_put_notices_first_and_keep_a_code_once(tmp_path):
    write_csv(tmp_path, "text,label\na,cat\nb,nan\n")
    s = discover(tmp_path)
    own = [{"code": "one_class", "message": "stage's own", "hint": ""}]
    assert [(w["code"], w["message"]) for w in input_warnings(s, own)] == [
        ("labels_read_as_unlabeled", "1 label written as 'nan' (1) read as unlabeled"), ("one_class", "stage's own")]


# -- --pred-probs rows -----------------------------------------------------------------------


def test_rows_within_tolerance_are_rescaled_exactly():
    p = np.array([[0.7, 0.30001], [0.5, 0.5 - SUM_TOLERANCE / 2]])
    np.testing.assert_allclose(_normalise_rows(p, "f").sum(axis=1), 1.0)


@pytest.mark.parametrize("row, total", [([4.0, 1.0], "5"), ([0.1, 0.1], "0.2"), ([0.5, 0.5 + 2 * SUM_TOLERANCE], "1.002")])
def test_rows_off_by_more_than_the_tolerance_need_renormalize(row, total):
    p = np.array([[0.5, 0.5], row])
    with pytest.raises(BadInputError) as e:
        _normalise_rows(p, "--pred-probs p.npy", ids=np.array(["a", "b"]))
    assert str(e.value) == (f"--pred-probs p.npy: 1 of 2 rows do not sum to 1 within 0.001 (first: id 'b' sums to {total}); "
                            "pass --renormalize to rescale them, or fix the file")
    np.testing.assert_allclose(_normalise_rows(p, "f", renormalize=True), p / p.sum(axis=1, keepdims=True))


def test_zero_negative_and_nan_rows_are_errors_even_with_renormalize():
    for p, msg in [([[0.0, 0.0]], "the row for row 1 sums to 0"), ([[-0.5, 1.5]], "must be >= 0"), ([[np.nan, 1.0]], "NaN or infinite")]:
        with pytest.raises(BadInputError, match=msg):
            _normalise_rows(np.array(p), "f", renormalize=True)
