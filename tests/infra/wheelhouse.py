"""The wheels the deployed archive's requirements.txt resolves to, downloaded in the
background from the start of the session (tests/infra/conftest.py starts it when
test_package will need it), so the clean install waits on the network as little as
possible: the download overlaps the tests before it.

`pip download -r requirements.txt` resolves exactly as `pip install -r` does, from
the same index and configuration; test_package then installs from this folder
only (--no-index), so a dependency requirements.txt forgot is still fetched and
still caught (installed, but not pinned).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

from tests.infra import tfconfig

PACKAGE = tfconfig.REPO / "tools" / "package.py"


class Wheelhouse:
    def __init__(self) -> None:
        self._root: Path | None = None
        self._thread: threading.Thread | None = None
        self._pip: subprocess.Popen[bytes] | None = None
        self.requirements = b""  # the requirements.txt the wheels are for
        self.error = ""
        self._stopped = False

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="aiprod-wheelhouse-"))
        return self._root

    def start(self) -> None:
        """Build the archive and download its wheels, in the background."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._fetch, name="wheelhouse",
                                            daemon=True)
            self._thread.start()

    def _fetch(self) -> None:
        archive = self.root / "function-source.zip"
        build = subprocess.run([sys.executable, str(PACKAGE), "--output", str(archive)],
                               cwd=tfconfig.REPO, capture_output=True, text=True, timeout=120)
        if build.returncode != 0:
            self.error = build.stderr[-3000:] or "tools/package.py failed"
            return
        with zipfile.ZipFile(archive) as zf:
            self.requirements = zf.read("requirements.txt")
        self._download()

    def _download(self) -> None:
        if self._stopped:
            self.error = "stopped"
            return
        path = self.root / "requirements.txt"
        path.write_bytes(self.requirements)
        shutil.rmtree(self.root / "wheels", ignore_errors=True)
        self._pip = subprocess.Popen(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-input", "-r", str(path), "--dest", str(self.root / "wheels")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, stderr = self._pip.communicate(timeout=900)
        self.error = ("" if self._pip.returncode == 0
                      else stderr.decode(errors="replace")[-3000:] or "pip download failed")

    def wheels_for(self, requirements: bytes) -> Path:
        """The folder of wheels for `requirements` (downloaded now if the background
        download was for other requirements, or failed)."""
        self.start()
        assert self._thread is not None
        self._thread.join(900)
        if self.error or self.requirements != requirements:
            self.requirements = requirements
            self._download()
        assert not self.error, self.error
        return self.root / "wheels"

    def remove(self) -> None:
        """Stop a download still running and delete the folder."""
        self._stopped = True
        if self._pip is not None and self._pip.poll() is None:
            self._pip.kill()
        if self._thread is not None:
            self._thread.join(30)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


WHEELHOUSE = Wheelhouse()
