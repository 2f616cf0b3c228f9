"""The official Kubernetes Python client against bramble-master: list, watch, create, patch
and delete pods and Deployments. Run by tests/tests/kubectl.rs with the master's kubeconfig;
prints one line per step and exits non-zero at the first failure."""

import sys
import time

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()
NS = "default"


def step(name):
    print(name, flush=True)


pod = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "py-pod", "labels": {"made-by": "python"}},
    "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
    },
}

# Watch from the current list's version, then create: the watch sees the pod added.
listed = core.list_namespaced_pod(NS)
step(f"listed {len(listed.items)} pods at {listed.metadata.resource_version}")
core.create_namespaced_pod(NS, pod)
w = watch.Watch()
seen = None
for event in w.stream(
    core.list_namespaced_pod,
    NS,
    resource_version=listed.metadata.resource_version,
    label_selector="made-by=python",
    timeout_seconds=20,
):
    if event["object"].metadata.name == "py-pod":
        seen = event["type"]
        w.stop()
assert seen == "ADDED", seen
step("watched ADDED")

got = core.read_namespaced_pod("py-pod", NS)
assert got.spec.containers[0].image == "busybox", got
core.patch_namespaced_pod("py-pod", NS, {"metadata": {"labels": {"patched": "yes"}}})
assert core.read_namespaced_pod("py-pod", NS).metadata.labels["patched"] == "yes"
step("patched a pod")

dep = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "py-web"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "py-web"}},
        "template": {
            "metadata": {"labels": {"app": "py-web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]},
        },
    },
}
apps.create_namespaced_deployment(NS, dep)
apps.patch_namespaced_deployment("py-web", NS, {"spec": {"replicas": 2}})
names = [d.metadata.name for d in apps.list_namespaced_deployment(NS).items]
assert "py-web" in names, names
deadline = time.time() + 30
while time.time() < deadline:
    d = apps.read_namespaced_deployment("py-web", NS)
    if d.spec.replicas == 2 and d.status and (d.status.ready_replicas or 0) == 2:
        break
    time.sleep(0.5)
else:
    raise AssertionError(f"the Deployment never had 2 ready replicas: {d.status}")
step("created and scaled a Deployment")

core.delete_namespaced_pod("py-pod", NS)
apps.delete_namespaced_deployment("py-web", NS)
deadline = time.time() + 30
while time.time() < deadline:
    try:
        core.read_namespaced_pod("py-pod", NS)
        time.sleep(0.5)
    except client.exceptions.ApiException as e:
        assert e.status == 404, e
        break
else:
    raise AssertionError("the pod was never deleted")
step("deleted")
print("ok")
