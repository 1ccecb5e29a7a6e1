"""Serving: a TF Serving gRPC client and a local model server with TF Serving's API.

* `Client` (client.py): `predict`, `metadata`, `status`, `wait_until_available`.
* `tfcluster serve` (server.py): the local model server (`tensorflow_model_server` flags).
* `tfcluster predict` (cli.py): one call from the command line.
* `LocalServer` (local.py): start `tfcluster serve` as a subprocess and wait for models.
"""

from tfcluster.serving.client import Client, Metadata, ServingError, VersionStatus
from tfcluster.serving.local import LocalServer

__all__ = ["Client", "LocalServer", "Metadata", "ServingError", "VersionStatus"]
