import pytest
import torch

from fsd.models import build_student, load_teacher, run_model


def test_student_takes_the_first_k_pretrained_layers(tiny_bert):
    teacher = load_teacher(tiny_bert, 2)
    student = build_student(tiny_bert, 2, 3)
    assert student.config.num_hidden_layers == 2 and student.config.num_labels == 3
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for name, value in s_sd.items():
        if name.startswith("classifier"):
            continue
        assert torch.equal(value, t_sd[name]), name
    assert not any(".layer.2." in n for n in s_sd)


@pytest.mark.parametrize("k", [0, 5])
def test_student_depth_outside_the_backbone(tiny_bert, k):
    with pytest.raises(ValueError, match="choose --student-layers between 1 and 4"):
        build_student(tiny_bert, k, 2)


def test_teacher_label_count_must_match(tiny_bert, tmp_path):
    load_teacher(tiny_bert, 2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has 2 labels, the task needs 3"):
        load_teacher(str(tmp_path), 3)


def test_penultimate_is_layer_L_minus_1(tiny_bert):
    model = load_teacher(tiny_bert, 2).eval()
    batch = {"input_ids": torch.tensor([[101, 2000, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "token_type_ids": torch.zeros(1, 3, dtype=torch.long)}
    out = run_model(model, batch, hidden=True)
    assert len(out.hidden_states) == 5
    assert torch.equal(out.penultimate, out.hidden_states[3])


def test_student_head_is_fresh_even_from_a_classifier_backbone(tiny_bert):
    teacher = load_teacher(tiny_bert, 2)
    student = build_student(tiny_bert, 2, 2)
    assert not torch.equal(teacher.classifier.weight, student.classifier.weight)
    assert torch.count_nonzero(student.classifier.bias) == 0
