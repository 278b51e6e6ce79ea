"""deploy/kubernetes runs as shipped: every resource is valid against the Kubernetes schemas,
and everything one resource names in another exists (Secrets and their keys, ConfigMaps,
Services, ports, labels, volumes), including what the gateway's own configuration names."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from cryptography import x509

from gateway.config import GatewayConfig
from tandem.configfile import load_config
from tests.deploy.conftest import KUBERNETES
from tests.deploy.kustomize import Install, containers, pod_labels, pod_spec, render

# The oldest Kubernetes the manifests are for (PodDisruptionBudget policy/v1, Ingress v1 and
# appProtocol all exist from 1.21 on; this is what current managed clusters run).
KUBERNETES_VERSION = "1.31"
# Custom resources: not in the Kubernetes schemas; each has its own structural test below.
CUSTOM_KINDS = {"ScaledObject"}
GATEWAY = "tandem-gateway"
VLLM = "vllm-qwen3-14b"


@pytest.fixture(scope="module")
def install(cluster_secrets: Path) -> Install:
    return render(KUBERNETES, cluster_secrets)


def gateway_config(install: Install) -> GatewayConfig:
    """The ConfigMap's file, loaded the way `tandem gateway serve` loads it."""
    (path,) = install.generated[("ConfigMap", "tandem-gateway-config")].values()
    return load_config(GatewayConfig, path, env={})


def container(install: Install, kind: str, name: str) -> dict[str, Any]:
    (found,) = containers(install.get(kind, name))
    return found


