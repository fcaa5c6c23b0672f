"""The Helm chart (helm/intercom-sso-gateway), offline.

* lint it and render it with Helm's own library (PyPI ``helm-python-sdk``, no
  ``helm`` binary, no cluster);
* validate every rendered manifest against the Kubernetes API schemas (PyPI
  ``kubernetes-validate``, strict: unknown fields are errors);
* check the config it renders with the real ``sso-gateway check``: the pod's
  files (ConfigMaps, Secrets with test values, emptyDirs) are laid out under a
  temporary root exactly where the Deployment mounts them, and the command runs
  with the Deployment's environment.

Each value set is a realistic installation: the defaults, Redis Sentinel with
passwords, Secrets managed elsewhere (External Secrets) with their own key
names, a small site without autoscaling, and everything optional switched on.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from joserfc.jwk import ECKey

from gateway.settings import load_settings
from tests.peers import child_env

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "intercom-sso-gateway"
SSO_GATEWAY = Path(sys.executable).parent / "sso-gateway"
RELEASE, NAMESPACE = "sso", "doors"
FULLNAME = "sso-intercom-sso-gateway"
# Kubernetes versions the manifests must be valid for: the oldest we document
# (the schema set PEERS.md names) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.33.0", kubernetes_validate.utils.latest_version())

SENTINEL: dict[str, Any] = {
    "redis": {
        "existingSecret": "redis-ha",
        "sentinel": {
            "enabled": True,
            "master": "mymaster",
            "sentinels": [
                "redis-node-0.redis-headless.redis.svc.cluster.local:26379",
                "redis-node-1.redis-headless.redis.svc.cluster.local:26379",
                "redis-node-2.redis-headless.redis.svc.cluster.local:26379",
            ],
            "db": 2,
            "passwordKey": "redis-password",
            "sentinelPasswordKey": "sentinel-password",
        },
    },
    "config": {"session": {"idle_timeout": 600, "absolute_lifetime": 14400}},
}

EXTERNAL_SECRET: dict[str, Any] = {
    "secrets": {
        "existingSecret": "sso-from-vault",
        "secretKeyKey": "cookie-secret",
        "jwtSigningKeyKey": "jwt.json",
        "jwtPublishedKeyKeys": ["jwt-next.json"],  # a rotation under way
    },
    "redis": {"existingSecret": "redis-credentials", "urlKey": "url"},
    "localUsers": {"existingSecret": "sso-users", "key": "site-a-users.yaml"},
    "config": {
        "public_url": "https://sso.site-a.example",
        "network": {"trusted_proxies": ["10.42.0.0/16"]},
        "redirects": {"allowed_domains": [".site-a.example"]},
        "headers": {"extra": {"X-Auth-Request-Extension": ["ipPhone"]}},
    },
    "extraSecretMounts": [{"name": "ca", "secretName": "site-a-ca"}],
    # the site's own policy files: one example file removed, one added
    "policies": {
        "10-intercom.yaml": None,
        "20-pbx.yaml": (
            "routes:\n"
            "  - {name: pbx-admin, hosts: [pbx.site-a.example], path: /admin/, allow: [admin]}\n"
            "  - {name: pbx, hosts: [pbx.site-a.example], path: /, allow: [operator, admin]}\n"
        ),
    },
}

HPA_OFF: dict[str, Any] = {
    "autoscaling": {"enabled": False},
    "replicaCount": 3,
    "podDisruptionBudget": {"minAvailable": 2},
    "redis": {"url": "redis://redis-master.redis.svc.cluster.local:6379/0"},
    "config": {"jwt": {"enabled": False}},
}

EVERYTHING: dict[str, Any] = {
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": ["intercom.example.com", "pbx.example.com"],
        "tls": [{"secretName": "dashboards-tls", "hosts": ["intercom.example.com"]}],
    },
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "egress": [
            {
                "to": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "redis"}}}
                ],
                "ports": [{"port": 6379}],
            }
        ],
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "autoscaling": {"targetMemoryUtilizationPercentage": 80},
    "rollOnPolicyChange": True,
    "image": {"digest": "sha256:" + "ab" * 32},
    "config": {"access_log": {"enabled": True}},
}

SINGLE_NO_REDIS: dict[str, Any] = {
    "redis": {"enabled": False},
    "replicaCount": 1,
    "autoscaling": {"enabled": False},
    "podDisruptionBudget": {"enabled": False},
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "sentinel": SENTINEL,
    "external-secret": EXTERNAL_SECRET,
    "hpa-off": HPA_OFF,
    "everything": EVERYTHING,
    "single-no-redis": SINGLE_NO_REDIS,
}


def render(values: Mapping[str, Any] | None = None) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(
            copy.deepcopy(dict(values)) if values else None, name=RELEASE, namespace=NAMESPACE
        )


def manifests(values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, text in sorted(render(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def notes(values: Mapping[str, Any] | None = None) -> str:
    return render(values)["intercom-sso-gateway/templates/NOTES.txt"]


@pytest.fixture(params=list(VALUE_SETS), scope="module")
def value_set(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, VALUE_SETS[request.param]


@pytest.fixture(scope="module")
def rendered(value_set: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return manifests(value_set[1])


# -- lint, render, validate ----------------------------------------------------------


def test_chart_lints_clean(value_set: tuple[str, dict[str, Any]]) -> None:
    report = helm.lint(str(CHART), copy.deepcopy(value_set[1]), strict=True)
    assert report["errors"] == []
    worse_than_info = [m for m in report["messages"] if m["severity"] >= 2]
    assert worse_than_info == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_is_valid_kubernetes(rendered: list[dict[str, Any]], version: str) -> None:
    for doc in rendered:
        if doc["kind"] == "ServiceMonitor":  # a CRD: no schema in the core API
            with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
                kubernetes_validate.validate(doc, version, strict=True)
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_resources_each_value_set_makes(value_set: tuple[str, dict[str, Any]]) -> None:
    name, values = value_set
    found = kinds(manifests(values))
    base = ["ConfigMap", "ConfigMap", "Deployment", "Service", "ServiceAccount"]
    expected = {
        "defaults": [*base, "HorizontalPodAutoscaler", "PodDisruptionBudget"],
        "sentinel": [*base, "HorizontalPodAutoscaler", "PodDisruptionBudget"],
        "external-secret": [*base, "HorizontalPodAutoscaler", "PodDisruptionBudget"],
        "hpa-off": [*base, "PodDisruptionBudget"],
        "everything": [
            *base,
            "HorizontalPodAutoscaler",
            "Ingress",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "ServiceMonitor",
        ],
        "single-no-redis": base,
    }[name]
    assert found == sorted(expected)
    # the chart never creates a Secret: secrets are not in values
    assert "Secret" not in found


# -- the Deployment -------------------------------------------------------------------


def test_deployment_security_context_and_probes(rendered: list[dict[str, Any]]) -> None:
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod.get("hostNetwork") is not True
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in security["capabilities"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}

    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == 8080
    for probe, path in (
        ("livenessProbe", "/.sso/healthz"),
        ("startupProbe", "/.sso/healthz"),
        ("readinessProbe", "/.sso/readyz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    assert container["command"] == ["sso-gateway"]
    assert container["args"][-1] == "serve"

    # with a read-only root, everything the gateway writes is an emptyDir
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    assert sorted(m["mountPath"] for m in writable) == ["/tmp", "/var/lib/sso-gateway"]
    for mount in writable:
        assert "emptyDir" in volumes[mount["name"]]
    for volume in volumes.values():
        assert "hostPath" not in volume
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == 0o440


def test_policy_files_are_merged_with_the_example() -> None:
    data = one(manifests(EXTERNAL_SECRET), "ConfigMap", f"{FULLNAME}-policies")["data"]
    assert sorted(data) == ["00-tiers.yaml", "20-pbx.yaml"]
    assert "pbx.site-a.example" in data["20-pbx.yaml"]


def test_secrets_come_from_files_never_from_values(rendered: list[dict[str, Any]]) -> None:
    container = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for env in container["env"]:
        if "SECRET" in env["name"] or "PASSWORD" in env["name"] or "REDIS_URL" in env["name"]:
            assert env["name"].endswith("__FILE"), env
            assert env["value"].startswith("/etc/sso-gateway/")
    config = yaml.safe_load(one(rendered, "ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"])
    text = json.dumps(config)
    assert "password" not in text.lower().replace("redis_sentinel", "")
    assert "secret_key" not in config


def test_hpa_owns_the_replica_count() -> None:
    with_hpa = one(manifests(), "Deployment")
    assert "replicas" not in with_hpa["spec"]
    hpa = one(manifests(), "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    without = one(manifests(HPA_OFF), "Deployment")
    assert without["spec"]["replicas"] == 3
    pdb = one(manifests(HPA_OFF), "PodDisruptionBudget")
    assert pdb["spec"] == {
        "minAvailable": 2,
        "selector": {"matchLabels": one(manifests(HPA_OFF), "Service")["spec"]["selector"]},
    }


def test_a_config_change_rolls_the_pods_and_nothing_else_does() -> None:
    def checksum(values: Mapping[str, Any]) -> str:
        pod = one(manifests(values), "Deployment")["spec"]["template"]
        value: str = pod["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum({})
    assert checksum({"config": {"session": {"idle_timeout": 300}}}) != base
    assert checksum({"redis": {"url": "redis://other:6379/0"}}) != base
    assert checksum({"replicaCount": 5, "resources": {"requests": {"cpu": "1"}}}) == base
    # policies reload in the running pods unless rollOnPolicyChange is set
    changed_policy = {"policies": {"00-tiers.yaml": "timezone: UTC\ntiers: {}\n"}}
    assert checksum(changed_policy) == base
    annotations = one(manifests({**changed_policy, "rollOnPolicyChange": True}), "Deployment")[
        "spec"
    ]["template"]["metadata"]["annotations"]
    assert "checksum/policies" in annotations


def test_the_service_monitor_and_network_policy_select_the_gateway() -> None:
    docs = manifests(EVERYTHING)
    service = one(docs, "Service")
    selector = service["spec"]["selector"]
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # the ServiceMonitor selects the Service by its labels, the port by its name
    assert selector.items() <= service["metadata"]["labels"].items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/.sso/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"] == {"matchLabels": selector}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    sources = policy["spec"]["ingress"][0]["from"]
    assert len(sources) == 2  # the ingress controller's namespace and the monitoring one
    ingress = one(docs, "Ingress")
    assert [r["host"] for r in ingress["spec"]["rules"]] == [
        "intercom.example.com",
        "pbx.example.com",
    ]
    for rule in ingress["spec"]["rules"]:
        paths = {p["path"]: p["pathType"] for p in rule["http"]["paths"]}
        assert paths["/.sso/start"] == "Exact"
        assert paths["/.sso/login"] == "Exact"
        assert paths["/.sso/oidc/"] == "Prefix"
        # never published: the forward-auth check and the cluster-internal endpoints
        for internal in ("/.sso/auth", "/.sso/metrics", "/.sso/healthz", "/.sso/readyz"):
            assert not [p for p in paths if internal.startswith(p) or p == internal]
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}
    image = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith("@sha256:" + "ab" * 32)


# -- refusals -------------------------------------------------------------------------


def _ingress_paths(*paths: dict[str, str]) -> dict[str, Any]:
    return {"ingress": {"enabled": True, "hosts": ["intercom.example.com"], "paths": list(paths)}}


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"redis": {"enabled": False}}, "run one replica"),
        (
            {"redis": {"enabled": False}, "autoscaling": {"enabled": False}, "replicaCount": 2},
            "run one replica",
        ),
        ({"redis": {"url": "redis://:hunter2@redis:6379/0"}}, "must not hold credentials"),
        ({"redis": {"sentinel": {"enabled": True}}}, "redis.sentinel.sentinels"),
        ({"policies": {"../escape.yaml": "routes: []\n"}}, "not a policy file name"),
        ({"ingress": {"enabled": True}}, "ingress.hosts"),
        (_ingress_paths({"path": "/.sso/", "pathType": "Prefix"}), "/.sso/auth"),
        (_ingress_paths({"path": "/.sso/auth", "pathType": "Exact"}), "cluster-internal"),
        (_ingress_paths({"path": "/.sso/metrics/", "pathType": "Exact"}), "cluster-internal"),
        (_ingress_paths({"path": "/.sso/re", "pathType": "Prefix"}), "/.sso/readyz"),
        (_ingress_paths({"path": "/.sso/a", "pathType": "ImplementationSpecific"}), "/.sso/auth"),
        (_ingress_paths({"path": "/", "pathType": "Prefix"}), "not a gateway page"),
        # values.schema.json: typos and wrong types are refused, not silently ignored
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"replicaCount": "two"}, "want integer"),
        ({"redis": {"sentinel": {"sentinels": "redis:26379"}}}, "want array"),
        ({"redis": {"url": "http://redis:6379"}}, "does not match pattern"),
        ({"secrets": {"existingsecret": "x"}}, "additional properties 'existingsecret'"),
        ({"image": {"digest": "latest"}}, "does not match pattern"),
        ({"containerPort": 80}, "minimum"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "must not exceed"),
    ],
)
def test_unsafe_or_broken_values_are_refused(values: dict[str, Any], says: str) -> None:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    assert says in str(caught.value)
    assert "hunter2" not in str(caught.value)


# -- NOTES.txt -------------------------------------------------------------------------


def test_notes_print_the_ingress_annotations() -> None:
    text = notes()
    service = f"http://{FULLNAME}.{NAMESPACE}.svc.cluster.local"
    assert f'nginx.ingress.kubernetes.io/auth-url: "{service}/.sso/auth?host=$host"' in text
    assert 'nginx.ingress.kubernetes.io/auth-signin: "https://$host/.sso/start"' in text
    assert (
        'nginx.ingress.kubernetes.io/auth-response-headers: "X-Auth-Request-User,'
        "X-Auth-Request-Email,X-Auth-Request-Groups,X-Auth-Request-Tier,X-Auth-Request-Jwt,"
        'X-Auth-Request-Extension,X-Auth-Request-Department"'
    ) in text
    assert "snippet" in text  # says none is needed


def test_notes_follow_the_configured_header_names() -> None:
    text = notes(
        {
            "config": {
                "headers": {"user": "X-Remote-User", "extra": {"X-Remote-Ext": ["ipPhone"]}},
                "jwt": {"enabled": False},
            },
            "service": {"port": 8080},
        }
    )
    assert (
        'auth-response-headers: "X-Remote-User,X-Auth-Request-Email,X-Auth-Request-Groups,'
        'X-Auth-Request-Tier,X-Remote-Ext"'
    ) in text
    assert f"http://{FULLNAME}.{NAMESPACE}.svc.cluster.local:8080/.sso/auth?host=$host" in text


# -- the rendered config is a valid gateway config ----------------------------------------

USERS_FILE = "users: {}\n"


def _jwk() -> str:
    key = ECKey.generate_key("P-256", private=True)
    data = dict(key.as_dict(private=True))
    data["kid"] = key.thumbprint()
    return json.dumps(data)


def secret_data() -> dict[str, dict[str, str]]:
    """What the site's Secrets would hold (test values)."""
    return {
        FULLNAME: {
            "secret-key": "k" * 48,
            "jwt-signing-key.json": _jwk(),
            "redis-url": "redis://:url-password@redis-master.redis:6379/0",
            "users.yaml": USERS_FILE,
        },
        "redis-ha": {"redis-password": "data-password", "sentinel-password": "sentinel-pw"},
        "sso-from-vault": {"cookie-secret": "c" * 48, "jwt.json": _jwk(), "jwt-next.json": _jwk()},
        "redis-credentials": {"url": "rediss://:vault-password@redis.example:6380/1"},
        "sso-users": {"site-a-users.yaml": USERS_FILE},
        "site-a-ca": {"ca.crt": "-----BEGIN CERTIFICATE-----\n"},
    }


