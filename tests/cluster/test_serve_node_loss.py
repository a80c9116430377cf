"""Node loss under serving load on the simulated cluster (tests/fixtures/cluster.py): one of two Embedder nodes dies.

The application is deployed the way `serve run serve/config.yaml` deploys it (the config's application, its
`deployments:` overrides): serve/config.yaml with the Embedder set as docs/cluster.md tells a GPU cluster to set it,
2 replicas pinned to the serving group (`resources: {serve: 1}`, one per `gpu_serve` node, each node's whole CPU),
and the proxy on the head only (every simulated node listens on 127.0.0.1). Closed-loop clients post
/v1/embeddings while the test kills one `gpu_serve` node (every process at once) and starts a fresh one in its place
(the autoscaler's replacement); the figures printed at the end are docs/cluster.md's "When a node dies".
"""

from __future__ import annotations

import copy
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.fixtures.cluster import BASE_GROUPS, wait_for_alive_nodes

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CLIENTS = 8
AFTER_LOSS_S = 30.0  # load kept on after the node is killed
HEALTH_CHECK_PERIOD_S = float(os.environ.get("MAPLE_TEST_HEALTH_CHECK_PERIOD_S", "2"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy_config(port: int) -> dict:
    """serve/config.yaml for two Embedder replicas on two `gpu_serve` nodes, tiny random models, on 127.0.0.1."""
    config = copy.deepcopy(yaml.safe_load((REPO / "serve" / "config.yaml").read_text()))
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": port, "request_timeout_s": 60}
    (app,) = config["applications"]
    app["args"].update(embedder=None, reranker=None, index=None, device="cpu")
    for deployment in app["deployments"]:
        if deployment["name"] == "Embedder":
            deployment.pop("autoscaling_config", None)
            deployment.update(num_replicas=2, health_check_period_s=HEALTH_CHECK_PERIOD_S,
                              ray_actor_options={"num_cpus": 1, "num_gpus": 1, "resources": {"serve": 1}})
        if deployment["name"] == "Reranker":
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = 1
    return config


def embedder_replicas() -> dict[str, int]:
    from ray import serve

    app = serve.status().applications.get("maple")
    if app is None or "Embedder" not in app.deployments:
        return {}
    return dict(app.deployments["Embedder"].replica_states)


def wait_for_running(n: int, timeout_s: float) -> float:
    """Seconds until n Embedder replicas are RUNNING (and no other state); TimeoutError after timeout_s."""
    started = time.monotonic()
    while True:
        states = embedder_replicas()
        if states == {"RUNNING": n}:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"Embedder replicas {states} after {timeout_s:.0f} s, expected {n} RUNNING")
        time.sleep(0.25)


def wait_for_not_running(n: int, timeout_s: float) -> float:
    """Seconds until Serve's status no longer shows n RUNNING Embedder replicas (the controller saw the loss)."""
    started = time.monotonic()
    while embedder_replicas() == {"RUNNING": n}:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"Serve still shows {n} RUNNING Embedder replicas {timeout_s:.0f} s after the loss")
        time.sleep(0.25)
    return time.monotonic() - started


class ClosedLoop:
    """CLIENTS threads, each posting one /v1/embeddings request after the previous one answered."""

    def __init__(self, url: str):
        self.url, self.stop = url, threading.Event()
        self.log: list[tuple[float, float, int]] = []  # (sent, answered, status; 0: no HTTP answer)
        self.lock = threading.Lock()
        self.errors: list[str] = []  # the first failures' bodies
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _client(self, i: int) -> None:
        session, n = requests.Session(), 0
        while not self.stop.is_set():
            body = {"input": [f"client {i} request {n} text {k}" for k in range(4)]}
            sent = time.time()
            try:
                response = session.post(self.url, json=body, timeout=60)
                status = response.status_code
                if status != 200 and len(self.errors) < 5:
                    self.errors.append(response.text[:300])
            except requests.RequestException as exc:
                status = 0
                self.errors.append(repr(exc)[:300])
            with self.lock:
                self.log.append((sent, time.time(), status))
            n += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=70)


