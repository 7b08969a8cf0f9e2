"""Key statistics against a naive loop; caching and provenance; context templates."""

import json

import pytest
import torch

import mechedit
from mechedit.editors import ContextTemplateCache, Corpus, key_second_moments, make_templates, sample_texts
from mechedit.errors import ConfigError
from mechedit.interventions import capture
from mechedit.sites import Site

TEXTS = ["The Eiffel Tower is located in the city of Paris.", "Michael Jordan plays the sport of basketball.",
         "Berlin is the capital of Germany.", "The iPhone is made by Apple.", "Rome", "Honda Civic is produced by"]


def test_second_moment_matches_a_naive_loop(tiny_model, tmp_path):
    stats = key_second_moments(tiny_model, [2, 0], Corpus.from_texts(TEXTS), n_samples=5, max_length=6,
                               batch_size=2, cache_dir=tmp_path, progress=False)
    d = mechedit.model_info(tiny_model).d_mlp
    for layer in (0, 2):
        total, n = torch.zeros(d, d, dtype=torch.float64), 0
        for text in TEXTS[:5]:  # one text at a time, full forward, token by token
            ids = mechedit.encode(tiny_model, text, prefix="neutral").tensor()[:, :7]
            k = capture(tiny_model, ids, [Site("mlp_key", layer)])[Site("mlp_key", layer)][0].double()
            for t in range(k.shape[0]):
                total += torch.outer(k[t], k[t])
                n += 1
        assert stats[layer].n_tokens == n
        scale = float((total / n).abs().max())  # batched vs one-by-one float32 forwards differ in rounding
        torch.testing.assert_close(stats[layer].moment, total / n, atol=1e-5 * scale, rtol=1e-4)
        assert stats[layer].moment.dtype == torch.float64
    # cached on disk with provenance; a second call reads it back
    sidecars = sorted(tmp_path.rglob("*.json"))
    assert len(sidecars) == 2 and len(list(tmp_path.rglob("*.safetensors"))) == 2
    meta = json.loads(sidecars[0].read_text())
    assert meta["corpus"]["kind"] == "texts" and meta["n_samples"] == 5 and meta["max_length"] == 6
    assert meta["accumulation_dtype"] == "float64" and meta["model"] == mechedit.model_info(tiny_model).name
    again = key_second_moments(tiny_model, [0], Corpus.from_texts(TEXTS), n_samples=5, max_length=6,
                               cache_dir=tmp_path, progress=False)
    assert torch.equal(again[0].moment, stats[0].moment)
    other = key_second_moments(tiny_model, [0], Corpus.from_texts(TEXTS), n_samples=4, max_length=6,
                               cache_dir=tmp_path, progress=False)
    assert other[0].n_tokens < stats[0].n_tokens  # a different provenance is a different entry


def test_corpus_sources(tmp_path, tiny_gpt2):
    f = tmp_path / "c.txt"
    f.write_text("\n".join(TEXTS) + "\n\n")
    assert list(Corpus.from_file(f).texts(tiny_gpt2)) == TEXTS
    with pytest.raises(ConfigError, match="does not exist"):
        Corpus.from_file(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="layers"):
        key_second_moments(tiny_gpt2, [7], Corpus.from_texts(TEXTS), cache_dir=False)


def test_model_samples_are_seeded(tiny_llama):
    a = sample_texts(tiny_llama, 3, 8, seed=1)
    assert a == sample_texts(tiny_llama, 3, 8, seed=1) and a != sample_texts(tiny_llama, 3, 8, seed=2)
    state = torch.random.get_rng_state()
    templates = make_templates(tiny_llama, ((4, 2),), seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    assert templates[0] == "{}" and len(templates) == 3 and all(t.endswith("{}") for t in templates)
    cache = ContextTemplateCache()
    assert cache.get(tiny_llama, ((4, 2),)) == templates and len(cache) == 1


def test_model_samples_are_cached_on_disk_and_keyed_by_the_weights(tiny_llama, tmp_path, monkeypatch):
    from mechedit.editors import samples

    monkeypatch.setenv("MECHEDIT_CACHE_DIR", str(tmp_path))
    calls = []
    real = samples.sample_texts
    monkeypatch.setattr(samples, "sample_texts", lambda *a, **k: calls.append(a) or real(*a, **k))
    corpus = Corpus.model_samples(n_tokens=6, seed=3)
    first = [t for _, t in zip(range(5), corpus.texts(tiny_llama), strict=False)]
    assert len(calls) == 1 and len(list((tmp_path / "samples").rglob("*.json"))) == 1
    # what the cache holds is what sampling gives (first chunk: 64 texts, seed 3 * 1_000_003)
    assert first == real(tiny_llama, 64, 6, seed=3 * 1_000_003)[:5]
    again = [t for _, t in zip(range(5), corpus.texts(tiny_llama), strict=False)]
    assert again == first and len(calls) == 1  # read back, not sampled again
    stats = key_second_moments(tiny_llama, [0], corpus, n_samples=4, max_length=6, cache_dir=False, progress=False)
    assert len(calls) == 1
    with torch.no_grad():  # other weights under the same name: sampled afresh
        p = next(tiny_llama.parameters())
        saved = p.detach().clone()
        p.add_(0.5)
        try:
            key_second_moments(tiny_llama, [0], corpus, n_samples=4, max_length=6, cache_dir=False, progress=False)
        finally:
            p.copy_(saved)
    assert len(calls) == 2
    restored = key_second_moments(tiny_llama, [0], corpus, n_samples=4, max_length=6, cache_dir=False,
                                  progress=False)
    assert len(calls) == 2 and torch.equal(restored[0].moment, stats[0].moment)