_POD_PREFIXES = ("/etc/sso-gateway", "/var/lib/sso-gateway")


def _in_root(root: Path, text: str) -> str:
    for prefix in _POD_PREFIXES:
        text = text.replace(prefix, str(root) + prefix)
    return text


def lay_out_pod(docs: list[dict[str, Any]], root: Path) -> tuple[Path, dict[str, str]]:
    """Write every file the Deployment mounts under ``root`` (same paths below it)
    and return (config path, the container's environment, paths moved under root)."""
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = secret_data()
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        path = mount["mountPath"]
        assert path.startswith((*_POD_PREFIXES, "/tmp")), path
        target = root / path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        files: dict[str, str] = {}
        if "configMap" in volume:
            files = dict(configmaps[volume["configMap"]["name"]])
        elif "secret" in volume:
            data = secrets[volume["secret"]["secretName"]]
            items = volume["secret"].get("items")
            files = {i["path"]: data[i["key"]] for i in items} if items else dict(data)
        else:
            assert "emptyDir" in volume, volume
        for name, content in files.items():
            (target / name).write_text(_in_root(root, content), encoding="utf-8")
    env = {e["name"]: _in_root(root, e["value"]) for e in container["env"] if "value" in e}
    config = Path(_in_root(root, container["args"][container["args"].index("--config") + 1]))
    assert env["SSO_GATEWAY_CONFIG"] == str(config)
    return config, env


