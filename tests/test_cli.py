import json
import subprocess
import sys

from mechedit.cli.main import main


def test_predict_json_on_a_tiny_model(tiny_dirs, capsys):
    assert main(["predict", "--model", str(tiny_dirs["gpt2"]), "The capital of France is",
                 "--top-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["tokens"]) == 4 and len(out["probs"]) == 4
    assert out["probs"] == sorted(out["probs"], reverse=True)


def test_predict_table(tiny_dirs, capsys):
    assert main(["predict", "--model", str(tiny_dirs["llama"]), "Hello", "--top-k", "2"]) == 0
    assert "rank" in capsys.readouterr().out


def test_clean_error_for_unknown_model(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["predict", "--model", "no-such/model", "Hi"]) == 2
    err = capsys.readouterr().err
    assert "mechedit: error:" in err and "Traceback" not in err


def test_console_script_on_smollm2(smollm2):
    """The issue's acceptance command, as a user runs it."""
    exe = [sys.executable, "-m", "mechedit.cli.main"]
    out = subprocess.run(exe + ["predict", "--model", "smollm2-135m", "The capital of France is", "--json"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["tokens"][0] == " Paris"
    assert result["prompt_tokens"][0] == "The"


def test_device_flag_runs_on_cpu_and_rejects_unusable_devices(tiny_dirs, capsys, monkeypatch):
    import pytest
    import torch

    model = str(tiny_dirs["gpt2"])
    assert main(["predict", "--model", model, "Hello", "--device", "cpu", "--json"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["predict", "--model", model, "Hello", "--device", "auto", "--json"]) == 0  # auto -> cpu here
    capsys.readouterr()
    for bad, says in (("cuda", "sees no CUDA device"), ("gpu0", "is not a torch device")):
        assert main(["trace", "--model", model, "--prompt", "a b c", "--subject", "a", "--device", bad]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
    with pytest.raises(SystemExit):  # every model-loading subcommand has the flag
        main(["edit", "--help"])
    assert "--device" in capsys.readouterr().out
