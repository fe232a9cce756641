"""`hifikit serve` and `hifikit chat`: the bundled llama-server and llama-cli on a synthetic HIFI GGUF.

The server is driven by a real OpenAI client (the `openai` package of the test extra). Every server binds
127.0.0.1 on a free port, every wait is bounded, and every test checks that no llama-server of its model is
left running afterwards.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hifikit import paths
from hifikit.errors import HifikitError
from hifikit.serve import ChatOptions, ServeOptions, Server, chat_argv

openai = pytest.importorskip("openai", reason="openai is part of the test extra: pip install '.[test]'")

MAX_TOKENS = 8


def servers_of(model: Path) -> list[int]:
    """pids of the llama-server processes serving model (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"llama-server") and str(model).encode() in argv:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def served_model(hifi_model, tmp_path_factory) -> Path:
    """A copy of the HIFI model for the module's server alone, so that the other tests' checks of what is left
    running (by model path) do not see it."""
    path = tmp_path_factory.mktemp("served") / hifi_model.name
    shutil.copy(hifi_model, path)
    return path


@pytest.fixture(scope="module")
def server(served_model):
    srv = Server(ServeOptions(served_model, port=0, threads=2, ctx=256, startup_timeout=120, stop_timeout=10))
    srv.start()
    yield srv
    srv.stop()
    assert servers_of(served_model) == []


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def test_health_models_and_a_chat_completion(server, served_model):
    info = server.info
    assert info.url.startswith("http://127.0.0.1:") and info.port == int(info.url.rsplit(":", 1)[1])
    assert get_json(info.url + "/health") == {"status": "ok"}
    assert info.ctx == 256 and info.threads == 2 and servers_of(served_model) == [info.pid]
    # no web UI is embedded (the build neither runs npm nor downloads it): the page is a 404, the API is there
    with pytest.raises(urllib.error.HTTPError) as page:
        urllib.request.urlopen(info.url + "/", timeout=30)
    assert page.value.code == 404

    client = openai.OpenAI(base_url=info.url + "/v1", api_key="none", timeout=60, max_retries=0)
    models = client.models.list().data
    assert len(models) == 1 and served_model.name in models[0].id     # the file's path or name

    res = client.chat.completions.create(model=models[0].id, messages=[{"role": "user", "content": "Hello"}],
                                         max_tokens=MAX_TOKENS, temperature=0,
                                         extra_body={"ignore_eos": True})
    assert res.usage.completion_tokens == MAX_TOKENS
    assert res.choices[0].finish_reason == "length"
    assert isinstance(res.choices[0].message.content, str) and res.choices[0].message.content


def test_a_streamed_chat_completion(server):
    client = openai.OpenAI(base_url=server.info.url + "/v1", api_key="none", timeout=60, max_retries=0)
    stream = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Tell me"}],
                                            max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True})
    pieces, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(pieces) >= 2 and "".join(pieces)
    assert finish == "length"