@pytest.fixture
def pod_files(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> Iterator[tuple[Path, dict[str, str]]]:
    yield lay_out_pod(rendered, tmp_path / "pod")


def test_sso_gateway_check_accepts_the_rendered_config(
    pod_files: tuple[Path, dict[str, str]], value_set: tuple[str, dict[str, Any]]
) -> None:
    config, env = pod_files
    result = subprocess.run(
        [str(SSO_GATEWAY), "check"],
        env={**child_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"ok: {config}")


def test_the_rendered_config_wires_the_secrets(
    pod_files: tuple[Path, dict[str, str]], value_set: tuple[str, dict[str, Any]]
) -> None:
    """Loaded as the pod would load it: every secret arrives from its file."""
    config, env = pod_files
    settings = load_settings(config, environ=env)
    name, values = value_set
    secrets = secret_data()
    assert settings.listen.host == "0.0.0.0"
    assert settings.listen.port == 8080
    # the access log: off unless switched on, to the pod's stdout (values.yaml)
    assert settings.access_log.enabled is (name == "everything")
    assert settings.access_log_destination == "stdout"
    assert settings.secret_key is not None
    own = secrets[values.get("secrets", {}).get("existingSecret", FULLNAME)]
    assert settings.secret_key.get_secret_value() in own.values()
    session = settings.session
    if name == "single-no-redis":
        assert session.store == "file"
        assert session.redis_url is None and session.redis_sentinel is None
        return
    assert session.store == "redis"
    if name == "sentinel":
        sentinel = session.redis_sentinel
        assert sentinel is not None and session.redis_url is None
        assert sentinel.master == "mymaster"
        assert sentinel.db == 2
        assert len(sentinel.addresses()) == 3
        assert sentinel.password is not None and sentinel.sentinel_password is not None
        assert sentinel.password.get_secret_value() == "data-password"
        assert sentinel.sentinel_password.get_secret_value() == "sentinel-pw"
        assert session.idle_timeout == 600
    else:
        assert session.redis_sentinel is None and session.redis_url is not None
        expected = {
            "defaults": secrets[FULLNAME]["redis-url"],
            "everything": secrets[FULLNAME]["redis-url"],
            "external-secret": secrets["redis-credentials"]["url"],
            "hpa-off": HPA_OFF["redis"]["url"],
        }[name]
        assert session.redis_url.get_secret_value() == expected
    if settings.jwt.enabled:
        assert settings.jwt.key_file is not None
        signing = json.loads(settings.jwt.key_file.read_text(encoding="utf-8"))
        assert signing["crv"] == "P-256"
        published = [json.loads(p.read_text()) for p in settings.jwt.published_key_files]
        if name == "external-secret":  # jwtPublishedKeyKeys: the next key, its own file
            ((key, path),) = zip(published, settings.jwt.published_key_files, strict=True)
            assert path.name == "jwt-published-0.json"
            assert key["crv"] == "P-256" and key["kid"] != signing["kid"]
        else:
            assert published == []
    else:
        assert name == "hpa-off"
