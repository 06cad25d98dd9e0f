"""Dataset discovery: the three input kinds and every bad input, each a one-line BadInputError."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from labelkit.dataset import discover, parse_classes_option
from labelkit.errors import BadInputError
from tests.conftest import write_csv


def _png(path, value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    # Distinct bytes per file name unless asked: identical images in two class folders are one multi-label sample.
    value = zlib.crc32(path.name.encode()) % 256 if value is None else value
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)


def test_image_folder_labels_from_folder_names(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "dog" / "sub" / "b.png")
    _png(tmp_path / "unlabeled" / "c.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    s = discover(tmp_path)
    assert s.kind == "image"
    assert s.classes == ["cat", "dog"]
    assert s.table["id"].tolist() == ["cat/a.png", "dog/sub/b.png", "unlabeled/c.png"]
    assert s.table["label"].tolist() == ["cat", "dog", None]
    assert s.label_codes().tolist() == [0, 1, -1]


def test_workspace_folder_is_not_a_class(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / ".labelkit" / "x.png")
    assert discover(tmp_path).classes == ["cat"]


def test_manifest_with_text_labels_split_and_ids(tmp_path):
    write_csv(tmp_path, "id,text,label,split\n007,good film,pos,train\n008,bad film,,test\n009,fine,neg,\n")
    s = discover(tmp_path)
    assert s.kind == "text" and s.origin == "labels.csv"
    assert s.table["id"].tolist() == ["007", "008", "009"]
    assert s.table["label"].tolist() == ["pos", None, "neg"]
    assert s.table["split"].tolist() == ["train", "test", ""]
    assert s.classes == ["neg", "pos"]


def test_manifest_multilabel_pipe_separated(tmp_path):
    # A row with several labels makes the manifest multi-label (issue 16): every set in 'labels',
    # 'label' null; a manifest of one-element sets is an ordinary multi-class one.
    write_csv(tmp_path, "text,labels\na,x|y\nb,y\nc,\n")
    s = discover(tmp_path)
    assert s.task == "multi-label" and s.n_labeled == 2
    assert s.table["labels"].tolist() == [["x", "y"], ["y"], None]
    assert s.table["label"].tolist() == [None, None, None]
    write_csv(tmp_path, "text,label,labels\na,x,x\nb,,y\nc,,\n")
    s = discover(tmp_path)
    assert s.task == "multi-class"
    assert s.table["label"].tolist() == ["x", "y", None]
    assert s.notices == []


def test_manifest_vectors_parquet(tmp_path):
    pd.DataFrame({"id": ["a", "b"], "embedding": [[1.0, 0.0], [0.0, 2.0]], "label": ["u", None]}).to_parquet(tmp_path / "labels.parquet")
    s = discover(tmp_path)
    assert s.kind == "vectors"
    np.testing.assert_array_equal(s.vectors.load(), [[1, 0], [0, 2]])


def test_classes_option_adds_classes_without_samples(tmp_path):
    write_csv(tmp_path, "text,label\na,x\nb,\n")
    assert discover(tmp_path, classes=("x", "z")).classes == ["x", "z"]


def test_no_labels_and_no_classes_is_bad_input_for_learning_stages(tmp_path):
    write_csv(tmp_path, "text,label\na,\nb,\n")
    s = discover(tmp_path)
    with pytest.raises(BadInputError, match="prototype needs labels: no sample is labeled"):
        s.require_labels("prototype")


@pytest.mark.parametrize(
    "csv, message",
    [
        ("path,lable\na.png,x\n", "labels.csv: unknown column 'lable'"),
        ("label,split\nx,train\n", "labels.csv: needs a 'path', 'text' or 'embedding' column"),
        ("path,label\n../secret.png,x\n", "labels.csv: row 2 path '../secret.png' escapes the dataset folder"),
        ("path,label\n/etc/passwd,x\n", "labels.csv: row 2 path '/etc/passwd' escapes the dataset folder"),
        ("id,text,label\na,t1,x\na,t2,y\n", "labels.csv: duplicate id 'a' (rows 2 and 3)"),
        ('text,embedding\na,"[1, 2]"\nb,"[1, 2, 3]"\n', "labels.csv: row 3 'embedding' has 3 values, row 2 has 2"),
        ('text,embedding\na,"[1, NaN]"\n', "labels.csv: row 2 'embedding' contains NaN"),
        ('text,embedding\na,"[1, nope]"\n', "labels.csv: row 2 'embedding' is not a list of numbers"),
        ("text,label\n", "labels.csv: the manifest has no rows"),
        ("text,label\n,x\n", "labels.csv: row 2 has an empty 'text'"),
    ],
)
def test_bad_manifests(tmp_path, csv, message):
    write_csv(tmp_path, csv)
    with pytest.raises(BadInputError) as e:
        discover(tmp_path)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(BadInputError, match="no such dataset folder"):
        discover(tmp_path / "nope")
    with pytest.raises(BadInputError, match="the dataset folder is empty"):
        discover(tmp_path)


def test_folder_without_images_or_manifest(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(BadInputError, match="no labels.csv / labels.parquet manifest and no images"):
        discover(tmp_path)


def test_labels_only_manifest_allowed_when_inputs_not_required(tmp_path):
    write_csv(tmp_path, "id,label\na,x\nb,y\n")
    s = discover(tmp_path, require_inputs=False)
    assert s.kind == "labels-only" and s.classes == ["x", "y"]


def test_label_outside_given_classes(tmp_path):
    write_csv(tmp_path, "text,label\na,x\n")
    with pytest.raises(BadInputError, match=r"labels \['x'\] are not among --classes"):
        discover(tmp_path, classes=("y",))


def test_parse_classes_option(tmp_path):
    assert parse_classes_option("a, b,c") == ("a", "b", "c")
    f = tmp_path / "classes.txt"
    f.write_text("cat\ndog\n\n")
    assert parse_classes_option(str(f)) == ("cat", "dog")
    with pytest.raises(BadInputError, match="class names repeat"):
        parse_classes_option("a,a")


# -- the vectorised manifest path (issue 17) --------------------------------------------------


def test_label_notices_count_every_cell_though_each_distinct_cell_is_read_once(tmp_path):
    write_csv(tmp_path, "id,label\n" + "".join(f"r{i},{v}\n" for i, v in enumerate([" cat", "dog", " cat", "nan", " cat", "nan", "dog"])))
    s = discover(tmp_path, require_inputs=False)
    assert s.table["label"].tolist() == ["cat", "dog", "cat", None, "cat", None, "dog"]
    assert s.label_codes().tolist() == [0, 1, 0, -1, 0, -1, 1]
    messages = {n["code"]: n["message"] for n in s.notices}
    assert messages["labels_read_as_unlabeled"] == "2 labels written as 'nan' (2) read as unlabeled"
    assert messages["labels_stripped"] == "3 labels had spaces around them, removed (e.g. ' cat' read as 'cat')"


@pytest.mark.parametrize("csv, message", [
    ("id,label\na,x\nb,y\nc,x\nb,x\n", "labels.csv: duplicate id 'b' (rows 3 and 5)"),
    ("id,label\na,x\n  ,y\n", "labels.csv: row 3 has an empty 'id'"),
    ("path,label\na.png,x\nsub/./../../b.png,y\n", "labels.csv: row 3 path 'sub/./../../b.png' escapes the dataset folder"),
])
def test_vectorised_checks_name_the_first_bad_row(tmp_path, csv, message):
    write_csv(tmp_path, csv)
    _png(tmp_path / "a.png")
    with pytest.raises(BadInputError) as e:
        discover(tmp_path, require_inputs=False)
    assert str(e.value).startswith(message)


def test_manifest_paths_are_normalised_only_where_needed(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "cat" / "b.png")
    write_csv(tmp_path, "path,label\ncat/a.png,cat\n./cat//b.png,cat\n")
    assert discover(tmp_path).table["source"].tolist() == ["cat/a.png", "cat/b.png"]


def test_fingerprint_is_stable_and_changes_with_labels_and_image_files(tmp_path):
    import os

    from labelkit.dataset import samples_fingerprint

    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "dog" / "b.png")
    fp = samples_fingerprint(discover(tmp_path), tmp_path)
    assert samples_fingerprint(discover(tmp_path), tmp_path) == fp
    os.utime(tmp_path / "dog" / "b.png", ns=(1, 1))  # same bytes, new mtime: the size+mtime check sees it
    assert samples_fingerprint(discover(tmp_path), tmp_path) != fp
    s = discover(tmp_path)
    before = s.fingerprint(tmp_path)
    s.table.loc[0, "label"] = "dog"
    assert s.fingerprint(tmp_path) != before


def test_parquet_vectors_are_read_columnar_with_the_same_row_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(vectors):
        col = pa.array(vectors, type=pa.list_(pa.float16()))
        pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(vectors))], "embedding": col}), tmp_path / "labels.parquet")

    write([[1.0, 0.5], [0.25, 2.0], [0.0, -1.0]])
    s = discover(tmp_path)
    assert s.kind == "vectors" and s.vectors.dim == 2 and len(s.vectors) == 3
    assert s.vectors.load().dtype == np.float32
    np.testing.assert_array_equal(s.vectors.load(), [[1.0, 0.5], [0.25, 2.0], [0.0, -1.0]])
    for vectors, message in [
        ([[1.0, 0.5], None, [1.0, 2.0]], "labels.parquet: row 3 has no 'embedding'"),
        ([[1.0, 0.5], [1.0, 2.0], [1.0, 2.0, 3.0]], "labels.parquet: row 4 'embedding' has 3 values, row 2 has 2; vectors must all have one length"),
        ([[1.0, 0.5], [1.0, float("nan")], [1.0]], "labels.parquet: row 3 'embedding' contains NaN or infinite values"),
        ([[1.0, 0.5], []], "labels.parquet: row 3 'embedding' is not a flat list of numbers"),
    ]:
        write(vectors)
        s = discover(tmp_path)  # discovery reads no vector of a Parquet manifest; the stage that needs them does
        with pytest.raises(BadInputError) as e:
            s.vectors.load()
        assert str(e.value) == message


@pytest.mark.parametrize("kind", ["csv", "parquet", "parquet-int-ids", "labels-column", "text"])
def test_issue17_arrow_columns_made_at_discovery_equal_the_table(tmp_path, kind):
    import pyarrow as pa

    from labelkit.dataset import samples_fingerprint

    df = pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "label": ["x", "NA", None, " y", "x"], "split": ["train", "", "test", "", "train"]})
    if kind == "csv":
        write_csv(tmp_path, "id,label\na,x\nb,NA\nc,\nd, y\ne,x\n")
    elif kind == "parquet-int-ids":
        df.assign(id=[10, 11, 12, 13, 14]).drop(columns="split").to_parquet(tmp_path / "labels.parquet")
    elif kind == "labels-column":
        df.assign(labels=["x", None, None, "y", "x"]).to_parquet(tmp_path / "labels.parquet")
    elif kind == "text":
        df.assign(text=["t1", "t2", "t3", "t4", "t5"]).to_parquet(tmp_path / "labels.parquet")
    else:
        df.to_parquet(tmp_path / "labels.parquet")
    s = discover(tmp_path, require_inputs=False)
    assert s.arrow_columns, "discovery made no Arrow columns"
    for name, col in s.arrow_columns.items():
        expected = pa.array(s.table[name].to_numpy(dtype=object), type=pa.large_string(), from_pandas=True)
        assert col.type == pa.large_string() and col.equals(expected), name
    fp = samples_fingerprint(s, tmp_path)
    assert s.label_codes().tolist() == [0, -1, -1, 1, 0]
    s.arrow_columns.clear()  # converted from the table instead: the same fingerprint and codes
    assert samples_fingerprint(s, tmp_path) == fp
    assert s.label_codes().tolist() == [0, -1, -1, 1, 0]


def test_issue17_duplicate_and_blank_ids_are_still_named(tmp_path):
    write_csv(tmp_path, "id,label\na,x\nb,y\na,x\n")
    with pytest.raises(BadInputError, match=r"labels.csv: duplicate id 'a' \(rows 2 and 4\)"):
        discover(tmp_path, require_inputs=False)
    write_csv(tmp_path, "id,label\na,x\n  ,y\n")
    with pytest.raises(BadInputError, match="labels.csv: row 3 has an empty 'id'"):
        discover(tmp_path, require_inputs=False)
