"""The official Python client's exec (websocket, v4.channel.k8s.io) against bramble-master.

Usage: kube_exec.py KUBECONFIG POD. Prints "ok" when every check passed.
"""

import sys

from kubernetes import client, config
from kubernetes.stream import stream

config.load_kube_config(sys.argv[1])
pod = sys.argv[2]
v1 = client.CoreV1Api()

out = stream(
    v1.connect_get_namespaced_pod_exec,
    pod,
    "default",
    command=["sh", "-c", "echo from-python"],
    stderr=True,
    stdin=False,
    stdout=True,
    tty=False,
)
assert out == "from-python\n", repr(out)

# Standard input in, an exit code out.
resp = stream(
    v1.connect_get_namespaced_pod_exec,
    pod,
    "default",
    command=["sh", "-c", "read x; echo got:$x; echo oops >&2; exit 7"],
    stderr=True,
    stdin=True,
    stdout=True,
    tty=False,
    _preload_content=False,
)
resp.write_stdin("hello\n")
resp.run_forever(timeout=20)
stdout, stderr = resp.read_stdout(), resp.read_stderr()
code = resp.returncode
resp.close()
assert stdout == "got:hello\n", repr(stdout)
assert stderr == "oops\n", repr(stderr)
assert code == 7, code
print("ok")
