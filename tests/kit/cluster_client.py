"""tritonclient, unmodified, against the Ray cluster's proxy (a child process: see conftest.py).

    python tests/kit/cluster_client.py classify URL PHOTOS.json   # one JSON document
    python tests/kit/cluster_client.py traffic URL PHOTO           # driven over stdin

``classify`` sends each photo until both serving nodes answered (the response
parameter ``ray_node`` names the node) and probes a few errors. ``traffic``
keeps two client threads sending until stdin says ``stop``; ``phase NAME``
lines label what follows; it prints ``seen PHASE NODE`` the first time a node
answers in a phase (``version PHASE V`` for a model version), and at the end
the counts of every status per phase.
Only tritonclient, numpy and the standard library: no project import.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

MODEL = "efficientnet_lite0"
MAX_ROUNDS = 100  # photo rounds to wait for the second node before giving up


def request(
    client: grpcclient.InferenceServerClient, image: bytes, timeout: float = 30
) -> tuple[int, str, str, str]:
    tensor = grpcclient.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    result = client.infer(
        MODEL,
        [tensor],
        outputs=[grpcclient.InferRequestedOutput("logits", class_count=1)],
        client_timeout=timeout,
    )
    score, index, label = result.as_numpy("logits")[0][0].decode().split(":", 2)
    response = result.get_response()
    node = response.parameters["ray_node"].string_param
    return int(index), label, node, response.model_version


def error(call) -> dict[str, str]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": "OK", "message": ""}


def classify(url: str, photos: dict[str, str]) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(url)
    images = {name: Path(path).read_bytes() for name, path in photos.items()}
    labels: dict[str, list[Any]] = {}
    nodes: Counter[str] = Counter()
    for _ in range(MAX_ROUNDS):
        for name, image in images.items():
            index, label, node, _ = request(client, image)
            labels.setdefault(name, [index, label])
            nodes[node] += 1
        if len(nodes) >= 2:
            break
    bad = grpcclient.InferInput("pixels", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(MODEL),
        "metadata": client.get_server_metadata(as_json=True),
        "index": client.get_model_repository_index(as_json=True),
        "config_name": client.get_model_config(MODEL, as_json=True)["config"]["name"],
        "statistics": client.get_inference_statistics(MODEL, as_json=True),
        "labels": labels,
        "nodes": dict(nodes),
        "errors": {
            "unknown_model": error(lambda: client.get_model_metadata("no_such_model")),
            "bad_input": error(lambda: client.infer(MODEL, [bad])),
            "bad_version": error(lambda: client.get_model_config(MODEL, "99")),
            "load": error(lambda: client.load_model(MODEL)),
            "shm": error(lambda: client.get_system_shared_memory_status()),
        },
    }


class Traffic:
    def __init__(self, url: str, image: bytes) -> None:
        self.url, self.image = url, image
        self.phase = "start"
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.nodes: dict[str, Counter[str]] = defaultdict(Counter)
        self.versions: dict[str, Counter[str]] = defaultdict(Counter)
        self.messages: list[str] = []

    def loop(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        while not self.stop.is_set():
            phase = self.phase
            try:
                _, _, node, version = request(client, self.image, timeout=20)
                status = "OK"
            except InferenceServerException as exc:
                node, version = "", ""
                status = str(exc.status()).removeprefix("StatusCode.")
                with self.lock:
                    self.messages.append(f"{status}: {exc.message()}"[:300])
            with self.lock:
                self.counts[phase][status] += 1
                if node and not self.nodes[phase][node]:
                    print(f"seen {phase} {node}", flush=True)
                if node:
                    self.nodes[phase][node] += 1
                if version and not self.versions[phase][version]:
                    print(f"version {phase} {version}", flush=True)
                if version:
                    self.versions[phase][version] += 1

    def run(self) -> dict[str, Any]:
        threads = [threading.Thread(target=self.loop) for _ in range(2)]
        for t in threads:
            t.start()
        print("started", flush=True)
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["phase"]:
                self.phase = words[1]
                print(f"phase {words[1]}", flush=True)
            elif words[:1] == ["stop"]:
                break
        self.stop.set()
        for t in threads:
            t.join()
        return {
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "nodes": {k: dict(v) for k, v in self.nodes.items()},
            "versions": {k: dict(v) for k, v in self.versions.items()},
            "messages": self.messages[:20],
        }


def main() -> None:
    mode, url, arg = sys.argv[1:4]
    if mode == "classify":
        out = classify(url, json.loads(Path(arg).read_text()))
    else:
        out = Traffic(url, Path(arg).read_bytes()).run()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
