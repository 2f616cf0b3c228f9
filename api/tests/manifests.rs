//! Manifest decoding: real manifests from the Kubernetes documentation parse unchanged, and
//! a table of malformed ones is refused with a message that names the field.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use bramble_api::manifest::{decode, parse_documents, parse_manifests};
use bramble_api::{Kind, Object};

const K8S_DOCS_DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx:1.14.2
        ports:
        - containerPort: 80
        env:
        - name: GREETING
          value: "hello"
        resources:
          requests:
            memory: "64Mi"
            cpu: "250m"
          limits:
            memory: "128Mi"
            cpu: 0.5
"#;

const K8S_DOCS_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: my-service
spec:
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - protocol: TCP
      port: 80
      targetPort: 9376
"#;

const K8S_DOCS_NODEPORT: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: my-service
spec:
  type: NodePort
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - port: 80
      targetPort: http-web-svc
      nodePort: 30007
"#;

#[test]
fn kubernetes_docs_manifests_parse_unchanged() {
    let text = format!("{K8S_DOCS_DEPLOYMENT}\n---\n{K8S_DOCS_SERVICE}\n---\n{K8S_DOCS_NODEPORT}");
    let docs = parse_manifests(&text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(docs.len(), 3);
    for d in &docs {
        assert!(
            d.warnings.is_empty(),
            "unexpected warnings {:?}",
            d.warnings
        );
    }
    let Object::Deployment(dep) = &docs[0].object else {
        panic!("not a deployment")
    };
    assert_eq!(dep.spec.replicas, Some(3));
    let c = &dep.spec.template.spec.containers[0];
    assert_eq!(c.image, "nginx:1.14.2");
    assert_eq!(c.ports[0].container_port, 80);
    assert_eq!(c.resources.requests["cpu"].millis(), 250);
    assert_eq!(c.resources.limits["cpu"].millis(), 500);
    assert_eq!(c.resources.limits["memory"].value(), 128 << 20);
    assert_eq!(c.env[0].value, "hello");
    let Object::Service(svc) = &docs[1].object else {
        panic!("not a service")
    };
    assert_eq!(svc.spec.selector["app.kubernetes.io/name"], "MyApp");
    assert_eq!(docs[2].object.kind(), Kind::Service);
}

#[test]
fn json_and_lists_are_accepted() {
    let json = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"edge"}},
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"edge"},
         "spec":{"containers":[{"name":"c","image":"busybox"}]}}]}"#;
    let docs = parse_manifests(json).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1].object.meta().namespace, "edge");
}

#[test]
fn safe_unknown_fields_warn_with_their_path() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  managedFields: []\nspec:\n  priorityClassName: x\n  containers:\n  - name: c\n    image: busybox\n";
    let docs = parse_manifests(text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        docs[0].warnings,
        vec![
            "unknown field \"metadata.managedFields\" ignored".to_string(),
            "unknown field \"spec.priorityClassName\" ignored".to_string()
        ]
    );
}

const POD_HEAD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n";
const DEP_HEAD: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  selector:\n    matchLabels: {app: a}\n  template:\n    metadata:\n      labels: {app: a}\n    spec:\n";
const SVC_HEAD: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n";

fn pod(spec: &str) -> String {
    format!("{POD_HEAD}{spec}")
}
fn dep(extra_spec: &str, pod_spec: &str) -> String {
    format!("{DEP_HEAD}{pod_spec}{extra_spec}")
}
fn svc(spec: &str) -> String {
    format!("{SVC_HEAD}{spec}")
}
fn ds(extra_spec: &str, pod_spec: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: d\nspec:\n  selector:\n    matchLabels: {{app: a}}\n  template:\n    metadata:\n      labels: {{app: a}}\n    spec:\n{pod_spec}{extra_spec}"
    )
}
fn job(spec: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: j\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: c, image: i}}]\n"
    )
}
fn cronjob(spec: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: cj\nspec:\n{spec}  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: OnFailure\n          containers: [{{name: c, image: i}}]\n"
    )
}
fn cm(body: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n{body}")
}
fn secret(body: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n{body}")
}
/// A container with one more field (env, envFrom, volumeMounts...).
fn with_c(extra: &str) -> String {
    pod(&format!(
        "  containers:\n  - name: c\n    image: a\n{extra}"
    ))
}

const C: &str = "  containers:\n  - name: c\n    image: busybox\n";
const DC: &str = "      containers:\n      - name: c\n        image: busybox\n";

