"""A JupyterLab server of the test's own: 127.0.0.1, a free port, a random token, a scratch root, a log file.

    with JupyterLab.start(root=scratch / "root", home=scratch / "home") as lab:
        lab.url("lab/tree/notebooks/01_noise_to_cat.ipynb")   # with the token
        lab.log_text()                                         # what the server (and its kernels) printed

The server gets settings of its own (no news/update checks: the network is closed; every cell attached to the DOM,
so the test sees the whole notebook) and runs the notebooks' kernels with this Python, in this environment.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none", "scrollPastEnd": False},
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class JupyterLab:
    """One running ``jupyter lab`` process; stop() ends it (and its kernels)."""

    def __init__(self, process: subprocess.Popen, port: int, token: str, log_path: Path):
        self.process, self.port, self.token, self.log_path = process, port, token, log_path

    @classmethod
    def start(cls, root: Path, home: Path, timeout: float = 90.0) -> JupyterLab:
        """Start JupyterLab serving ``root`` and wait until its API answers; raise with the log if it does not."""
        port, token = free_port(), secrets.token_hex(24)
        settings = home / "lab-settings"
        for name, values in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(values))
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTER_CONFIG_DIR=str(home / "config"),
                   JUPYTER_DATA_DIR=str(home / "data"),
                   IPYTHONDIR=str(home / "ipython"), PYTHONUNBUFFERED="1")
        env.setdefault("SDEXPLORE_CACHE", str(home / "cache"))  # a sweep two notebooks share is computed once
        env.pop("MPLBACKEND", None)  # the kernels draw figures as a reader's kernel does, with Jupyter's own backend
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                   "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                   f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
                   "--ServerApp.terminals_enabled=False"] + (["--allow-root"] if os.geteuid() == 0 else [])
        log_path = home / "jupyterlab.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
        lab = cls(process, port, token, log_path)
        try:
            lab._wait_until_answering(timeout)
        except BaseException:
            lab.stop()
            raise
        return lab

    def url(self, path: str) -> str:
        separator = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}{separator}token={self.token}"

    def api(self, path: str):
        """GET a JSON document of the server's REST API (e.g. ``api/kernels``)."""
        with urllib.request.urlopen(self._request(path), timeout=10) as response:
            return json.load(response)

    def _request(self, path: str, method: str = "GET") -> urllib.request.Request:
        url = f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"
        return urllib.request.Request(url, method=method, headers={"Authorization": f"token {self.token}"})

    def shut_down_kernels(self) -> None:
        """End every kernel the server runs (a finished notebook's kernel would otherwise keep its memory)."""
        for kernel in self.api("api/kernels"):
            urllib.request.urlopen(self._request(f"api/kernels/{kernel['id']}", method="DELETE"), timeout=30).close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log written)"

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.process.returncode} before answering; "
                                   f"its log:\n{self.log_text()}")
            try:
                self.api("api/status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer on port {self.port} within {timeout:.0f} s; "
                           f"its log:\n{self.log_text()}")

    def stop(self) -> None:
        """Shut the server down (it shuts its kernels down); kill it if it does not exit."""
        if self.process.poll() is not None:
            return
        try:
            urllib.request.urlopen(self._request("api/shutdown", method="POST"), timeout=10).close()
            self.process.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> JupyterLab:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
