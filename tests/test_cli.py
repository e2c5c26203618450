"""The command line's own behaviour: --version, --help, parse-time checks, and how failures and signals end a run.

Commands are replaced by small fakes, so nothing here trains or reads data.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys

import pytest

import trakscope
import trakscope.commands.inspect as inspect_command
from trakscope.cli import COMMANDS, build_parser, main
from trakscope.io import write_json

FAKE_ARGS = ["inspect", "--run", "unused", "--target", "0"]


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return capsys.readouterr().out


def _option_blocks(text: str) -> list[str]:
    """Each option's help as one string: a block starts at a line beginning with "  -"."""
    blocks: list[str] = []
    for line in text.splitlines():
        if line.startswith("  -"):
            blocks.append(line)
        elif blocks and line.startswith("    "):
            blocks[-1] += " " + line.strip()
    return blocks


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"trakscope {trakscope.__version__}\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_each_default_once_and_never_none(capsys, command):
    blocks = _option_blocks(_help(command, capsys))
    assert len(blocks) > 2
    for block in blocks:
        assert block.count("(default") <= 1, block
        assert "(default: None)" not in block and "(default: False)" not in block, block


def test_help_keeps_the_defaults_worth_showing(capsys):
    blocks = {b.split()[0].rstrip(","): b for b in _option_blocks(_help("run", capsys))}
    assert "(default: 2048)" in blocks["--proj-dim"]
    assert "(default: the first 10 alphabetically)" in blocks["--classes"]
    assert "(default: torch's choice)" in blocks["--threads"]
    assert "(default" not in blocks["--max-train"]
    assert "(default: 0)" in blocks["--data-seed"] and "(default: 0)" in blocks["--num-workers"]  # 0 is not None
    removal = {b.split()[0]: b for b in _option_blocks(_help("removal", capsys))}
    assert re.search(r"\(default: [\d.]+(,[\d.]+)+\)", removal["--fractions"])


def _fake_command(monkeypatch, run):
    monkeypatch.setattr(inspect_command, "run", run)


def test_disk_full_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    def fsync_on_full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    _fake_command(monkeypatch, lambda args: write_json(tmp_path / "run" / "config.json", {"k": 1}))
    monkeypatch.setattr(os, "fsync", fsync_on_full_disk)
    assert main(FAKE_ARGS) == 1
    path = tmp_path / "run" / "config.json"
    err = capsys.readouterr().err
    assert err.startswith(f"trakscope inspect: error: cannot write {path}: No space left on device (")
    assert err.endswith("; free space on that disk (or choose a folder on another disk), then rerun the same command; "
                        "finished work is kept\n") and err.count("\n") == 1
    assert not list((tmp_path / "run").iterdir())  # no temporary file left


@pytest.mark.parametrize("code, advice", [(errno.EDQUOT, "free space within your quota"),
                                         (errno.EFBIG, "raise the limit (ulimit -f unlimited)"),
                                         (errno.EROFS, "the filesystem is mounted read-only"),
                                         (errno.EACCES, "make /data/run writable (chmod u+w)"),
                                         (errno.EPERM, "make /data/run writable (chmod u+w)")])
def test_other_write_failures_are_one_line_saying_what_to_do(monkeypatch, capsys, code, advice):
    def fail(args):
        raise OSError(code, os.strerror(code), "/data/run/scores.npy")

    _fake_command(monkeypatch, fail)
    assert main(FAKE_ARGS) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"trakscope inspect: error: cannot write /data/run/scores.npy: {os.strerror(code)}; ")
    assert advice in err and err.count("\n") == 1


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def fail(args):
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/data/x")

    _fake_command(monkeypatch, fail)
    with pytest.raises(OSError, match="Input/output error"):
        main(FAKE_ARGS)
    monkeypatch.setenv("TRAKSCOPE_DEBUG", "1")

    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/x")

    _fake_command(monkeypatch, full)
    with pytest.raises(OSError, match="No space left"):
        main(FAKE_ARGS)


def _cli_with_fake_command(body: str) -> subprocess.Popen:
    """A ``trakscope inspect`` process whose command body is ``body`` (indented Python)."""
    script = (
        "import sys, time\n"
        "import trakscope.commands.inspect as command\n"
        "def run(args):\n" + body + "\n"
        "command.run = run\n"
        "from trakscope.cli import main\n"
        f"sys.exit(main({FAKE_ARGS!r}))\n"
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_closed_pipe_ends_quietly():
    proc = _cli_with_fake_command("    for i in range(200000):\n        print(i)")
    assert proc.stdout.readline() == b"0\n"
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_is_handled_like_ctrl_c():
    proc = _cli_with_fake_command("    print('ready', flush=True)\n    time.sleep(60)")
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert "interrupted; finished work is kept, rerun to resume" in proc.stderr.read().decode()


def test_forked_workers_stop_quietly_on_sigterm():
    """cleanlab's multiprocessing pool forks workers that inherit the handler; terminating them is no error."""
    import os
    import signal
    import time

    from trakscope.cli import _sigterm_as_interrupt

    with _sigterm_as_interrupt():
        pid = os.fork()
        if pid == 0:  # the worker: wait to be told to stop
            try:
                time.sleep(30)
            finally:
                os._exit(3)  # reached only if SIGTERM became an exception in the worker
        time.sleep(0.3)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