def test_serving_loses_an_embedder_node_and_keeps_answering(sim_cluster):
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    sim_cluster.reset()
    sim_cluster.add("gpu_serve")  # the second serving node: one Embedder replica on each
    wait_for_alive_nodes(2 + len(BASE_GROUPS))
    port = _free_port()
    config = ServeDeploySchema.model_validate(deploy_config(port))
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    try:
        # what `serve run serve/config.yaml` does (ray/serve/scripts.py)
        client = serve_api.serve_start(http_options=config.http_options.model_dump(),
                                       proxy_location=config.proxy_location)
        client.deploy_apps(config)
        wait_for_running(2, timeout_s=90)
        assert ray.available_resources().get("serve", 0) == 0, "an Embedder replica is not on a serving node"
        deadline = time.monotonic() + 60
        while requests.post(url, json={"input": ["warm"]}, timeout=60).status_code != 200:
            assert time.monotonic() < deadline, "the application never answered 200"
            time.sleep(0.5)

        with ClosedLoop(url) as load:
            time.sleep(8)  # steady state with both replicas
            # each serving node holds one replica (serve: 1 each, both taken): kill one of them
            doomed = sim_cluster.nodes_of("gpu_serve")[0]
            lost_at = time.time()
            sim_cluster.remove(doomed)
            sim_cluster.add("gpu_serve")  # the replacement node (the autoscaler's job on AWS)
            replaced_s = time.time() - lost_at
            noticed_s = replaced_s + wait_for_not_running(2, timeout_s=AFTER_LOSS_S)
            back_s = noticed_s + wait_for_running(2, timeout_s=AFTER_LOSS_S + 30)
            time.sleep(max(0.0, lost_at + AFTER_LOSS_S - time.time()))
            ended_at = time.time()
        log, errors = sorted(load.log), load.errors
    finally:
        serve.shutdown()
        sim_cluster.reset()

    before = [s for _, done, s in log if done < lost_at]
    after = [(sent, done, s) for sent, done, s in log if done >= lost_at]
    failures = [(sent, done, s) for sent, done, s in after if s != 200]
    last_10 = [s for sent, _, s in after if sent >= ended_at - 10]
    assert before and all(s == 200 for s in before), f"failures before the loss: {sorted(set(before))} {errors}"
    assert after and sum(s == 200 for _, _, s in after) > 0.8 * len(after), \
        f"{len(failures)} of {len(after)} requests after the loss failed"
    assert last_10 and all(s == 200 for s in last_10), f"failures in the last 10 s: {sorted(set(last_10))}"
    assert not [f for f in log if f[2] not in (200, 0, 500, 502, 503, 504)], "a failure that is not a 5xx"
    window = (max(done for _, done, _ in failures) - min(sent for sent, _, _ in failures)) if failures else 0.0
    assert window < 20, f"failures spread over {window:.1f} s"
    first_fail = min((sent for sent, _, _ in failures), default=lost_at) - lost_at
    rate_before = len(before) / (lost_at - log[0][0])
    slowest = max((done - sent for sent, done, _ in after if sent < lost_at + 10), default=0.0)
    print(f"\nserving node loss (health_check_period_s={HEALTH_CHECK_PERIOD_S:g}): {len(before)} requests before "
          f"({rate_before:.1f}/s), {len(after)} after the loss, {len(failures)} failed "
          f"({sorted({s for *_, s in failures})}), error window {window:.1f} s starting {first_fail:.1f} s after "
          f"the loss; replacement node joined {replaced_s:.1f} s, Serve saw the loss {noticed_s:.1f} s, 2 Embedder "
          f"replicas RUNNING {back_s:.1f} s after the loss; slowest request within 10 s of the loss {slowest:.2f} s; "
          f"first failures: {errors}")
