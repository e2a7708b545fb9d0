"""Run Python in a fresh process where carrot_hub cannot be imported (as on a Hub user's machine)."""

import json
import os
import subprocess
import sys
import textwrap

_BLOCKER = textwrap.dedent(
    """
    import sys

    class _HideCarrotHub:
        def find_spec(self, name, path=None, target=None):
            if name == "carrot_hub" or name.startswith("carrot_hub."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden for this test)")
            return None

    sys.meta_path.insert(0, _HideCarrotHub())
    try:
        import carrot_hub  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("carrot_hub is still importable")
    """
)


def run_without_carrot_hub(code: str, cwd, timeout: int = 300) -> dict:
    """Run `code` (which must print one JSON line last) in a subprocess without carrot_hub; return it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cwd / "hf_modules"), PYTHONPATH="")
    completed = subprocess.run(
        [sys.executable, "-c", _BLOCKER + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        raise AssertionError(f"subprocess failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
