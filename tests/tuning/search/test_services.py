"""Four trials at 0.25 GPU run at the same time on one (pretend) GPU: Ray counts fractions, on CPU too."""

import pytest
import ray
from ray import tune

from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.search.services import trainable_for

pytestmark = pytest.mark.slow


def test_four_quarter_gpu_trials_run_together(tiny_bert, glue_dir, tmp_path):
    spec = SearchSpec(task="rte", method="vkd", storage=str(tmp_path), mlflow_uri="", teacher=tiny_bert,
                      gpus_per_trial=0.25, cpus_per_trial=0.5)
    base = {"task": "rte", "teacher": tiny_bert, "student_layers": 1, "method": "nokd", "epochs": 1,
            "batch_size": 8, "max_train_samples": 16, "max_eval_samples": 8, "data_dir": glue_dir,
            "storage": str(tmp_path), "device": "cpu"}
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        grid = tune.Tuner(trainable_for(spec, base), param_space={"lr": tune.grid_search([1e-4, 2e-4, 3e-4, 4e-4])},
                          run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0)).fit()
    finally:
        ray.shutdown()
    assert not grid.errors
    spans = [(r.metrics["timestamp"] - r.metrics["time_total_s"], r.metrics["timestamp"]) for r in grid]
    assert len(spans) == 4
    # all four were running at once; Ray's `timestamp` is whole seconds (the end), `time_total_s` is not
    assert max(start for start, _ in spans) < min(end for _, end in spans) + 1
