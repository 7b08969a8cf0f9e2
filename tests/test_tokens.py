import pytest

import mechedit
from mechedit.errors import TokenizationError
from mechedit.tokens import Prefix, encode, subject_span, target_ids

PROMPT = "The Eiffel Tower is located in the city of"


def test_no_special_tokens_are_added(any_model):
    tok = any_model.tokenizer
    enc = encode(any_model, PROMPT)
    assert list(enc.ids) == tok(PROMPT, add_special_tokens=False)["input_ids"]
    assert enc.n_prefix == 0
    specials = set(tok.all_special_ids)
    assert not specials & set(enc.ids)


def test_neutral_prefix_is_one_explicit_token(any_model):
    info = mechedit.model_info(any_model)
    plain, pre = encode(any_model, PROMPT), encode(any_model, PROMPT, prefix=Prefix.NEUTRAL)
    assert pre.ids == (info.neutral_token_id, *plain.ids)
    assert pre.tokens[0] == info.neutral_token == "<|endoftext|>"
    assert pre.n_prefix == 1


@pytest.mark.parametrize("subject", ["The Eiffel Tower", "Eiffel Tower", "Eiffel", "city"])
def test_subject_span_covers_exactly_the_subject(any_model, subject):
    tok = any_model.tokenizer
    for prefix in Prefix:
        enc = encode(any_model, PROMPT, prefix=prefix)
        a, b = subject_span(any_model, PROMPT, subject, prefix=prefix)
        inside = tok.decode(list(enc.ids[a:b]))
        assert subject in inside, (inside, subject)
        # one token fewer on either side no longer contains the subject
        assert subject not in tok.decode(list(enc.ids[a + 1:b]))
        assert subject not in tok.decode(list(enc.ids[a:b - 1]))
        if prefix is Prefix.NEUTRAL:
            assert a >= 1  # the subject never sits on the attention-sink position


def test_subject_span_occurrence(tiny_gpt2):
    prompt = "Paris is in France and Paris is big"
    first = subject_span(tiny_gpt2, prompt, "Paris")
    second = subject_span(tiny_gpt2, prompt, "Paris", occurrence=1)
    assert first[0] == 0 and second[0] > first[1]


def test_missing_subject_shows_tokens(any_model):
    with pytest.raises(TokenizationError, match=r"prompt tokens: \["):
        subject_span(any_model, PROMPT, "Colosseum")


@pytest.mark.parametrize("bad", ["", None])
def test_bad_prompt(tiny_gpt2, bad):
    with pytest.raises((TokenizationError, TypeError)):  # TypeError: the test-time type checker
        encode(tiny_gpt2, bad)


def test_target_ids_leading_space(any_model):
    tok = any_model.tokenizer
    prompt = "The capital of France is"
    ids = target_ids(any_model, prompt, " Paris")
    assert target_ids(any_model, prompt, "Paris") == ids  # CounterFact-style target without space
    full = tok(prompt + " Paris", add_special_tokens=False)["input_ids"]
    assert full[-len(ids):] == list(ids)
    assert tok.decode(list(ids)).strip() == "Paris"


def test_multi_token_target(any_model):
    prompt = "The Eiffel Tower is in"
    ids = target_ids(any_model, prompt, " Rome and Berlin")
    assert len(ids) >= 3
    tok = any_model.tokenizer
    full = tok(prompt, add_special_tokens=False)["input_ids"] + list(ids)
    assert tok.decode(full) == prompt + " Rome and Berlin"


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_target(tiny_llama, bad):
    with pytest.raises(TokenizationError, match="non-empty"):
        target_ids(tiny_llama, "The capital of France is", bad)


def test_smollm2_neutral_prefix_keeps_the_fact(smollm2):
    """The tracing default (neutral prefix) does not disturb SmolLM2's knowledge."""
    pred = mechedit.predict(smollm2, "The capital of France is", prefix=Prefix.NEUTRAL, top_k=1)
    assert pred.prompt_tokens[0] == "<|endoftext|>"
    assert pred.tokens[0] == " Paris"
