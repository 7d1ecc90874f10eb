"""The readers on the real GLUE files: row counts as the data README states them."""

import pytest

from messi import MessiError
from messi.glue.data import find_data_dir, get_task, read_split

COUNTS = {  # (train, dev) rows from ../shared/data/glue/README.md
    "cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408),
    "stsb": (5749, 1500), "rte": (2490, 277), "wnli": (635, 71),
}


@pytest.mark.parametrize("task", sorted(COUNTS))
def test_row_counts_match_the_data_readme(task, recwarn):
    train, dev = read_split(task, "train"), read_split(task, "dev")
    assert (len(train), len(dev)) == COUNTS[task]
    assert not [w for w in recwarn if "cannot parse" in str(w.message)]


def test_labels_and_texts():
    rte = read_split("rte", "dev")
    assert {e.label for e in rte} == {0, 1} and all(e.text_b for e in rte)
    stsb = read_split("stsb", "dev")
    assert all(0.0 <= e.label <= 5.0 for e in stsb) and isinstance(stsb[0].label, float)
    sst = read_split("sst2", "train")
    assert sum(e.label for e in sst) == 37569  # positives, as the README states
    cola = read_split("cola", "dev")
    assert cola[0].text_b is None and cola[0].text_a


def test_qnli_dev_only_and_missing_tasks():
    assert len(read_split("qnli", "dev")) == 5463
    with pytest.raises(MessiError, match="QNLI data is not available.*train.tsv"):
        read_split("qnli", "train")
    with pytest.raises(MessiError, match="MNLI data is not available"):
        read_split("mnli", "train")


def test_bad_row_is_reported_with_file_and_line(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly two\n2\tc\td\tmaybe\n")
    with pytest.warns(UserWarning, match=r"dev.tsv:3: cannot parse"):
        rows = read_split("rte", "dev", data_dir=tmp_path)
    assert len(rows) == 1
    with pytest.raises(MessiError, match=r"dev.tsv:3"):
        read_split("rte", "dev", data_dir=tmp_path, strict=True)


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("MESSI_GLUE_DIR", str(tmp_path))
    assert find_data_dir() == tmp_path
    with pytest.raises(MessiError, match="--data-dir"):
        find_data_dir(tmp_path / "absent")
    with pytest.raises(MessiError, match="unknown GLUE task"):
        get_task("squad")
