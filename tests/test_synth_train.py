"""Tokenizer, training loop, checkpoints and the model directory, on a tiny graph (seconds)."""

from __future__ import annotations

import json

import pytest
import torch

import mechedit
from mechedit.errors import ConfigError
from mechedit.synth import train as synth_train
from mechedit.synth.corpus import CorpusConfig, build_corpus
from mechedit.synth.kg import KGConfig, generate
from mechedit.synth.pipeline import build_kg_dir, load_kg_dir, train_model_dir
from mechedit.synth.train import TrainConfig, TrainResult, build_tokenizer, train

KG_CFG = KGConfig(seed=1, n_persons=12, n_cities=4, n_countries=2, n_companies=3, n_languages=3, n_sports=3,
                  n_first_names=5)
CORPUS_CFG = CorpusConfig(seed=0, n_mentions=20)
TINY = TrainConfig(seed=0, n_layers=2, d_model=32, n_heads=2, batch_size=16, max_steps=20, eval_every=10,
                   warmup_steps=5, target_recall=1.0)


def test_train_config_validates_and_round_trips():
    assert TrainConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    for bad in ({"d_model": 30, "n_heads": 4}, {"lr": 0.0}, {"target_recall": 1.5}, {"n_layers": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


def test_tokenizer_is_word_level_with_endoftext_first():
    kg = generate(KG_CFG)
    corpus = build_corpus(kg, CORPUS_CFG)
    tok = build_tokenizer(kg, corpus)
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 0
    for e in kg.entities:
        ids = tok(" " + e.name, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(e.name.split()) and 1 not in ids  # one token per word, no <unk>
    for s in corpus.sentences:
        assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]).replace(" ", "") == s.replace(" ", "")


def test_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    kg = generate(KG_CFG)
    corpus = build_corpus(kg, CORPUS_CFG)
    ref, _, ref_result = train(kg, corpus, TINY, progress=False)
    real_step, calls = synth_train._step, {"n": 0}

    def crash_after_15(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 15:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(synth_train, "_step", crash_after_15)
    with pytest.raises(KeyboardInterrupt):
        train(kg, corpus, TINY, checkpoint_dir=tmp_path / "ckpt", progress=False)
    monkeypatch.setattr(synth_train, "_step", real_step)
    assert json.loads((tmp_path / "ckpt" / "step.json").read_text())["step"] == 10
    resumed, _, result = train(kg, corpus, TINY, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert result.steps == ref_result.steps == 20
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_model_directory_opens_with_load_model(tmp_path):
    kg_dir = build_kg_dir(KG_CFG, CORPUS_CFG, tmp_path / "kg")
    result = train_model_dir(kg_dir, TINY, tmp_path / "model", progress=False)
    out = tmp_path / "model"
    assert not (out / "checkpoint").exists()
    assert TrainResult.from_dict(json.loads((out / "metrics.json").read_text())) == result
    assert {r.name for r in result.recalls} == {"train_facts", "train_phrasings", "heldout_paraphrases"}
    model = mechedit.load_model(out)
    info = mechedit.model_info(model)
    assert info.architecture == "gpt2" and info.neutral_token_id == 0 and info.n_layers == 2
    kg, corpus = load_kg_dir(out)
    p = corpus.split("train", canonical_only=True)[0]
    assert mechedit.subject_span(model, p.prompt, p.subject, prefix="neutral")[0] == 1
    assert len(mechedit.target_ids(model, p.prompt, p.target)) == len(p.target.split())
    # a finished directory is not retrained
    again = train_model_dir(kg_dir, TINY, out, progress=False)
    assert again == result


def test_training_leaves_the_callers_thread_count(monkeypatch):
    """train() sets TrainConfig.num_threads for its own run only (a later test's float sums
    depend on the count)."""
    import torch

    from mechedit.synth import train as train_mod

    seen = []
    monkeypatch.setattr(train_mod, "_train", lambda *a: seen.append(torch.get_num_threads()) or "done")
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    kg = generate(KG_CFG)
    assert train_mod.train(kg, build_corpus(kg, CORPUS_CFG), train_mod.TrainConfig(num_threads=want)) == "done"
    assert seen == [want] and torch.get_num_threads() == before