@contextlib.contextmanager
def serving_cli(cli, model):
    """`hifikit serve MODEL --json` as a process of its own (bounded by --stop-after), killed if a test leaves
    it running."""
    proc = subprocess.Popen(cli.argv("serve", model, "--port", "0", "--threads", "2", "--ctx", "256", "--json",
                                     "--stop-after", "120"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli.env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serves_until_interrupted_and_leaves_nothing(cli, hifi_model):
    with serving_cli(cli, hifi_model) as proc:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["host"] == "127.0.0.1"
        assert get_json(ready["url"] + "/health") == {"status": "ok"}
        assert servers_of(hifi_model) == [ready["pid"]]
        proc.send_signal(signal.SIGINT)                   # what Ctrl-C sends
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["event"] == "stopped" and stopped["stopped_by"] == "interrupt"
    assert servers_of(hifi_model) == []


def test_a_signal_right_after_ready_is_a_stop_too(cli, hifi_model):
    """SIGTERM (here; SIGINT in the test above) as soon as the ready line is out, while hifikit may still be
    announcing: the same orderly stop, exit 0, not an interrupted command."""
    with serving_cli(cli, hifi_model) as proc:
        ready = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["stopped_by"] == "interrupt"
    assert ready["pid"] not in servers_of(hifi_model)


@pytest.fixture
def busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("case", ["missing", "not-gguf", "port-in-use", "remote-host", "server-refuses",
                                  "own-flag-after-dashes"])
def test_bad_input_is_one_line_and_leaves_nothing(cli, hifi_model, tmp_path, busy_port, case):
    model, extra, opts = hifi_model, [], ["--port", "0"]
    if case == "missing":
        model = tmp_path / "nope.gguf"
    elif case == "not-gguf":
        model = tmp_path / "notes.gguf"
        model.write_text("not a model\n")
    elif case == "port-in-use":
        opts = ["--port", str(busy_port)]
    elif case == "remote-host":
        opts += ["--host", "0.0.0.0"]
    elif case == "server-refuses":
        extra = ["--", "--no-such-llama-server-flag"]       # llama-server starts, then exits with its error
    elif case == "own-flag-after-dashes":
        extra = ["--", "--port", "1"]
    res = cli("serve", model, *opts, "--stop-after", "60", *extra, check=False, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1 and lines[0].startswith("hifikit: error:"), res.stderr
    assert res.stdout == ""
    expected = {"missing": "no such file", "not-gguf": "not a GGUF file", "port-in-use": f":{busy_port}",
                "remote-host": "--allow-remote", "server-refuses": "no-such-llama-server-flag",
                "own-flag-after-dashes": "--port after --"}[case]
    assert expected in lines[0]
    if case == "server-refuses":
        assert "exited with status" in lines[0]
    assert servers_of(model) == []


def test_server_exiting_early_is_an_error_with_its_last_line(hifi_model, tmp_path):
    # a GGUF header with no tensors: a valid file for hifikit's checks, one llama-server cannot load
    import gguf

    empty = tmp_path / "empty.gguf"
    w = gguf.GGUFWriter(empty, "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    srv = Server(ServeOptions(empty, port=0, threads=1, ctx=64, startup_timeout=60))
    with pytest.raises(HifikitError, match="llama-server exited with status") as exc:
        srv.start()
    assert "\n" not in str(exc.value)
    assert srv.poll() is not None and servers_of(empty) == []


def test_chat_answers_one_prompt_and_exits(cli, hifi_model):
    argv = chat_argv(ChatOptions(hifi_model, prompt="Hello", n_predict=MAX_TOKENS, threads=2, ctx=256))
    assert argv[0] == str(paths.binary("llama-cli")) and "--single-turn" in argv
    res = cli("chat", hifi_model, "-p", "Hello", "-n", str(MAX_TOKENS), "--threads", "2", "--ctx", "256",
              "--", "--ignore-eos", check=False, timeout=180, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-2000:]
    # llama-cli echoes the prompt ("> Hello"), then the answer (a random model's gibberish, but text), then its
    # timings line
    assert "> Hello" in res.stdout and "[ Prompt:" in res.stdout, res.stdout
    answer = res.stdout.split("> Hello", 1)[1].split("[ Prompt:", 1)[0]
    assert answer.strip(), res.stdout


def test_chat_bad_model_is_one_line(cli, tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGML" + bytes(60))
    res = cli("chat", bad, "-p", "Hi", check=False, timeout=60, stdin=subprocess.DEVNULL)
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1 and "not a GGUF file" in lines[0], res.stderr


def test_pass_through_splits_at_the_first_double_dash():
    from hifikit.cli.main import build_parser, split_passthrough

    argv, extra = split_passthrough(["-v", "serve", "m.gguf", "--port", "0", "--", "-np", "2", "--", "x"])
    assert argv == ["-v", "serve", "m.gguf", "--port", "0"] and extra == ["-np", "2", "--", "x"]
    assert split_passthrough(["eval", "m.gguf", "--", "x"]) == (["eval", "m.gguf", "--", "x"], None)
    args = build_parser().parse_args(argv)
    assert args.port == 0 and args.extra_args == []
    assert os.fspath(args.model) == "m.gguf"
