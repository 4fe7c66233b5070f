"""The paper's geometry: a 12-layer, 768-wide teacher and a 6-layer student (random weights from a BERT-base
config: the hub's bert-base-uncased is not reachable here), one trial of every method through the real
trainable in a real Ray Tune experiment, on QQP-format rows; the teacher memory has the paper's shape for QQP
(K = 300 centroids of D = 128 x 768 values)."""

from __future__ import annotations

import json
import math

import pytest
from hubserver import standin_glue

from fsd.objectives import OBJECTIVES

pytestmark = pytest.mark.long


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory, minilm_path):
    """A random BERT-base (12 layers, hidden 768, 12 heads, 3072 wide) with bert-base's vocabulary."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("bert-base")
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(num_labels=2)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return str(folder)


def test_every_method_trains_at_the_papers_geometry_with_a_memory_of_the_papers_shape(bert_base, glue_dir,
                                                                                       tmp_path):
    import ray
    from ray import tune

    from fsd.config import DistillConfig
    from fsd.teacher_source import TeacherSource
    from fsd.train import load_inputs
    from fsd.tuning.plan.spec import SearchSpec
    from fsd.tuning.search.services import trainable_for

    data = standin_glue(tmp_path / "glue", glue_dir)
    base = {"task": "qqp", "teacher": bert_base, "student_init": bert_base, "student_layers": 6,
            "data_dir": str(data), "max_train_samples": 300, "max_eval_samples": 32, "batch_size": 32,
            "epochs": 1, "lr": 5e-5, "storage": str(tmp_path / "runs"), "device": "cpu"}
    config = DistillConfig.from_dict({**base, "method": "fsd"})
    inputs = load_inputs(config)
    source = TeacherSource.open(config, inputs.objective, inputs.train, inputs.data_key, inputs.device)
    memory = source.memory()  # fitted once in the driver, as a search does; the trials read it
    assert tuple(memory.shape) == (300, 128 * 768)
    assert math.isfinite(float(memory.abs().sum()))

    spec = SearchSpec(task="qqp", method="fsd", storage=str(tmp_path / "runs"), mlflow_uri="", teacher=bert_base)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        results = tune.Tuner(trainable_for(spec, base), param_space={"method": tune.grid_search(list(OBJECTIVES))},
                             tune_config=tune.TuneConfig(max_concurrent_trials=1),
                             run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="geometry",
                                                       verbose=0)).fit()
    finally:
        ray.shutdown()
    losses = {}
    for r in results:
        assert r.error is None, r.error
        losses[r.config["method"]] = {k: v for k, v in r.metrics.items() if k.startswith("train/") and "loss" in k}
    assert set(losses) == set(OBJECTIVES)
    assert all(math.isfinite(v) for parts in losses.values() for v in parts.values()), json.dumps(losses)
