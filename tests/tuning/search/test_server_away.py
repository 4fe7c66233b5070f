"""An MLflow server that answered the command's checks and is gone by the time the search asks for its
experiment (seconds later): a resumed search goes on with the experiment its ledger names, its records
queued as in any outage; a new search stops with one line. The chaos soak (bench/soak.py) found this
window ending a resumed search with a traceback."""

import pytest
from mlflowserver import Server

from fsd.tuning.plan.ledger import Ledger
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.search.runner import ServerAway, experiment_of


def test_a_resumed_search_goes_on_with_its_experiment_and_a_new_one_stops_with_one_line(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    # As the search sets them (fsd.tuning.search.services): no retries, a bounded wait.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = Server(tmp_path / "server").start()
    try:
        spec = SearchSpec(task="rte", method="pkd", storage=str(tmp_path), mlflow_uri=server.uri, teacher="unused")
        ledger = Ledger(spec.folder)
        ledger.data["experiment_id"] = experiment_of(spec, ledger)  # created while the server answers
        refused = SearchSpec(task="", method="pkd", storage=str(tmp_path), mlflow_uri=server.uri, teacher="unused")
        with pytest.raises(MlflowException):  # a server that answers and refuses is not taken for an outage
            experiment_of(refused, ledger)
    finally:
        server.stop()
    assert experiment_of(spec, ledger) == ledger.data["experiment_id"]
    with pytest.raises(ServerAway, match=f"the MLflow server {server.uri} stopped answering before the search "
                                         "began .*: start it and run the same command again"):
        experiment_of(spec, Ledger(tmp_path / "new"))
