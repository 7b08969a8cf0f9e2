"""Load-time benchmark: cold (dequantise GGUF) vs warm (cached safetensors) SmolLM2 loads.

Run: ``python benchmarks/bench_load.py``. Each load runs in a fresh process, as a user's
would. The cold load uses an empty temporary cache; the warm loads reuse it. Target: a
warm load (import included) under 10 s; the ratio cold/warm is printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

CODE = "import mechedit; mechedit.load_model('smollm2-135m')"


def timed_load(cache: str) -> float:
    env = dict(os.environ, MECHEDIT_CACHE_DIR=cache, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CODE], env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        cold = timed_load(cache)
        warm = min(timed_load(cache) for _ in range(3))
    print(f"cold load (dequantise + cache): {cold:6.1f} s")
    print(f"warm load (best of 3, new process, import included): {warm:6.1f} s  target < 10 s "
          f"[{'OK' if warm < 10 else 'MISSED'}]")
    print(f"speed-up warm vs cold: {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
