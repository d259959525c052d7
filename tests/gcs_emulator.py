"""A Google Cloud Storage JSON API on localhost (``gcp-storage-emulator``) for tests, and the environment that
points every GCS client of the stack at it.

- gcsfs (what ``etils.epath`` uses for ``gs://`` without TensorFlow) and google-cloud-storage (tensorboardX's
  ``gs://`` writer) read ``STORAGE_EMULATOR_HOST`` and then use anonymous credentials.
- tensorstore (Orbax's array writer) reads ``TENSORSTORE_GCS_HTTP_URL`` for the endpoint and
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` as a fixed bearer token (so it never looks for real credentials).
- ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs otherwise asks the Storage Control gRPC API (which no
  emulator serves) for each bucket's type, warning and falling back on every path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """``with Emulator(bucket, data_dir) as emu:`` -- a running server holding ``bucket``; ``emu.env``."""

    def __init__(self, bucket: str, data_dir: str):
        self.bucket = bucket
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.env = {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def __enter__(self) -> Emulator:
        self.log = open(os.path.join(self.data_dir, "..", "emulator.log"), "wb")  # noqa: SIM115 - closed in exit
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "-d", self.data_dir, "start", "--host", "127.0.0.1",
             "--port", str(self.port), "--default-bucket", self.bucket, "-q"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gcp-storage-emulator exited with status {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("gcp-storage-emulator did not come up within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()

    def objects(self, prefix: str = "") -> list[str]:
        """Object names under ``prefix`` straight from the server (no client-side listing cache)."""
        names, token = [], ""
        while True:
            query = f"prefix={urllib.request.quote(prefix)}" + (f"&pageToken={token}" if token else "")
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}/o?{query}", timeout=10) as r:
                page = json.load(r)
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return names