def env_from(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def mount_for(install: Install, workload: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volume a file path in a container lies on, and the path inside that volume."""
    (c,) = containers(workload)
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for m in sorted(c["volumeMounts"], key=lambda m: -len(m["mountPath"])):
        mount = m["mountPath"].rstrip("/")
        if path == mount or path.startswith(mount + "/"):
            inside = m.get("subPath") or path[len(mount) :].lstrip("/")
            return volumes.get(m["name"], {"name": m["name"]}), inside
    raise AssertionError(f"{path} is on no volume of {workload['metadata']['name']}")


def secret_key_exists(install: Install, secret: str, key: str) -> bool:
    return key in install.generated.get(("Secret", secret), {})


# --- schemas ------------------------------------------------------------------------------------


def test_every_resource_is_valid_against_the_kubernetes_schemas(install: Install) -> None:
    validated = []
    for doc in install.resources:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        # strict: an unknown field (a typo, a field of another API version) is an error too
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        validated.append(doc["kind"])
    assert sorted(set(validated)) == [
        "ConfigMap", "Deployment", "Ingress", "Namespace", "NetworkPolicy", "PersistentVolumeClaim",
        "PodDisruptionBudget", "Secret", "Service", "StatefulSet",
    ]  # fmt: skip
    assert len(validated) + len(install.of_kind("ScaledObject")) == len(install.resources)


def test_the_schema_validation_is_offline(install: Install, tmp_path: Path) -> None:
    """kubernetes-validate reads the schemas it ships; it must not try the network (an audit
    hook turns any socket connection or name lookup into an error in a fresh interpreter)."""
    docs = tmp_path / "docs.json"
    docs.write_text(json.dumps([d for d in install.resources if d["kind"] not in CUSTOM_KINDS]))
    script = (
        "import json, sys\n"
        "def refuse(event, args):\n"
        "    if event in ('socket.connect', 'socket.getaddrinfo', 'urllib.Request'):\n"
        "        raise RuntimeError(f'network use: {event} {args!r}')\n"
        "sys.addaudithook(refuse)\n"
        "import kubernetes_validate\n"
        f"docs = json.load(open({str(docs)!r}))\n"
        f"for d in docs: kubernetes_validate.validate(d, {KUBERNETES_VERSION!r}, strict=True)\n"
        "print(len(docs))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(install.resources) - len(install.of_kind("ScaledObject"))


def test_a_resource_with_a_wrong_field_fails_the_validation(install: Install) -> None:
    """The check above can fail: a misspelt field in a real resource is caught."""
    broken = json.loads(json.dumps(install.get("Deployment", GATEWAY)))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_everything_is_in_the_install_namespace(install: Install) -> None:
    assert install.get("Namespace", install.namespace)
    for doc in install.resources:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == install.namespace


# --- references between resources ----------------------------------------------------------


def test_every_secret_and_configmap_a_pod_names_exists_with_its_keys(install: Install) -> None:
    checked = 0
    for workload in install.workloads():
        spec = pod_spec(workload)
        for c in containers(workload):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref.get("optional") or secret_key_exists(install, ref["name"], ref["key"]), ref
                    checked += 1
        for v in spec.get("volumes", []):
            if "secret" in v:
                name = v["secret"]["secretName"]
                assert ("Secret", name) in install.generated, name
                for item in v["secret"].get("items", []):
                    assert secret_key_exists(install, name, item["key"]), item
                checked += 1
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in install.generated
                checked += 1
            if "persistentVolumeClaim" in v:
                assert install.get("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
                checked += 1
        for c in containers(workload):
            names = {v["name"] for v in spec.get("volumes", [])}
            names |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
            assert {m["name"] for m in c.get("volumeMounts", [])} <= names
    assert checked >= 12


def test_make_secrets_writes_every_file_the_kustomization_reads(
    install: Install, cluster_secrets: Path
) -> None:
    for files in install.generated.values():
        for path in files.values():
            assert path.is_file() and path.stat().st_size > 0, path
            if path.parent == cluster_secrets:
                assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
                # A value file with a trailing newline would put it into the environment variable.
                if "." not in path.name and path.name != "htpasswd":
                    assert not path.read_text().endswith("\n"), path


def test_services_select_their_pods_by_label_and_name_real_ports(install: Install) -> None:
    for svc in install.of_kind("Service"):
        workload = install.workload_selected_by(svc["spec"]["selector"])
        ports = {p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports if isinstance(target, str) else target in ports.values(), (svc, port)


def test_probes_name_ports_their_container_has(install: Install) -> None:
    for workload in install.workloads():
        for c in containers(workload):
            names = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                action = c.get(probe, {})
                port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                if isinstance(port, str):
                    assert port in names, (workload["metadata"]["name"], probe, port)
            assert "readinessProbe" in c and "livenessProbe" in c, c["name"]


def test_the_pdb_covers_the_gateway_pods(install: Install) -> None:
    (pdb,) = install.of_kind("PodDisruptionBudget")
    workload = install.workload_selected_by(pdb["spec"]["selector"]["matchLabels"])
    assert workload["metadata"]["name"] == GATEWAY
    assert workload["spec"]["replicas"] > pdb["spec"]["minAvailable"] >= 1


def test_ingresses_route_to_service_ports_with_tls_for_their_hosts(
    install: Install, cluster_secrets: Path
) -> None:
    routed = {}
    for ing in install.of_kind("Ingress"):
        (tls,) = ing["spec"]["tls"]
        hosts = {rule["host"] for rule in ing["spec"]["rules"]}
        assert hosts == set(tls["hosts"])
        cert_file = install.generated[("Secret", tls["secretName"])]["tls.crt"]
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        names = set(
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName
            )
        )
        assert hosts <= names, f"{tls['secretName']} does not name {hosts - names}"
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(cluster_secrets / "ca.crt"), str(cert_file)],
            capture_output=True,
        )
        assert verify.returncode == 0, verify.stdout
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = install.get("Service", backend["name"])
                assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
                annotations = ing["metadata"]["annotations"]
                routed[(backend["name"], backend["port"]["name"])] = (path["path"], annotations)
    protocol = "nginx.ingress.kubernetes.io/backend-protocol"
    # gRPC to the gateway (over TLS to the pod, which serves TLS itself); its OpenAI API under
    # /v1 only (not /metrics); HTTPS to the registry, with no limit on a layer's size.
    assert set(routed) == {(GATEWAY, "grpc"), (GATEWAY, "http"), ("tandem-registry", "https")}
    assert routed[(GATEWAY, "grpc")][1][protocol] == "GRPCS"
    assert routed[(GATEWAY, "http")][0] == "/v1" and routed[(GATEWAY, "http")][1][protocol] == "HTTP"
    cfg = gateway_config(install)
    body_limit = routed[(GATEWAY, "http")][1]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body_limit.removesuffix("m")) * 1024 * 1024 == cfg.http.max_body_bytes
    assert routed[("tandem-registry", "https")][1][protocol] == "HTTPS"
    assert routed[("tandem-registry", "https")][1]["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"


def test_only_the_gateway_reaches_vllm_and_redis(install: Install) -> None:
    gateway_labels = pod_labels(install.get("Deployment", GATEWAY))
    protected = {}
    for policy in install.of_kind("NetworkPolicy"):
        target = install.workload_selected_by(policy["spec"]["podSelector"]["matchLabels"])
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        (peer,) = rule["from"]
        assert set(peer) == {"podSelector"}, "no namespace or IP block may be let in"
        assert peer["podSelector"]["matchLabels"].items() <= gateway_labels.items()
        ports = {p["containerPort"] for c in containers(target) for p in c["ports"]}
        assert {p["port"] for p in rule["ports"]} == ports
        protected[target["metadata"]["name"]] = True
    assert set(protected) == {VLLM, "tandem-redis"}


# --- the gateway and the configuration it loads -------------------------------------------------


def test_the_gateway_config_loads_and_names_only_what_its_pod_has(install: Install) -> None:
    cfg = gateway_config(install)
    workload = install.get("Deployment", GATEWAY)
    c = container(install, "Deployment", GATEWAY)
    env = env_from(c)
    assert c["image"] == "registry.internal/tandem:0.1.0"  # kustomization.yaml's `images`
    args = c["args"]
    assert args[:3] == ["gateway", "serve", "--config"]
    volume, key = mount_for(install, workload, args[3])
    assert ("ConfigMap", volume["configMap"]["name"]) in install.generated and key == "gateway.yaml"
    # Every secret the file names by variable is in the pod's environment, from a Secret.
    named = [cfg.redis.password_env, *(p.discovery.api_key_env for p in cfg.pools if p.discovery)]
    for variable in named:
        assert variable and "secretKeyRef" in env[variable]["valueFrom"], variable
    # Every file it names is on a mounted Secret that has that key.
    assert cfg.grpc.tls is not None
    for path in (cfg.grpc.tls.cert_file, cfg.grpc.tls.key_file):
        volume, key = mount_for(install, workload, str(path))
        assert secret_key_exists(install, volume["secret"]["secretName"], key), path
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert (cfg.grpc.port, cfg.http.port) == (ports["grpc"], ports["http"])
    assert cfg.grpc.host == cfg.http.host == "0.0.0.0"
    # The probes ask the HTTP face; the pod outlives its drain (preStop sleep + grace).
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod_spec(workload)["terminationGracePeriodSeconds"] > pre_stop + cfg.shutdown_grace_seconds


def test_the_pool_follows_the_headless_vllm_service(install: Install) -> None:
    cfg = gateway_config(install)
    (pool,) = cfg.pools
    assert pool.discovery is not None and pool.cold_start is not None
    name, _, domain = pool.discovery.name.partition(".")
    assert domain == f"{install.namespace}.svc.cluster.local"
    svc = install.get("Service", name)
    assert svc["spec"]["clusterIP"] == "None"  # one A record per ready pod, not a virtual IP
    (port,) = svc["spec"]["ports"]
    assert port["port"] == pool.discovery.port
    vllm = container(install, "Deployment", name)
    assert f"--served-model-name={pool.discovery.model}" in vllm["args"]
    assert f"--port={pool.discovery.port}" in vllm["args"]
    # The key the gateway sends is the key vLLM requires: the same Secret's same key.
    gateway_env = env_from(container(install, "Deployment", GATEWAY))
    assert pool.discovery.api_key_env
    gateway_key = gateway_env[pool.discovery.api_key_env]["valueFrom"]["secretKeyRef"]
    assert env_from(vllm)["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == gateway_key
    # A cold pool holds requests at least as long as vLLM may take to start.
    startup = vllm["startupProbe"]
    assert pool.cold_start.expected_seconds < pool.cold_start.timeout_seconds
    assert pool.cold_start.timeout_seconds >= 300
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_the_gateway_reaches_redis_with_its_password(install: Install) -> None:
    cfg = gateway_config(install)
    assert cfg.redis.url == "redis://tandem-redis:6379/0"
    svc = install.get("Service", "tandem-redis")
    assert svc["spec"]["ports"][0]["port"] == 6379
    redis = container(install, "StatefulSet", "tandem-redis")
    gateway_env = env_from(container(install, "Deployment", GATEWAY))
    assert cfg.redis.password_env
    password = gateway_env[cfg.redis.password_env]["valueFrom"]["secretKeyRef"]
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert env_from(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == password
    # Batches and tenants survive a restart: append-only file on the claimed volume, no eviction.
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    data_dir = args[args.index("--dir") + 1]
    statefulset = install.get("StatefulSet", "tandem-redis")
    (template,) = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": template["metadata"]["name"], "mountPath": data_dir} in redis["volumeMounts"]


# --- vLLM, KEDA, registry -----------------------------------------------------------------------


def test_vllm_runs_qwen3_pinned_with_cache_shm_and_a_gpu(install: Install) -> None:
    deployment = install.get("Deployment", VLLM)
    spec = pod_spec(deployment)
    c = container(install, "Deployment", VLLM)
    assert re.fullmatch(r"docker\.io/vllm/vllm-openai:v\d+\.\d+\.\d+", c["image"]), c["image"]
    assert "--model=Qwen/Qwen3-14B" in c["args"] and "--reasoning-parser=qwen3" in c["args"]
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    shm, _ = mount_for(install, deployment, "/dev/shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    hf_home = env_from(c)["HF_HOME"]["value"]
    cache, _ = mount_for(install, deployment, hf_home)
    claim = install.get("PersistentVolumeClaim", cache["persistentVolumeClaim"]["claimName"])
    # Replicas come and go on any GPU node; each must find the weights another one downloaded.
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert deployment["spec"]["replicas"] == 0  # KEDA wakes it


def check_scaled_object(obj: dict[str, Any]) -> dict[str, Any]:
    """KEDA's ScaledObject as this install needs it; returns its Prometheus trigger's metadata.
    (Also applied to the example in docs/elastic-pool.md.)"""
    assert obj["apiVersion"] == "keda.sh/v1alpha1" and obj["kind"] == "ScaledObject"
    spec = obj["spec"]
    assert set(spec) <= {
        "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
        "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
    }, set(spec)  # fmt: skip
    assert spec["scaleTargetRef"]["name"]
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
    # Three minutes: to zero after the last demand (KEDA), and from N down (the HPA's window).
    assert spec["cooldownPeriod"] == 180
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 180
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA's trigger metadata values are strings"
    assert re.fullmatch(r"https?://[^/\s]+(/\S*)?", meta["serverAddress"])
    assert float(meta["threshold"]) > 0 and float(meta["activationThreshold"]) == 0
    return dict(meta)


def test_keda_scales_vllm_from_zero_on_the_gateways_demand_metric(install: Install) -> None:
    (scaled,) = install.of_kind("ScaledObject")
    meta = check_scaled_object(scaled)
    target = scaled["spec"]["scaleTargetRef"]
    assert (target.get("apiVersion"), target.get("kind")) == ("apps/v1", "Deployment")
    assert install.get("Deployment", target["name"])
    (pool,) = gateway_config(install).pools
    assert pool.discovery is not None and pool.discovery.name.startswith(target["name"] + ".")
    assert meta["query"] == f'sum(tandem_pool_demand{{pool="{pool.name}"}})'
    # The gateway's pods are scraped where the metric is served (the HTTP face's /metrics).
    gateway = install.get("Deployment", GATEWAY)
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    ports = {p["name"]: p["containerPort"] for p in container(install, "Deployment", GATEWAY)["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_registry_serves_tls_with_htpasswd_on_a_volume(install: Install) -> None:
    deployment = install.get("Deployment", "tandem-registry")
    c = container(install, "Deployment", "tandem-registry")
    env = env_from(c)
    assert env["REGISTRY_AUTH"]["value"] == "htpasswd"
    for variable, key in (("REGISTRY_HTTP_TLS_CERTIFICATE", "tls.crt"), ("REGISTRY_HTTP_TLS_KEY", "tls.key")):
        volume, inside = mount_for(install, deployment, env[variable]["value"])
        assert inside == key and secret_key_exists(install, volume["secret"]["secretName"], key)
    volume, inside = mount_for(install, deployment, env["REGISTRY_AUTH_HTPASSWD_PATH"]["value"])
    assert {"key": "htpasswd", "path": inside} in volume["secret"]["items"]
    htpasswd = install.generated[("Secret", volume["secret"]["secretName"])]["htpasswd"].read_text()
    assert re.fullmatch(r"tandem:\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}\n", htpasswd), (
        "bcrypt: all distribution reads"
    )
    data, _ = mount_for(install, deployment, env["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"]["value"])
    assert install.get("PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])


def test_every_image_is_pinned(install: Install) -> None:
    for workload in install.workloads():
        for c in containers(workload):
            name, _, tag = c["image"].rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, c["image"]


def test_make_secrets_keeps_what_exists_and_remakes_what_was_deleted(tmp_path: Path) -> None:
    """Rotation as docs/deploy.md tells it: delete one file, run the script again; only that
    secret changes (and a certificate made again still chains to the same CA)."""
    script = ["bash", str(KUBERNETES / "make-secrets.sh"), "--out", str(tmp_path)]
    subprocess.run(script, check=True, capture_output=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = subprocess.run(script, check=True, capture_output=True, text=True)
    assert again.stdout == ""  # nothing written
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / "vllm-api-key").unlink()
    (tmp_path / "gateway.crt").unlink()
    rotated = subprocess.run(script, check=True, capture_output=True, text=True)
    assert sorted(line.split()[1] for line in rotated.stdout.splitlines()) == [
        str(tmp_path / "gateway.crt"), str(tmp_path / "vllm-api-key"),
    ]  # fmt: skip
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"vllm-api-key", "gateway.crt", "gateway.key", "ca.srl"}
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "gateway.crt")],
        capture_output=True,
    )
    assert verify.returncode == 0
