"""A Google Cloud Storage JSON API on localhost (``gcp-storage-emulator``) for tests, and the environment that
points every GCS client of the stack at it.

- gcsfs (what ``etils.epath`` uses for ``gs://`` without TensorFlow) and google-cloud-storage (tensorboardX's
  ``gs://`` writer) read ``STORAGE_EMULATOR_HOST`` and then use anonymous credentials.
- tensorstore (Orbax's array writer) reads ``TENSORSTORE_GCS_HTTP_URL`` for the endpoint and
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` as a fixed bearer token (so it never looks for real credentials).
- ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs otherwise asks the Storage Control gRPC API (which no
  emulator serves) for each bucket's type, warning and falling back on every path.

Gaps of gcp-storage-emulator and what is done about them:
- object downloads lack the ``x-goog-generation`` header that real GCS sends, and tensorstore fails every read
  ("Malformed StorageGeneration"): the server is started through this file (``python tests/gcs_emulator.py``),
  which adds ``x-goog-generation``/``x-goog-metageneration`` to downloads from the object's own metadata;
- write preconditions (``ifGenerationMatch``) are accepted but not enforced: harmless with one writer per object,
  which is how Orbax/tensorstore write (one OCDBT database per process);
- the ``moveTo`` API is missing (501): ``io_paths.move`` copies and deletes instead of calling it.
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
            [sys.executable, os.path.abspath(__file__), self.data_dir, str(self.port), self.bucket],
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


def serve(data_dir: str, port: int, bucket: str) -> None:
    """Run gcp-storage-emulator in this process, its downloads carrying the object generation headers."""
    import logging

    from gcp_storage_emulator.handlers import objects

    original = objects.download

    def download(request, response, storage, *args, **kwargs):  # noqa: ANN001, ANN202 - the emulator's signature
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        except Exception:  # noqa: BLE001 - a missing object is answered (404) by the original handler
            pass
        return original(request, response, storage, *args, **kwargs)

    objects.download = download  # before the server module binds its routes
    from gcp_storage_emulator.server import create_server

    logging.basicConfig(level=logging.CRITICAL)
    create_server("127.0.0.1", port, in_memory=False, default_bucket=bucket, data_dir=data_dir).run()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])
