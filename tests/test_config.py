import pytest

from fsd.config import ConfigError, DistillConfig

BASE = {"task": "rte", "teacher": "t"}


def test_defaults_and_round_trip():
    c = DistillConfig.from_dict(BASE)
    assert c.method == "vkd" and c.student_layers == 6 and c.structure_mask
    assert DistillConfig.from_dict(c.to_dict()) == c


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(ConfigError, match="unknown config key 'temprature'; did you mean 'temperature'"):
        DistillConfig.from_dict({**BASE, "temprature": 5})


def test_missing_required_key():
    with pytest.raises(ConfigError, match="missing teacher"):
        DistillConfig.from_dict({"task": "rte"})


@pytest.mark.parametrize("key,value,message", [
    ("lr", 0.0, "lr must be > 0"), ("batch_size", -1, "batch_size must be > 0"), ("epochs", 0, "epochs must be > 0"),
    ("alpha", 1.5, r"alpha must lie in \[0, 1\]"), ("lam", -0.1, r"lam must lie in \[0, 1\]"),
    ("beta", -1.0, "beta must be >= 0"), ("task", "squad", "unknown task"), ("method", "distil", "unknown method"),
    ("epochs", 2.5, "epochs must be int"), ("structure_mask", 1, "structure_mask must be bool"),
    ("lr", "fast", "lr must be float"), ("memory_init", "random", "memory_init must be"),
    ("max_train_samples", 0, "max_train_samples must be > 0"),
])
def test_bad_values_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig.from_dict({**BASE, key: value})


def test_unmasked_structures_need_batches_padded_to_max():
    """Structures over every position (the reference code's) read PAD states at every position only when
    batches are padded to max_seq_len; with per-batch padding they would be PAD states up to each batch's
    length and zeros beyond: refused, and allowed beside the value `PAIRED` names."""
    from fsd.config import PAIRED

    with pytest.raises(ConfigError, match=r"^structure_mask=False .* needs pad_to_max=True"):
        DistillConfig.from_dict({**BASE, "structure_mask": False})
    assert not DistillConfig.from_dict({**BASE, "structure_mask": False, **PAIRED["structure_mask"]}).structure_mask
    assert DistillConfig.from_dict({**BASE, "pad_to_max": True}).pad_to_max  # the other way round is fine


def test_frozen():
    c = DistillConfig.from_dict(BASE)
    with pytest.raises(AttributeError):
        c.alpha = 0.1  # type: ignore[misc]
    assert c.replace(alpha=0.1).alpha == 0.1


def test_the_configurations_method_names_are_the_objectives():
    from fsd.config import METHODS
    from fsd.objectives import OBJECTIVES

    assert METHODS == tuple(OBJECTIVES)


def test_a_partial_config_is_checked_key_by_key_and_returned_as_is():
    from fsd.config import check_partial

    values = {"task": "rte", "lr": 1e-4, "max_train_samples": None}
    assert check_partial(values) is values
    with pytest.raises(ConfigError, match="unknown config key 'lrr'; did you mean 'lr'"):
        check_partial({"lrr": 1e-4})
    with pytest.raises(ConfigError, match="epochs must be int, got '3'"):
        check_partial({"epochs": "3"})
