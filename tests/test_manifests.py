"""The Kubernetes deploy (cluster/): every manifest is valid for what reads it, strictly (an
unknown field is an error, as `kubectl apply --validate=strict` makes it), and says what
fixfleet needs: the same application as serve_config.yaml, the pools' bounds, the agent slots,
secrets only from a Secret, the sandbox's pod settings, the network walls."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fixfleet.config import Settings
from fixfleet.platform import RAY_BOUNDS, SERVE_NODE_ENV
from tests.corpus import KUBERAY

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
SCHEMAS = KUBERAY
KUBERNETES = "1.33"
AGENT_GROUPS = {"planner": "planning_slot", "executor": "executor_slot"}


def load_all(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((CLUSTER / name).read_text()) if doc]


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    (service,) = load_all("rayservice.yaml")
    return service


def groups(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def pod_labels(service: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {name: g["template"]["metadata"]["labels"] for name, g in groups(service).items()}


# --- strict validation ---------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """The CRD's OpenAPI schema as JSON Schema in which an object's unknown fields are errors
    (as the API server's strict field validation reports them)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items() if not key.startswith("x-kubernetes")}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.load((SCHEMAS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=yaml.CSafeLoader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_rayservice_is_valid_against_kuberays_crd_with_unknown_fields_as_errors(rayservice: dict) -> None:
    validator = crd_validator("RayService")
    assert errors(validator, rayservice) == []
    misspelt = yaml.safe_load(yaml.safe_dump(rayservice))
    misspelt["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert any("maxReplica" in line for line in errors(validator, misspelt)), "the strict check must catch a typo"


def test_its_cluster_is_also_a_valid_raycluster(rayservice: dict) -> None:
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "fixfleet"},
               "spec": rayservice["spec"]["rayClusterConfig"]}
    assert errors(crd_validator("RayCluster"), cluster) == []


@pytest.mark.parametrize("name", ["webhooks.yaml", "networkpolicy.yaml"])
def test_core_objects_are_valid_kubernetes(name: str) -> None:
    for doc in load_all(name):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_serve_config_inside_is_serve_config_yaml_and_ray_accepts_it(rayservice: dict) -> None:
    from ray.serve.schema import ServeDeploySchema

    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((CLUSTER / "serve_config.yaml").read_text()), \
        "cluster/rayservice.yaml's serveConfigV2 drifted from cluster/serve_config.yaml"
    config = ServeDeploySchema.model_validate(embedded)
    assert [app.import_path for app in config.applications] == ["serve_app.deployment:build_app"]


def test_the_operator_values_are_chart_values_that_change_something() -> None:
    text = (SCHEMAS / "kuberay-operator-chart-values.yaml").read_text()
    chart = yaml.safe_load(text)
    commented = set(re.findall(r"^# (\w+):\s*$", text, re.M))  # keys the chart documents unset
    ours = yaml.safe_load((CLUSTER / "values-kuberay-operator.yaml").read_text())

    def walk(values: dict, defaults: dict | None, path: str) -> Iterator[str]:
        for key, value in values.items():
            where = f"{path}{key}"
            if defaults is None or key not in defaults:
                if not (path == "" and key in commented) and not (defaults == {}):
                    yield f"{where}: not a value of the chart"
                continue
            if isinstance(value, dict) and isinstance(defaults[key], dict):
                yield from walk(value, defaults[key], where + ".")
            elif value == defaults[key]:
                yield f"{where}: only repeats the chart's default"

    assert list(walk(ours, chart, "")) == []
    assert "fixfleet" in ours["watchNamespace"]


# --- what fixfleet needs of the cluster ------------------------------------------------------


