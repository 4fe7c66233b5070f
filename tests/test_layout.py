"""The storage folder's layout (fsd/layout.py): every path as the searches have always written it."""

import dataclasses

import pytest

from fsd.layout import LEDGER, LOCK, Layout, root_entries


def test_each_path_of_a_storage_folder():
    layout = Layout("/runs")
    assert str(layout.teacher("rte-abc")) == "/runs/teacher/rte-abc"
    assert str(layout.data_cache) == "/runs/data_cache"
    assert str(layout.cache("rte", "k1")) == "/runs/cache/rte-k1"
    assert str(layout.memory("rte", 64, "k2")) == "/runs/memory/rte-k64-k2.pt"
    assert str(layout.stage("rte", "vkd", "k3")) == "/runs/stages/rte-vkd-k3"
    assert str(layout.search("rte", "fsd")) == "/runs/rte-fsd" and str(layout.compare("rte")) == "/runs/rte-compare"
    assert str(layout.report("rte")) == "/runs/rte-report.html"
    assert layout.mlflow_uri == "sqlite:////runs/mlflow.db"
    assert layout.ledger("rte", "fsd").name == LEDGER and layout.lock("rte", "fsd").name == LOCK
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.root = "/elsewhere"


def test_the_names_a_storage_folder_may_hold():
    names = root_entries(("rte",), ("vkd",))
    assert {"teacher", "stages", "mlflow.db", "mlflow.db-journal", "rte-vkd", "rte-compare", "rte-report.html",
            "rte-report-figures"} <= names
    assert "rte-fsd" not in names
