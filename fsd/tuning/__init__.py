"""The Ray Tune layer: the trainable, the staged search runner, MLflow tracking. Only this package (and
tune_main.py) imports Ray and MLflow."""
