"""llama-cpp-python on this build's libllama: a HIFI GGUF generates through its high-level API.

llama-cpp-python is not in the test extra: from PyPI it compiles its own llama.cpp unless told not to, and an
extra cannot say so. The README's test command installs it the way docs/serve.md says
(CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" pip install llama-cpp-python==0.3.36, the pin's own version);
without it these tests are skipped, and in CI (HIFIKIT_CI) they fail. It loads its library when imported, so it
runs in a subprocess with LLAMA_CPP_LIB_PATH set.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from hifikit import paths

if importlib.util.find_spec("llama_cpp") is None:
    message = ("llama-cpp-python is not installed (CMAKE_ARGS='-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF' "
               "pip install llama-cpp-python==0.3.36; docs/serve.md, the README's test command)")
    if os.environ.get("HIFIKIT_CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)

SCRIPT = r"""
import json, sys
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
done = llm.create_chat_completion(messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0,
                                  logit_bias={llm.token_eos(): -100.0})
maps = [line.split()[-1] for line in open("/proc/self/maps") if "libllama.so" in line]
print(json.dumps({"version": llama_cpp.__version__, "usage": done["usage"],
                  "text": done["choices"][0]["message"]["content"], "maps": sorted(set(maps))}))
"""


def run_script(model, lib_path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["LLAMA_CPP_LIB_PATH"] = str(lib_path)
    return subprocess.run([sys.executable, "-c", SCRIPT, str(model)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_hifi_gguf_runs_through_llama_cpp_python(hifi_model, tmp_path):
    proc = run_script(hifi_model, paths.llama_cpp_lib_dir(tmp_path / "lib"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["usage"]["completion_tokens"] == 8 and out["text"]
    # the libllama in the process is this build's (the links resolve into hifikit's lib folder)
    assert out["maps"] and all(os.path.dirname(m) == str(paths.lib_dir().resolve()) for m in out["maps"]), out


def test_the_package_lib_folder_alone_is_not_enough(hifi_model):
    """Why llama_cpp_lib_dir exists: llama-cpp-python looks for exactly libllama.so, and hifikit/lib holds the
    versioned names only (a wheel cannot hold the plain-name links)."""
    if (paths.lib_dir() / "libllama.so").exists():
        pytest.skip("this lib folder has libllama.so (a developer's cmake tree)")
    proc = run_script(hifi_model, paths.lib_dir())
    assert proc.returncode != 0 and "Shared library with base name 'llama' not found" in proc.stderr