def test_the_head_offers_no_cpus_and_no_agent_slots_and_has_the_dashboard(rayservice: dict) -> None:
    head = groups(rayservice)["head"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert not set(head.get("resources", {})) & set(AGENT_GROUPS.values())


def test_agent_groups_offer_one_integer_slot_and_the_pools_bounds(rayservice: dict) -> None:
    settings = Settings(_env_file=None)
    bounds = {"planner": (settings.planners_min, settings.planners_max),
              "executor": (settings.executors_min, settings.executors_max)}
    found = groups(rayservice)
    for name, slot in AGENT_GROUPS.items():
        group = found[name]
        assert group["resources"] == {slot: "1"}, "one agent per pod, its slot an integer"
        assert group["rayStartParams"]["num-cpus"] == "0", "nothing but the agent lands on an agent pod"
        assert (group["minReplicas"], group["maxReplicas"]) == bounds[name], name
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert (found["executor"]["minReplicas"], found["executor"]["maxReplicas"]) == (2, 8)
    assert (found["planner"]["minReplicas"], found["planner"]["maxReplicas"]) == (1, 2)


def test_only_the_ingress_pods_offer_cpus_for_the_ingress_and_the_relay(rayservice: dict) -> None:
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (ingress,) = [d for d in serve["applications"][0]["deployments"] if d["name"] == "ingress"]
    needed = ingress["num_replicas"] * ingress["ray_actor_options"]["num_cpus"] + 0.1  # + the relay
    group = groups(rayservice)["ingress"]
    assert group["minReplicas"] * float(group["rayStartParams"]["num-cpus"]) >= needed


def test_autoscaling_is_in_tree_v2_with_five_minutes_idle(rayservice: dict) -> None:
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["version"] == "v2"
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 300
    assert cluster["autoscalerOptions"]["upscalingMode"] in {"Default", "Conservative", "Aggressive"}


def test_a_head_restart_keeps_the_application_through_gcs_fault_tolerance(rayservice: dict) -> None:
    options = rayservice["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert options["redisAddress"]
    assert "secretKeyRef" in options["redisPassword"]["valueFrom"]


def containers(service: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, group in groups(service).items():
        spec = group["template"]["spec"]
        for container in spec["containers"]:
            yield name, spec, container


SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|KEY|DATABASE_URL|REDIS_URL", re.I)


def test_secrets_come_only_from_a_kubernetes_secret(rayservice: dict) -> None:
    for name, _spec, container in containers(rayservice):
        sources = [next(iter(source)) for source in container["envFrom"]]
        assert set(sources) <= {"secretRef", "configMapRef"} and "secretRef" in sources, name
        for env in container.get("env", []):
            assert not (SECRET_NAME.search(env["name"]) and "value" in env), f"{name}: {env['name']} written in"
    text = "\n".join((CLUSTER / f).read_text() for f in ("rayservice.yaml", "webhooks.yaml", "networkpolicy.yaml"))
    assert not re.search(r"(ghp_|github_pat_|sk-ant-|xox[bp]-|postgresql://\w+:[^@<]+@)", text)


def test_every_node_has_the_serve_environment_and_the_workspace(rayservice: dict) -> None:
    for name, _spec, container in containers(rayservice):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert SERVE_NODE_ENV.items() <= env.items(), name
        assert RAY_BOUNDS.items() <= env.items(), name  # what Ray remembers, bounded as on a local node
        assert env["FIXFLEET_HOME"].startswith(next(m["mountPath"] for m in container["volumeMounts"]
                                                     if m["name"] == "home")), name


def test_pods_run_non_root_without_a_token_on_a_read_only_root(rayservice: dict) -> None:
    for name, spec, container in containers(rayservice):
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/home/ray"}, name
        assert container["resources"]["requests"] and container["resources"]["limits"], name
        assert container["readinessProbe"] and container["livenessProbe"], name
    # Only the autoscaler sidecar gets the Kubernetes API token, mounted where clients look for it.
    mounts = rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]["volumeMounts"]
    assert {"name": "autoscaler-token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            "readOnly": True} in mounts


def test_agent_pods_can_start_the_sandbox_and_only_they_relax_for_it(rayservice: dict) -> None:
    for name, spec, container in containers(rayservice):
        context = container["securityContext"]
        if name in AGENT_GROUPS:
            gvisor = spec.get("runtimeClassName") == "gvisor"
            assert gvisor or (spec["hostUsers"] is False and context["procMount"] == "Unmasked"
                              and context["seccompProfile"]["type"] in {"Unconfined", "Localhost"}), name
            assert context["capabilities"]["drop"] == ["ALL"], "bubblewrap needs no capability"
        else:
            assert "procMount" not in context and "seccompProfile" not in context, name


def test_executor_pods_wait_for_a_busy_agent_to_finish(rayservice: dict) -> None:
    settings = Settings(_env_file=None)
    grace = groups(rayservice)["executor"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.session_timeout_s + 120


# --- the network -----------------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        inside = labels.get(expression["key"]) in expression["values"]
        if inside != (expression["operator"] == "In"):
            return False
    return True


def policies_for(labels: dict[str, str]) -> list[dict[str, Any]]:
    return [p for p in load_all("networkpolicy.yaml") if selects(p["spec"]["podSelector"], labels)]


def test_every_pod_is_under_exactly_one_policy(rayservice: dict) -> None:
    for name, labels in pod_labels(rayservice).items():
        assert len(policies_for(labels)) == 1, name


def test_agent_pods_reach_only_dns_ray_the_stores_and_the_outside_world_on_443(rayservice: dict) -> None:
    for name in AGENT_GROUPS:
        (policy,) = policies_for(pod_labels(rayservice)[name])
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        for rule in policy["spec"]["egress"]:
            assert rule.get("to"), "a rule without `to` opens every destination"
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    assert [p["port"] for p in rule["ports"]] == [443]
                    excluded = [ipaddress.ip_network(c) for c in peer["ipBlock"]["except"]]
                    for inside in ("10.1.2.3", "172.20.0.5", "192.168.1.1", "169.254.169.254"):
                        assert any(ipaddress.ip_address(inside) in net for net in excluded), inside
                else:
                    assert "podSelector" in peer and (peer["podSelector"] or "namespaceSelector" in peer)
                    assert peer.get("namespaceSelector", {"x": 1}) != {}, "not every namespace's pods"
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from"), "agent pods take no connection from anywhere"


def test_the_ingress_pods_receive_webhooks_and_the_service_routes_only_the_public_paths(rayservice: dict) -> None:
    labels = pod_labels(rayservice)["ingress"]
    (policy,) = policies_for(labels)
    assert any(rule.get("ports") == [{"port": 8000, "protocol": "TCP"}] and "from" not in rule
               for rule in policy["spec"]["ingress"])
    service, ingress = load_all("webhooks.yaml")
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    assert not any(selects({"matchLabels": service["spec"]["selector"]}, other)
                   for name, other in pod_labels(rayservice).items() if name != "ingress")
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/webhooks/", "/tasks"], "/metrics, /health and /docs stay inside the cluster"


def test_the_pod_monitors_find_the_metrics_ports(rayservice: dict) -> None:
    ports = {name: {p["name"] for c in g["template"]["spec"]["containers"] for p in c.get("ports", [])}
             for name, g in groups(rayservice).items()}
    for monitor in load_all("monitoring.yaml"):
        assert monitor["kind"] == "PodMonitor" and monitor["apiVersion"] == "monitoring.coreos.com/v1"
        matched = [name for name, labels in pod_labels(rayservice).items()
                   if selects(monitor["spec"]["selector"], labels)]
        assert matched, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert all(endpoint["port"] in ports[name] for name in matched), (monitor["metadata"]["name"], matched)
