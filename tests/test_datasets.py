"""The readers on the real GLUE files: row counts as the data README states them."""

import pytest

from messi import MessiError
from messi.datasets import find_data_dir, get_task, read_split

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


# first two data rows of each dev file, read by hand with `head` (text_a, text_b, label id)
HAND = {
    "cola": [("The sailors rode the breeze clear of the rocks.", None, 1),
             ("The weights made the rope stretch over the pulley.", None, 1)],
    "sst2": [("it 's a charming and often affecting journey . ", None, 1),
             ("unflinchingly bleak and desperate ", None, 0)],
    "mrpc": [("He said the foodservice pie business doesn't fit the company's long-term growth strategy.",
              '"The foodservice pie business does not fit our long-term growth strategy.', 1),
             ("Magnarelli said Racicot hated the Iraqi regime and looked forward to using his long years of "
              "training in the war.", 'His wife said he was "100 percent behind George Bush" and looked forward '
              "to using his years of training in the war.", 0)],
    "stsb": [("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0),
             ("A young child is riding a horse.", "A child is riding a horse.", 4.75)],
    "rte": [("Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according "
             "to the Christopher Reeve Foundation.", "Christopher Reeve had an accident.", 1),
            ("Yet, we now are discovering that antibiotics are losing their effectiveness against illness. "
             "Disease-causing bacteria are mutating faster than we can come up with new antibiotics to fight the "
             "new variations.", "Bacteria is winning the war against antibiotics.", 0)],
    "wnli": [("The drain is clogged with hair. It has to be cleaned.", "The hair has to be cleaned.", 0),
             ("Jane knocked on Susan's door but she did not answer.", "Susan did not answer.", 1)],
    "qnli": [("What came into force after the new constitution was herald?",
              "As of that day, the new constitution heralding the Second Republic came into force.", 0),
             ("What is the first major city in the stream of the Rhine?",
              "The most important tributaries in this area are the Ill below of Strasbourg, the Neckar in Mannheim "
              "and the Main across from Mainz.", 1)],
}


@pytest.mark.parametrize("task", sorted(HAND))
def test_columns_and_label_ids_match_rows_read_by_hand(task):
    rows = read_split(task, "dev")[:2]
    assert [(r.text_a, r.text_b, r.label) for r in rows] == HAND[task]


def test_the_default_glue_folder_is_found_beside_the_repository_from_any_folder(tmp_path, monkeypatch):
    from pathlib import Path

    from messi.datasets import ENV_VAR, find_data_dir

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)  # not the repository: the package's own location must lead there
    assert find_data_dir() == Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
