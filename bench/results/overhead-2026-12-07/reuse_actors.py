"""Ray Tune with and without `reuse_actors`: four trivial trials (each imports torch and transformers, as a
trial does) two at a time on a local Ray; the fit's wall time, when each trial's function started (seconds
after the fit began) and how many worker processes ran them.

    python reuse_actors.py on; python reuse_actors.py off   # alternated
"""

import json
import os
import sys
import tempfile
import time

import ray
from ray import tune


def trial(config: dict) -> None:
    started = time.time()
    import torch  # noqa: F401 - what a trial imports
    import transformers  # noqa: F401

    tune.report({"start": started, "pid": os.getpid()})


reuse = sys.argv[1] == "on"
ray.init(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
t0 = time.time()
tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 1}), param_space={"i": tune.grid_search([0, 1, 2, 3])},
                   tune_config=tune.TuneConfig(reuse_actors=reuse,
                                               search_alg=tune.search.BasicVariantGenerator(max_concurrent=2)),
                   run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0))
results = list(tuner.fit())
print(json.dumps({"reuse": reuse, "fit_s": round(time.time() - t0, 1),
                  "starts": sorted(round(r.metrics["start"] - t0, 1) for r in results),
                  "workers": len({r.metrics["pid"] for r in results})}))
