import pytest

from mechedit import EditRequest
from mechedit.errors import ConfigError


@pytest.mark.parametrize("kw, match", [
    (dict(prompt="is located in", subject="X", target_new=" Rome"), "exactly one"),
    (dict(prompt="{} and {}", subject="X", target_new=" Rome"), "exactly one"),
    (dict(prompt="{} is in", subject=" ", target_new=" Rome"), "subject"),
    (dict(prompt="{} is in", subject="X", target_new=""), "target_new"),
    (dict(prompt="{} is in", subject="X", target_new=" Rome", target_true=" "), "target_true"),
])
def test_bad_requests_fail_on_construction(kw, match):
    with pytest.raises(ConfigError, match=match):
        EditRequest(**kw)


def test_validate_against_a_model(tiny_gpt2):
    req = EditRequest("{} is located in the city of", "The Eiffel Tower", " Rome", " Paris")
    assert req.text == "The Eiffel Tower is located in the city of"
    req.validate(tiny_gpt2)
    assert EditRequest.from_dict(req.to_dict()) == req


def test_round_trip_keeps_case_id():
    req = EditRequest("{} plays", "Messi", "tennis", case_id=7)
    assert EditRequest.from_dict(req.to_dict()).case_id == 7
