"""Reference data the tests read, kept in the repository (tests/data): real GitHub and Sentry
webhook payloads (CORPUS) and KubeRay v1.7.0's CRDs and operator chart values (KUBERAY)."""

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
CORPUS = DATA / "corpus"  # github-webhooks/, sentry-webhooks/: payloads as the senders post them
KUBERAY = DATA / "kuberay-v1.7.0"  # ray.io_rayclusters.yaml, ray.io_rayservices.yaml, kuberay-operator-chart-values.yaml
