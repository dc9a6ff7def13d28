"""Every labpipe command refuses a port number outside 0-65535 in one line, exit 2,
before it binds anything (ZeroMQ would take 99999 as port 34463 without a word)."""

import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize("command", [
    ["labpipe-master", "--port-control", "99999"],
    ["labpipe-stream-sim", "-p", "99999"],
    ["labpipe-buffer", "tcp://127.0.0.1:1", "-o", "99999", "-b", "10"],
    ["labpipe-writer", "tcp://127.0.0.1:1", "out.h5", "-1", "99999"],
    ["labpipe-web", "--web-port", "99999"],
    ["labpipe-ctlmgr", "--port-notify", "-1"],
])
def test_a_port_out_of_range_is_one_line_and_exit_2(command, tmp_path):
    result = subprocess.run([os.path.join(BIN, command[0]), *command[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "is not a TCP port (0 to 65535)" in last and "Traceback" not in result.stderr
    assert not os.listdir(tmp_path)  # nothing written (the writer's file included)