/// Each case: the manifest and a fragment the error must contain (the field path, and for
/// some the reason).
fn bad_cases() -> Vec<(&'static str, String, &'static str)> {
    let big = format!("{POD_HEAD}{C}  # {}\n", "x".repeat(1 << 20));
    vec![
        ("not yaml", "apiVersion: v1\nkind: [Pod\n".into(), "invalid YAML"),
        ("tab indentation", "apiVersion: v1\nkind: Pod\n\tmetadata: {}\n".into(), "invalid YAML"),
        ("scalar document", "just a string\n".into(), "expected a mapping"),
        ("list document", "- a\n- b\n".into(), "expected a mapping"),
        ("missing kind", "apiVersion: v1\nmetadata: {name: x}\n".into(), "kind: Required value"),
        ("missing apiVersion", "kind: Pod\nmetadata: {name: x}\nspec:\n  containers: [{name: c, image: i}]\n".into(), "apiVersion: Required value"),
        ("unknown kind", "apiVersion: v1\nkind: Widget\nmetadata: {name: x}\n".into(), "kind: unknown kind \"Widget\""),
        ("kind not a string", "apiVersion: v1\nkind: 7\n".into(), "kind: expected a string"),
        ("wrong apiVersion", "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: x}\n".into(), "apiVersion: Deployment is served as \"apps/v1\""),
        ("oversized document", big, "more than the limit"),
        ("missing name", "apiVersion: v1\nkind: Pod\nmetadata: {}\nspec:\n  containers: [{name: c, image: i}]\n".into(), "metadata.name: Required value"),
        ("uppercase name", "apiVersion: v1\nkind: Pod\nmetadata: {name: Web}\nspec:\n  containers: [{name: c, image: i}]\n".into(), "metadata.name"),
        ("name too long", format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n", "a".repeat(64)), "metadata.name: must be no more than 63"),
        ("service name starts with digit", "apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\nspec:\n  ports: [{port: 80}]\n".into(), "metadata.name"),
        ("namespaced node", "apiVersion: v1\nkind: Node\nmetadata: {name: pi1, namespace: default}\n".into(), "metadata.namespace: Node is not namespaced"),
        ("bad label key", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {\"bad key\": x}\nspec:\n  containers: [{name: c, image: i}]\n".into(), "metadata.labels"),
        ("bad label value", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {app: \"-x\"}\nspec:\n  containers: [{name: c, image: i}]\n".into(), "metadata.labels[app]"),
        ("labels not a map", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: [a]\nspec:\n  containers: [{name: c, image: i}]\n".into(), "metadata.labels: invalid type"),
        ("no containers", pod("  containers: []\n"), "spec.containers: Required value"),
        ("containers not a list", pod("  containers: nginx\n"), "spec.containers: invalid type"),
        ("missing image", pod("  containers:\n  - name: c\n"), "spec.containers[0].image: Required value"),
        ("missing container name", pod("  containers:\n  - image: busybox\n"), "spec.containers[0].name: Required value"),
        ("duplicate container names", pod("  containers:\n  - {name: c, image: a}\n  - {name: c, image: b}\n"), "spec.containers[1].name: Duplicate value"),
        ("bad container name", pod("  containers:\n  - {name: C_1, image: a}\n"), "spec.containers[0].name"),
        ("image with whitespace", pod("  containers:\n  - {name: c, image: \"a b\"}\n"), "spec.containers[0].image"),
        ("port zero", pod("  containers:\n  - name: c\n    image: a\n    ports: [{containerPort: 0}]\n"), "spec.containers[0].ports[0].containerPort: must be between 1 and 65535"),
        ("port too high", pod("  containers:\n  - name: c\n    image: a\n    ports: [{containerPort: 70000}]\n"), "spec.containers[0].ports[0].containerPort"),
        ("port as text", pod("  containers:\n  - name: c\n    image: a\n    ports: [{containerPort: eighty}]\n"), "spec.containers[0].ports[0].containerPort: invalid type"),
        ("bad protocol", pod("  containers:\n  - name: c\n    image: a\n    ports: [{containerPort: 80, protocol: HTTP}]\n"), "spec.containers[0].ports[0].protocol"),
        ("bad cpu quantity", pod("  containers:\n  - name: c\n    image: a\n    resources: {limits: {cpu: lots}}\n"), "spec.containers[0].resources.limits.cpu"),
        ("bad memory suffix", pod("  containers:\n  - name: c\n    image: a\n    resources: {requests: {memory: 12XB}}\n"), "spec.containers[0].resources.requests.memory"),
        ("negative memory", pod("  containers:\n  - name: c\n    image: a\n    resources: {requests: {memory: -1Mi}}\n"), "spec.containers[0].resources.requests.memory: must be >= 0"),
        ("request above limit", pod("  containers:\n  - name: c\n    image: a\n    resources: {requests: {memory: 1Gi}, limits: {memory: 512Mi}}\n"), "spec.containers[0].resources.requests.memory: must be less than or equal"),
        ("unknown resource", pod("  containers:\n  - name: c\n    image: a\n    resources: {limits: {gpus: 1}}\n"), "spec.containers[0].resources.limits.gpus: unknown resource"),
        ("bad restart policy", pod(&format!("{C}  restartPolicy: Sometimes\n")), "spec.restartPolicy: unsupported value \"Sometimes\""),
        ("negative grace period", pod(&format!("{C}  terminationGracePeriodSeconds: -5\n")), "spec.terminationGracePeriodSeconds: must be >= 0"),
        ("startup probe unsupported", pod("  containers:\n  - name: c\n    image: a\n    startupProbe: {exec: {command: [true]}}\n"), "spec.containers[0].startupProbe: not supported"),
        ("csi volume unsupported", pod(&format!("{C}  volumes:\n  - name: v\n    csi: {{driver: x}}\n")), "spec.volumes[0].csi: volume source \"csi\" is not supported"),
        ("mount of missing volume", pod("  containers:\n  - name: c\n    image: a\n    volumeMounts: [{name: data, mountPath: /data}]\n"), "spec.containers[0].volumeMounts[0].name: Not found"),
        ("relative mount path", pod("  containers:\n  - name: c\n    image: a\n    volumeMounts: [{name: v, mountPath: data}]\n  volumes: [{name: v, emptyDir: {}}]\n"), "spec.containers[0].volumeMounts[0].mountPath"),
        ("relative hostPath", pod(&format!("{C}  volumes: [{{name: v, hostPath: {{path: etc}}}}]\n")), "spec.volumes[0].hostPath.path"),
        ("replicaset selector does not match its template", "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: r}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec:\n      containers: [{name: c, image: i}]\n".into(), "spec.template.metadata.labels: Invalid value: `selector`"),
        ("replicaset negative replicas", "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: r}\nspec:\n  replicas: -3\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n    spec:\n      containers: [{name: c, image: i}]\n".into(), "spec.replicas: must be >= 0, got -3"),
        ("init container named like an app container", pod("  initContainers: [{name: c, image: a}]\n  containers: [{name: c, image: b}]\n"), "spec.containers[0].name: Duplicate value"),
        ("init container restartPolicy OnFailure", pod(&format!("  initContainers: [{{name: i, image: a, restartPolicy: OnFailure}}]\n{C}")), "spec.initContainers[0].restartPolicy: unsupported value \"OnFailure\""),
        ("app container restartPolicy", pod("  containers: [{name: c, image: a, restartPolicy: Always}]\n"), "spec.containers[0].restartPolicy: Forbidden"),
        ("probe on a plain init container", pod(&format!("  initContainers: [{{name: i, image: a, readinessProbe: {{exec: {{command: [\"true\"]}}}}}}]\n{C}")), "spec.initContainers[0].readinessProbe: Forbidden"),
        ("init container without image", pod(&format!("  initContainers: [{{name: i}}]\n{C}")), "spec.initContainers[0].image: Required value"),
        ("preStop with two handlers", pod("  containers:\n  - name: c\n    image: a\n    lifecycle: {preStop: {exec: {command: [\"true\"]}, sleep: {seconds: 1}}}\n"), "spec.containers[0].lifecycle.preStop: must specify exactly one"),
        ("postStart httpGet to a missing port", pod("  containers:\n  - name: c\n    image: a\n    lifecycle: {postStart: {httpGet: {port: web}}}\n"), "spec.containers[0].lifecycle.postStart.httpGet.port"),
        ("preStop sleep too long", pod("  containers:\n  - name: c\n    image: a\n    lifecycle: {preStop: {sleep: {seconds: 7200}}}\n"), "spec.containers[0].lifecycle.preStop.sleep.seconds"),
        ("lifecycle on a plain init container", pod(&format!("  initContainers: [{{name: i, image: a, lifecycle: {{preStop: {{sleep: {{seconds: 1}}}}}}}}]\n{C}")), "spec.initContainers[0].lifecycle: Forbidden"),
        ("daemonset selector does not match its template", "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec:\n      containers: [{name: c, image: i}]\n".into(), "spec.template.metadata.labels: Invalid value: `selector`"),
        ("daemonset without selector", "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\nspec:\n  template:\n    metadata: {labels: {app: b}}\n    spec:\n      containers: [{name: c, image: i}]\n".into(), "spec.selector: Required value: a DaemonSet needs a non-empty selector"),
        ("daemonset bad update strategy", ds("  updateStrategy: {type: Recreate}\n", DC), "spec.updateStrategy.type: unsupported value \"Recreate\""),
        ("daemonset OnDelete with rollingUpdate", ds("  updateStrategy: {type: OnDelete, rollingUpdate: {maxUnavailable: 1}}\n", DC), "spec.updateStrategy.rollingUpdate: may not be specified"),
        ("daemonset zero unavailable without surge", ds("  updateStrategy: {rollingUpdate: {maxUnavailable: 0}}\n", DC), "spec.updateStrategy.rollingUpdate.maxUnavailable: may not be 0"),
        ("daemonset surge and unavailable both set", ds("  updateStrategy: {rollingUpdate: {maxUnavailable: 1, maxSurge: 1}}\n", DC), "maxSurge and maxUnavailable may not both be non-zero"),
        ("daemonset bad maxUnavailable", ds("  updateStrategy: {rollingUpdate: {maxUnavailable: 120%}}\n", DC), "spec.updateStrategy.rollingUpdate.maxUnavailable"),
        ("daemonset negative minReadySeconds", ds("  minReadySeconds: -1\n", DC), "spec.minReadySeconds: must be >= 0"),
        ("daemonset template restart policy", ds("", "      restartPolicy: OnFailure\n      containers: [{name: c, image: i}]\n"), "spec.template.spec.restartPolicy"),
        ("job negative completions", job("  completions: -1\n"), "spec.completions: must be >= 0, got -1"),
        ("job negative parallelism", job("  parallelism: -2\n"), "spec.parallelism: must be >= 0"),
        ("job negative backoffLimit", job("  backoffLimit: -1\n"), "spec.backoffLimit: must be >= 0"),
        ("job zero deadline", job("  activeDeadlineSeconds: 0\n"), "spec.activeDeadlineSeconds: must be greater than 0"),
        ("job negative ttl", job("  ttlSecondsAfterFinished: -5\n"), "spec.ttlSecondsAfterFinished: must be >= 0"),
        ("job indexed without completions", job("  completionMode: Indexed\n"), "spec.completions: Required value: when completionMode is Indexed"),
        ("job bad completion mode", job("  completionMode: Sometimes\n"), "spec.completionMode: unsupported value"),
        ("job restartPolicy Always", "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec:\n      restartPolicy: Always\n      containers: [{name: c, image: i}]\n".into(), "spec.template.spec.restartPolicy: unsupported value \"Always\": must be OnFailure or Never"),
        ("job without restartPolicy", "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec:\n      containers: [{name: c, image: i}]\n".into(), "spec.template.spec.restartPolicy"),
        ("job selector not matching", job("  selector: {matchLabels: {app: x}}\n"), "spec.selector: Invalid value"),
        ("cronjob minute 61", cronjob("  schedule: \"61 * * * *\"\n"), "spec.schedule: invalid schedule \"61 * * * *\": minute: 61 is out of range 0-59"),
        ("cronjob without schedule", cronjob(""), "spec.schedule: Required value"),
        ("cronjob four fields", cronjob("  schedule: \"* * * *\"\n"), "spec.schedule: invalid schedule"),
        ("cronjob unknown macro", cronjob("  schedule: \"@sometimes\"\n"), "unknown macro"),
        ("cronjob bad concurrency policy", cronjob("  schedule: \"@hourly\"\n  concurrencyPolicy: Sometimes\n"), "spec.concurrencyPolicy: unsupported value"),
        ("cronjob negative history", cronjob("  schedule: \"@hourly\"\n  successfulJobsHistoryLimit: -1\n"), "spec.successfulJobsHistoryLimit: must be >= 0"),
        ("cronjob bad time zone", cronjob("  schedule: \"@hourly\"\n  timeZone: ../../etc/passwd\n"), "spec.timeZone"),
        ("cronjob TZ in schedule", cronjob("  schedule: \"TZ=UTC 0 * * * *\"\n"), "use spec.timeZone"),
        ("cronjob template restartPolicy Always", "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: cj}\nspec:\n  schedule: \"@daily\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Always\n          containers: [{name: c, image: i}]\n".into(), "spec.jobTemplate.spec.template.spec.restartPolicy"),
        ("cronjob job completions -1", cronjob("  schedule: \"@daily\"\n").replace("    spec:\n      template:", "    spec:\n      completions: -1\n      template:"), "spec.jobTemplate.spec.completions: must be >= 0"),
        ("cronjob name too long", cronjob("  schedule: \"@daily\"\n").replace("name: cj", &format!("name: {}", "c".repeat(53))), "metadata.name: must be no more than 52 characters"),
        ("configmap key not a file name", cm("data:\n  \"a/b\": x\n"), "data[a/b]: \"a/b\" is not a valid key"),
        ("configmap key dot-dot", cm("data:\n  ..data: x\n"), "data[..data]"),
        ("configmap key in data and binaryData", cm("data: {k: x}\nbinaryData: {k: eA==}\n"), "binaryData[k]: Duplicate value"),
        ("configmap binaryData not base64", cm("binaryData: {k: \"!!\"}\n"), "binaryData[k]: is not valid base64"),
        ("configmap data not a string map", cm("data: [a, b]\n"), "data: invalid type"),
        ("secret tls without tls.key", secret("type: kubernetes.io/tls\nstringData: {tls.crt: CERT}\n"), "data[tls.key]: Required value"),
        ("secret dockerconfigjson not json", secret("type: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: \"{nope\"}\n"), "data[.dockerconfigjson]: is not valid JSON"),
        ("secret basic-auth without user or password", secret("type: kubernetes.io/basic-auth\nstringData: {other: x}\n"), "needs username or password"),
        ("secret ssh-auth without key", secret("type: kubernetes.io/ssh-auth\n"), "data[ssh-privatekey]: Required value"),
        ("secret data not base64", secret("data: {password: \"not base64!\"}\n"), "data[password]: is not valid base64"),
        ("secret bad key", secret("stringData: {\"a b\": x}\n"), "stringData[a b]"),
        ("secret type with spaces", secret("type: \"my type\"\n"), "type: must be"),
        ("env valueFrom and value", with_c("    env: [{name: X, value: v, valueFrom: {configMapKeyRef: {name: c, key: k}}}]\n"), "spec.containers[0].env[0].value: may not be specified"),
        ("env valueFrom with two sources", with_c("    env: [{name: X, valueFrom: {configMapKeyRef: {name: c, key: k}, secretKeyRef: {name: s, key: k}}}]\n"), "spec.containers[0].env[0].valueFrom: must specify exactly one"),
        ("env valueFrom empty", with_c("    env: [{name: X, valueFrom: {}}]\n"), "spec.containers[0].env[0].valueFrom: must specify exactly one"),
        ("configMapKeyRef without name", with_c("    env: [{name: X, valueFrom: {configMapKeyRef: {key: k}}}]\n"), "spec.containers[0].env[0].valueFrom.configMapKeyRef.name: Required value"),
        ("secretKeyRef bad key", with_c("    env: [{name: X, valueFrom: {secretKeyRef: {name: s, key: \"../k\"}}}]\n"), "spec.containers[0].env[0].valueFrom.secretKeyRef.key"),
        ("fieldRef unsupported path", with_c("    env: [{name: X, valueFrom: {fieldRef: {fieldPath: spec.containers}}}]\n"), "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: unsupported value"),
        ("fieldRef whole labels in env", with_c("    env: [{name: X, valueFrom: {fieldRef: {fieldPath: metadata.labels}}}]\n"), "valueFrom.fieldRef.fieldPath"),
        ("resourceFieldRef bad resource", with_c("    env: [{name: X, valueFrom: {resourceFieldRef: {resource: limits.gpu}}}]\n"), "valueFrom.resourceFieldRef.resource: unsupported value"),
        ("resourceFieldRef other container", with_c("    env: [{name: X, valueFrom: {resourceFieldRef: {containerName: other, resource: limits.cpu}}}]\n"), "valueFrom.resourceFieldRef.containerName: Not found"),
        ("envFrom with both refs", with_c("    envFrom: [{configMapRef: {name: a}, secretRef: {name: b}}]\n"), "spec.containers[0].envFrom[0]: must specify exactly one"),
        ("envFrom bad name", with_c("    envFrom: [{secretRef: {name: Bad_Name}}]\n"), "spec.containers[0].envFrom[0].secretRef.name"),
        ("configMap volume without name", pod(&format!("{C}  volumes: [{{name: v, configMap: {{}}}}]\n")), "spec.volumes[0].configMap.name: Required value"),
        ("secret volume item path escapes", pod(&format!("{C}  volumes: [{{name: v, secret: {{secretName: s, items: [{{key: k, path: ../../etc/passwd}}]}}}}]\n")), "spec.volumes[0].secret.items[0].path"),
        ("secret volume absolute item path", pod(&format!("{C}  volumes: [{{name: v, secret: {{secretName: s, items: [{{key: k, path: /etc/x}}]}}}}]\n")), "must be a relative path"),
        ("volume defaultMode too large", pod(&format!("{C}  volumes: [{{name: v, configMap: {{name: c, defaultMode: 4096}}}}]\n")), "spec.volumes[0].configMap.defaultMode: must be a number between 0 and 0777"),
        ("two volume sources", pod(&format!("{C}  volumes: [{{name: v, emptyDir: {{}}, secret: {{secretName: s}}}}]\n")), "spec.volumes[0]: may not specify more than one volume source"),
        ("projected source with two kinds", pod(&format!("{C}  volumes: [{{name: v, projected: {{sources: [{{configMap: {{name: a}}, secret: {{name: b}}}}]}}}}]\n")), "spec.volumes[0].projected.sources[0]: must specify exactly one"),
        ("projected duplicate paths", pod(&format!("{C}  volumes: [{{name: v, projected: {{sources: [{{configMap: {{name: a, items: [{{key: k, path: f}}]}}}}, {{secret: {{name: b, items: [{{key: k, path: f}}]}}}}]}}}}]\n")), "spec.volumes[0].projected.sources[1].secret.items[0].path: Duplicate value"),
        ("projected service account token unsupported", pod(&format!("{C}  volumes: [{{name: v, projected: {{sources: [{{serviceAccountToken: {{path: token}}}}]}}}}]\n")), "serviceAccountToken: not supported"),
        ("downwardAPI item without a source", pod(&format!("{C}  volumes: [{{name: v, downwardAPI: {{items: [{{path: labels}}]}}}}]\n")), "spec.volumes[0].downwardAPI.items[0]: must specify exactly one"),
        ("downwardAPI resource without container", pod(&format!("{C}  volumes: [{{name: v, downwardAPI: {{items: [{{path: cpu, resourceFieldRef: {{resource: limits.cpu}}}}]}}}}]\n")), "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.containerName: Required value"),
        ("configmap over 1 MiB", cm(&format!("data:\n  a: {}\n  b: {}\n", "x".repeat(600_000), "y".repeat(600_000))), "more than the limit"),
        ("env without name", pod("  containers:\n  - name: c\n    image: a\n    env: [{value: x}]\n"), "spec.containers[0].env[0].name: Required value"),
        ("negative replicas", dep("  replicas: -1\n", DC), "spec.replicas: must be >= 0, got -1"),
        ("replicas as text", dep("  replicas: three\n", DC), "spec.replicas: invalid type"),
        ("selector mismatch", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec:\n      containers: [{name: c, image: i}]\n".into(), "spec.template.metadata.labels: Invalid value: `selector`"),
        ("empty selector", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    metadata: {labels: {app: b}}\n    spec:\n      containers: [{name: c, image: i}]\n".into(), "spec.selector: Required value"),
        ("bad selector operator", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchExpressions: [{key: app, operator: Near}]}\n  template:\n    metadata: {labels: {app: b}}\n    spec:\n      containers: [{name: c, image: i}]\n".into(), "spec.selector.matchExpressions[0].operator"),
        ("template restart policy", dep("", "      restartPolicy: Never\n      containers: [{name: c, image: i}]\n"), "spec.template.spec.restartPolicy"),
        ("template duplicate containers", dep("", "      containers: [{name: c, image: i}, {name: c, image: j}]\n"), "spec.template.spec.containers[1].name: Duplicate value"),
        ("bad strategy type", dep("  strategy: {type: BlueGreen}\n", DC), "spec.strategy.type"),
        ("bad maxSurge", dep("  strategy: {rollingUpdate: {maxSurge: 150%}}\n", DC), "spec.strategy.rollingUpdate.maxSurge"),
        ("zero surge and unavailable", dep("  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 0}}\n", DC), "spec.strategy.rollingUpdate.maxUnavailable: may not be 0"),
        ("template startup probe", dep("", "      containers:\n      - name: c\n        image: i\n        startupProbe: {httpGet: {port: 80}}\n"), "spec.template.spec.containers[0].startupProbe"),
        ("service without ports", svc("  selector: {app: a}\n"), "spec.ports: Required value"),
        ("service port out of range", svc("  ports: [{port: 0}]\n"), "spec.ports[0].port: must be between 1 and 65535"),
        ("service unnamed ports", svc("  ports: [{port: 80}, {port: 81}]\n"), "spec.ports[0].name: Required value"),
        ("service bad type", svc("  type: Magic\n  ports: [{port: 80}]\n"), "spec.type: unsupported value"),
        ("ExternalName without a name", svc("  type: ExternalName\n"), "spec.externalName: Required value"),
        ("ExternalName not a DNS name", svc("  type: ExternalName\n  externalName: \"not a name\"\n"), "spec.externalName"),
        ("ExternalName with a clusterIP", svc("  type: ExternalName\n  externalName: db.example.com\n  clusterIP: 10.43.0.9\n"), "spec.clusterIP: may not be set"),
        ("externalName on a ClusterIP Service", svc("  externalName: db.example.com\n  ports: [{port: 80}]\n"), "spec.externalName: may not be set"),
        ("service bad targetPort name", svc("  ports: [{port: 80, targetPort: \"Not_A_Name\"}]\n"), "spec.ports[0].targetPort"),
        ("nodePort on ClusterIP", svc("  ports: [{port: 80, nodePort: 30001}]\n"), "spec.ports[0].nodePort: may not be used"),
        ("bad clusterIP", svc("  clusterIP: 10.43.0.300\n  ports: [{port: 80}]\n"), "spec.clusterIP"),
        ("targetPort out of i32", svc("  ports: [{port: 80, targetPort: 99999999999}]\n"), "spec.ports[0].targetPort"),
        ("probe with two handlers", pod("  containers:\n  - name: c\n    image: a\n    livenessProbe: {exec: {command: [\"true\"]}, tcpSocket: {port: 80}}\n"), "spec.containers[0].livenessProbe: must specify exactly one"),
        ("probe on a missing named port", pod("  containers:\n  - name: c\n    image: a\n    readinessProbe: {httpGet: {port: web}}\n"), "spec.containers[0].readinessProbe.httpGet.port"),
        ("probe period zero", pod("  containers:\n  - name: c\n    image: a\n    readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 0}\n"), "spec.containers[0].readinessProbe.periodSeconds: must be >= 1"),
        ("bad dnsPolicy", pod(&format!("{C}  dnsPolicy: Google\n")), "spec.dnsPolicy: unsupported value \"Google\""),
        ("dnsPolicy None without dnsConfig", pod(&format!("{C}  dnsPolicy: None\n")), "spec.dnsConfig: Required value"),
        ("dnsPolicy None without nameservers", pod(&format!("{C}  dnsPolicy: None\n  dnsConfig: {{searches: [a.b]}}\n")), "spec.dnsConfig.nameservers: Required value"),
        ("four nameservers", pod(&format!("{C}  dnsConfig: {{nameservers: [1.1.1.1, 1.0.0.1, 8.8.8.8, 9.9.9.9]}}\n")), "spec.dnsConfig.nameservers: Too many: 4"),
        ("nameserver not an address", pod(&format!("{C}  dnsConfig: {{nameservers: [dns.example]}}\n")), "spec.dnsConfig.nameservers[0]"),
        ("bad search domain", pod(&format!("{C}  dnsConfig: {{searches: [\"Bad_Domain\"]}}\n")), "spec.dnsConfig.searches[0]"),
        ("option with spaces", pod(&format!("{C}  dnsConfig: {{options: [{{name: ndots, value: \"5 6\"}}]}}\n")), "spec.dnsConfig.options[0].value"),
        ("host alias bad ip", pod(&format!("{C}  hostAliases: [{{ip: 300.1.1.1, hostnames: [a]}}]\n")), "spec.hostAliases[0].ip"),
        ("host alias bad name", pod(&format!("{C}  hostAliases: [{{ip: 10.1.1.1, hostnames: [\"a b\"]}}]\n")), "spec.hostAliases[0].hostnames[0]"),
        ("bad subdomain", pod(&format!("{C}  subdomain: Not.A.Label\n")), "spec.subdomain"),
        ("spread maxSkew 0", pod(&format!("{C}  topologySpreadConstraints: [{{maxSkew: 0, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}}]\n")), "spec.topologySpreadConstraints[0].maxSkew: must be greater than zero"),
        ("spread without topologyKey", pod(&format!("{C}  topologySpreadConstraints: [{{maxSkew: 1, whenUnsatisfiable: DoNotSchedule}}]\n")), "spec.topologySpreadConstraints[0].topologyKey: Required value"),
        ("spread bad whenUnsatisfiable", pod(&format!("{C}  topologySpreadConstraints: [{{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: Sometimes}}]\n")), "spec.topologySpreadConstraints[0].whenUnsatisfiable: unsupported value"),
        ("spread minDomains with ScheduleAnyway", pod(&format!("{C}  topologySpreadConstraints: [{{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway, minDomains: 2}}]\n")), "spec.topologySpreadConstraints[0].minDomains"),
        ("spread bad selector", dep("", &format!("{DC}      topologySpreadConstraints: [{{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchExpressions: [{{key: app, operator: Near}}]}}}}]\n")), "spec.template.spec.topologySpreadConstraints[0].labelSelector.matchExpressions[0].operator"),
        ("spread bad policy", pod(&format!("{C}  topologySpreadConstraints: [{{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule, nodeTaintsPolicy: Maybe}}]\n")), "spec.topologySpreadConstraints[0].nodeTaintsPolicy"),
        ("node taint bad effect", "apiVersion: v1\nkind: Node\nmetadata: {name: pi1}\nspec:\n  taints: [{key: k, effect: Sometimes}]\n".into(), "spec.taints[0].effect"),
    ]
}

#[test]
fn malformed_manifests_name_the_field() {
    let cases = bad_cases();
    assert!(cases.len() >= 151, "only {} cases", cases.len());
    for (label, text, want) in cases {
        let err = match parse_manifests(&text) {
            Ok(d) => panic!("{label}: accepted: {:?}", d[0].object),
            Err(e) => e,
        };
        let msg: Vec<String> = err.iter().map(|e| e.to_string()).collect();
        let msg = msg.join("\n");
        assert!(
            msg.contains(want),
            "{label}: message {msg:?} does not contain {want:?}"
        );
    }
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let text =
        pod("  restartPolicy: Sometimes\n  containers:\n  - {name: c}\n  - {name: c, image: i}\n");
    let err = parse_manifests(&text).unwrap_err();
    let fields: Vec<&str> = err[0].errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "spec.containers[0].image",
            "spec.containers[1].name",
            "spec.restartPolicy"
        ]
    );
    assert_eq!(err[0].what, "pod \"p\"");
}

#[test]
fn bad_document_is_numbered_in_a_multi_document_file() {
    let text = format!("{}\n---\napiVersion: v1\nkind: Widget\n", pod(C));
    let err = parse_manifests(&text).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].what, "document 2");
}

#[test]
fn decoded_objects_round_trip_through_json() {
    let docs = parse_manifests(K8S_DOCS_DEPLOYMENT).unwrap_or_else(|e| panic!("{e:?}"));
    let obj = &docs[0].object;
    let value: serde_json::Value = serde_json::from_slice(&obj.to_json()).unwrap();
    let again = decode(value).unwrap();
    assert_eq!(&again.object, obj);
    assert!(again.warnings.is_empty());
    assert_eq!(parse_documents("---\n---\n").unwrap().len(), 0);
}

#[test]
fn data_over_one_mebibyte_is_refused_by_validation_too() {
    // Past the API's body limit a manifest never gets here; an object built otherwise does.
    let mut c = bramble_api::config::ConfigMap::default();
    c.metadata.name = "big".into();
    c.data.insert("a".into(), "x".repeat(700_000));
    c.binary_data
        .insert("b".into(), bramble_api::config::encode(&vec![0u8; 400_000]));
    let errors = bramble_api::validate::validate(&Object::ConfigMap(c));
    assert!(
        errors
            .iter()
            .any(|e| e.path == "data" && e.message.contains("Too long")),
        "{errors:?}"
    );
}

#[test]
fn no_error_quotes_a_secret_value() {
    for text in [
        secret("data: {password: 123456789}\n"),
        secret("data: {password: \"hunter2-is-not-base64!\"}\n"),
        secret("stringData: {password: [123456789]}\n"),
        secret(
            "type: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: \"{hunter2\"}\n",
        ),
    ] {
        let err = parse_manifests(&text).unwrap_err();
        let msg = err
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            msg.contains("password") || msg.contains("dockerconfigjson"),
            "{msg}"
        );
        assert!(
            !msg.contains("123456789") && !msg.contains("hunter2"),
            "{msg}"
        );
    }
}

/// The Kubernetes docs' "Configure a Pod to Use a ConfigMap" examples, in one pod.
const K8S_DOCS_CONFIGMAP_POD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: game-demo
data:
  player_initial_lives: "3"
  ui_properties_file_name: "user-interface.properties"
  game.properties: |
    enemy.types=aliens,monsters
    player.maximum-lives=5
---
apiVersion: v1
kind: Secret
metadata:
  name: db
type: kubernetes.io/basic-auth
stringData:
  username: admin
data:
  password: czNjcjN0
---
apiVersion: v1
kind: Pod
metadata:
  name: configmap-demo-pod
spec:
  containers:
    - name: demo
      image: alpine
      command: ["sleep", "3600"]
      env:
        - name: PLAYER_INITIAL_LIVES
          valueFrom:
            configMapKeyRef:
              name: game-demo
              key: player_initial_lives
        - name: DB_PASSWORD
          valueFrom:
            secretKeyRef: {name: db, key: password, optional: false}
        - name: MY_NODE_NAME
          valueFrom:
            fieldRef: {fieldPath: spec.nodeName}
        - name: MY_CPU_LIMIT
          valueFrom:
            resourceFieldRef: {resource: limits.cpu, divisor: 1m}
      envFrom:
        - prefix: CFG_
          configMapRef: {name: game-demo}
      volumeMounts:
      - name: config
        mountPath: "/config"
        readOnly: true
      - name: all
        mountPath: /all
  volumes:
    - name: config
      configMap:
        name: game-demo
        items:
        - key: "game.properties"
          path: "game.properties"
    - name: all
      projected:
        defaultMode: 0440
        sources:
        - secret: {name: db, items: [{key: username, path: my-group/my-username}]}
        - downwardAPI:
            items:
            - {path: labels, fieldRef: {fieldPath: metadata.labels}}
            - {path: cpu_limit, resourceFieldRef: {containerName: demo, resource: limits.cpu}}
"#;

#[test]
fn configmaps_secrets_and_the_pods_that_read_them_parse() {
    let docs = parse_manifests(K8S_DOCS_CONFIGMAP_POD).unwrap();
    assert!(docs.iter().all(|d| d.warnings.is_empty()), "{docs:?}");
    let Object::ConfigMap(c) = &docs[0].object else {
        panic!()
    };
    assert_eq!(c.entries()["player_initial_lives"], b"3");
    let Object::Secret(s) = &docs[1].object else {
        panic!()
    };
    let mut s = s.clone();
    s.normalize();
    assert!(s.string_data.is_empty());
    assert_eq!(s.entries()["username"], b"admin");
    assert_eq!(s.entries()["password"], b"s3cr3t");
    let Object::Pod(p) = &docs[2].object else {
        panic!()
    };
    let refs: Vec<String> = p.spec.config_refs().iter().map(|r| r.describe()).collect();
    assert_eq!(refs, ["configmap \"game-demo\"", "secret \"db\""]);
    assert!(p.spec.config_refs().iter().all(|r| !r.optional));
    assert_eq!(
        p.spec.volumes[1].projected.as_ref().unwrap().default_mode,
        Some(0o440)
    );
}
