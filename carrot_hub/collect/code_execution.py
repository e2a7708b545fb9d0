"""The `code` scorer: run the answer's code against the row's tests in a child Python process.

The code is the answer's last fenced block (```python ... ```), else the whole answer; the row's
`tests` (Python statements, e.g. `assert add(2, 3) == 5`, or a `check(candidate)` function and its
call) are appended, and the result is run with `python -I` in a fresh temporary folder. It scores 1
when the process exits with status 0, else 0 (a failed assertion, an exception, running out of time
or memory): the answer was given and its code does not pass.

Limits, per answer: `TIME_LIMIT_S` seconds of wall time (the process group is killed), the same in
CPU seconds, `MEMORY_LIMIT_BYTES` of address space, 16 MiB per written file, no core dumps, and no
network: where the kernel lets an unprivileged process have its own network
namespace (Linux user namespaces) the child gets an empty one; in every case the child's `socket`
module refuses to create Internet sockets.

THIS IS NOT A SECURITY SANDBOX. The code runs as your user, can read and write your files, and a
determined program can undo the in-process guards. Run `code` scoring only on answers from models
you trust, or inside a container or VM you are prepared to lose. That is why it is refused unless
`--allow-code-execution` is given.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

from .contracts import Score, ScoringInput
from .scorers import unscorable

TIME_LIMIT_S = 10.0
MEMORY_LIMIT_BYTES = 1 << 30  # 1 GiB of address space
FILE_SIZE_LIMIT_BYTES = 16 << 20
OUTPUT_TAIL_CHARS = 300
CONCURRENCY = max(1, (os.cpu_count() or 1))

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000

# Run first in the child: no Internet sockets, whatever the kernel allowed.
_GUARD = """\
import socket as _socket
class _NoNetwork(_socket.socket):
    def __init__(self, family=-1, *args, **kwargs):
        if family in (-1, _socket.AF_INET, _socket.AF_INET6):
            raise PermissionError("network access is disabled while scoring code")
        super().__init__(family, *args, **kwargs)
_socket.socket = _NoNetwork
_socket.create_connection = lambda *a, **k: (_ for _ in ()).throw(PermissionError("network access is disabled"))
del _NoNetwork
"""


def extract_code(answer: str) -> str:
    """The answer's last fenced code block (python or unlabelled), else the whole answer."""
    blocks = _FENCE.findall(answer)
    return blocks[-1] if blocks else answer


def _limit_child() -> None:  # runs in the child between fork and exec
    import resource

    for limit, value in ((resource.RLIMIT_AS, MEMORY_LIMIT_BYTES),
                         (resource.RLIMIT_CPU, int(TIME_LIMIT_S) + 1),
                         (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT_BYTES),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    try:  # an empty network namespace where unprivileged user namespaces are allowed
        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    except (OSError, AttributeError):
        pass


class CodeScorer:
    """1 when the answer's code passes the row's tests in a limited child process, else 0. Not a sandbox."""

    name = "code"
    needs_reference = False
    needs_tests = True

    def __init__(self, time_limit_s: float = TIME_LIMIT_S, concurrency: int = CONCURRENCY):
        self.time_limit_s = time_limit_s
        self._slots = asyncio.Semaphore(concurrency)

    async def score(self, item: ScoringInput) -> Score:
        if (skip := unscorable(item, self.name, needs_reference=False)) is not None:
            return skip
        if not item.tests or not item.tests.strip():
            return Score(None, "no tests to run the code against", scorer=self.name)
        program = _GUARD + "\n" + extract_code(item.answer) + "\n\n" + item.tests + "\n"
        async with self._slots:
            status, output = await self._run(program)
        if status == 0:
            return Score(1.0, "tests passed", scorer=self.name)
        if status is None:
            return Score(0.0, f"timed out after {self.time_limit_s:g} s", scorer=self.name)
        last_line = output.strip().splitlines()[-1] if output.strip() else f"exit status {status}"
        return Score(0.0, f"tests failed: {last_line[:OUTPUT_TAIL_CHARS]}", scorer=self.name)

    async def _run(self, program: str) -> tuple[int | None, str]:
        """Run `program`; (exit status, output tail), or (None, ...) when it ran out of wall time."""
        with tempfile.TemporaryDirectory(prefix="carrot-code-") as folder:
            script = Path(folder) / "answer.py"
            script.write_text(program, encoding="utf-8")
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", str(script), cwd=folder,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": folder, "PYTHONHASHSEED": "0"},
                start_new_session=True, preexec_fn=_limit_child,
            )
            try:
                output, _ = await asyncio.wait_for(process.communicate(), self.time_limit_s)
            except asyncio.TimeoutError:
                _kill_group(process.pid)
                await process.wait()
                return None, ""
            finally:
                _kill_group(process.pid)  # anything the program left running
            return process.returncode, output.decode("utf-8", "replace")[-4000:]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
