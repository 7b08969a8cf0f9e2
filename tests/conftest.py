"""Shared fixtures: tiny GPT-2 and Llama models built on disk, and the real SmolLM2.

Runtime shape checking: mechedit is imported under jaxtyping's import hook with
beartype, so every ``Float[Tensor, "..."]`` annotation is checked during the tests.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from jaxtyping import install_import_hook  # noqa: E402

with install_import_hook("mechedit", "beartype.beartype"):
    import importlib  # noqa: E402
    import pkgutil  # noqa: E402

    import mechedit  # noqa: E402

    # every module, now: one imported later (by a test or lazily) would escape the checks
    for _mod in pkgutil.walk_packages(mechedit.__path__, "mechedit."):
        importlib.import_module(_mod.name)

import pytest  # noqa: E402
import torch  # noqa: E402

from mechedit.testing import build_tiny_model  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(arch, root / arch) for arch in ("gpt2", "llama")}


_LOADED: list = []  # every model a fixture loaded, checked for leaked hooks after each test


def _track(model):
    _LOADED.append(model)
    return model


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_dirs):
    return _track(mechedit.load_model(tiny_dirs["gpt2"]))


@pytest.fixture(scope="session")
def tiny_llama(tiny_dirs):
    return _track(mechedit.load_model(tiny_dirs["llama"]))


@pytest.fixture(scope="session")
def smollm2():
    return _track(mechedit.load_model("smollm2-135m"))


@pytest.fixture(scope="session")
def synth_model():
    """The shipped synthetic-KG model (4 layers): every fact of its graph is known."""
    from mechedit.synth import shipped_model_dir

    return _track(mechedit.load_model(shipped_model_dir()))


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def tiny_model(request):
    """Each tiny architecture in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["tiny_gpt2", "tiny_llama", "smollm2"])
def any_model(request):
    """Both tiny architectures and SmolLM2 in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """An editor cache for small models: key statistics from 16-token model samples, in a
    temporary directory (one per test module; a module may define its own)."""
    from mechedit.editors import EditorCache
    from mechedit.editors.stats import Corpus

    return EditorCache(stats_dir=tmp_path_factory.mktemp("stats"), corpus=Corpus.model_samples(n_tokens=16),
                       progress=False)


@pytest.fixture(autouse=True)
def _no_hooks_left_behind():
    """Every test must leave every loaded model with no hook attached."""
    yield
    from mechedit import tlens

    for model in _LOADED:
        assert tlens.active_hook_count(model) == 0, "a test left a hook attached"


def pytest_collection_modifyitems(config, items):
    """The fast tier: every test that loads SmolLM2 (its fixture, directly or through
    ``any_model``) is marked ``smollm2``, so ``pytest -m "not smollm2"`` runs in minutes."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        param = getattr(getattr(item, "callspec", None), "params", {}).get("any_model")
        if "smollm2" in names or param == "smollm2":
            item.add_marker(pytest.mark.smollm2)


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray (2 CPUs) for the tests of the ``ray`` executor, started once per test
    process and stopped at its end (Ray is in the dev extra, so CI has it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
