"""Static checks of the deployment files: nothing here needs Docker, a GPU or a cluster.

- the Helm chart renders and passes Helm's own lint (Helm v4 engine from ``helm-python-sdk``)
  with the default values and both example values files;
- every rendered manifest validates against the Kubernetes 1.33 schemas (``kubernetes-validate``,
  strict: unknown fields are errors);
- docker-compose.yml (and the CPU override) has the expected structure, and the configuration
  each service would see is a valid ``T1Config``;
- the CLI, the config defaults, the Dockerfile, compose and the chart agree on commands and ports.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import typer.main
import yaml

from services.cli import app
from services.common.config import PRESETS_DIR, T1Config, load_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "t1"
KUBE_VERSION = "1.33.0"  # one of the schema sets kubernetes-validate ships (1.25 ... 1.37)
SERVICES = ("generator", "verifier", "trainer")
EXAMPLES = {
    "default": None,
    "single-node": ROOT / "k8s" / "values-single-node.yaml",
    "multi-node": ROOT / "k8s" / "values-multi-node.yaml",
}
# Kinds whose schemas are not part of Kubernetes (Prometheus Operator CRDs).
CRD_KINDS = {"ServiceMonitor"}


def example_values(name: str) -> dict:
    path = EXAMPLES[name]
    return yaml.safe_load(path.read_text()) if path else {}


def render(values: dict | None = None, name: str = "t1") -> list[dict]:
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values=values or {}, name=name, namespace="t1")
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict], kind: str, name: str) -> dict:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def container(workload: dict, name: str) -> dict:
    (c,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def env_of(c: dict) -> dict[str, str]:
    """Plain env values, with the kubelet's $(VAR) expansion of a stand-in Redis password."""
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    env["REDIS_PASSWORD"] = "secret"
    return {k: re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], v)
            for k, v in env.items() if v is not None}


def config_from_chart(docs: list[dict], env: dict[str, str], tmp_path: Path) -> T1Config:
    """The T1Config a service pod would build: the ConfigMap's file, then the T1__ env."""
    cm = find(docs, "ConfigMap", "t1-config")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    return load_config(str(path), environ=env)


# ----------------------------------------------------------------------------------------------
# Helm: lint and render


@pytest.mark.parametrize("example", EXAMPLES)
def test_chart_passes_helm_lint(example):
    report = helm_python.lint(CHART, example_values(example), strict=True,
                              kube_version=f"v{KUBE_VERSION}")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # severity 1 is INFO (e.g. "icon is recommended"); 2 warning, 3 error
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("example", EXAMPLES)
def test_rendered_manifests_validate_against_kubernetes_schemas(example):
    docs = render(example_values(example))
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "Secret", "ConfigMap", "PersistentVolumeClaim",
            "NetworkPolicy"} <= kinds
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # checked structurally in test_service_monitor_is_optional_and_matches
        assert kubernetes_validate.validate(doc, KUBE_VERSION, strict=True) == "1.33"


def test_schema_validation_catches_a_broken_manifest():
    """The validator is not vacuous: an unknown field and a wrong type are both rejected."""
    deployment = find(render(), "Deployment", "t1-generator")
    typo = copy.deepcopy(deployment)
    container(typo, "generator")["livenesProbe"] = {}
    wrong_type = copy.deepcopy(deployment)
    container(wrong_type, "generator")["ports"][0]["containerPort"] = "8101"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)


def torchrun_flags(command: list[str]) -> tuple[dict[str, str], list[str]]:
    """torchrun's ``--flag=value`` options, and the command it launches (after --no-python)."""
    assert command[0] == "torchrun" and "--no-python" in command
    cut = command.index("--no-python")
    flags = dict(f[2:].split("=", 1) if "=" in f else (f[2:], "") for f in command[1:cut])
    return flags, command[cut + 1:]


def test_chart_trainer_ranks_are_pods_times_ranks_per_pod():
    """M pods x N ranks: torchrun's static rendezvous, node rank = pod index, hosted by pod 0
    under the headless Service's name; one GPU per rank; a graceful stop within the grace."""
    values = {"trainer": {"replicas": 2, "ranksPerPod": 4,
                          "resources": {"limits": {"memory": "64Gi", "nvidia.com/gpu": 4}}}}
    docs = render(values)
    sts = find(docs, "StatefulSet", "t1-trainer")
    c = container(sts, "trainer")
    flags, launched = torchrun_flags(c["command"])
    assert launched == ["t1", "trainer"]
    assert flags["nnodes"] == "2" and flags["nproc-per-node"] == "4"
    assert flags["node-rank"] == "$(POD_INDEX)" and flags["max-restarts"] == "0"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"} & set(env)  # torchrun's to set
    # pod 0's DNS name: <statefulset>-0.<headless service>
    headless = find(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    assert flags["master-addr"] == f"{sts['metadata']['name']}-0.{headless['metadata']['name']}"
    dist_port = next(p for p in headless["spec"]["ports"] if p["name"] == "dist")["port"]
    assert flags["master-port"] == str(dist_port)
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["podManagementPolicy"] == "Parallel"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 0 < int(flags["shutdown-timeout"]) < grace
    # ranks reach each other on any port (gloo / NCCL pick theirs)
    policy = find(docs, "NetworkPolicy", "t1-trainer")
    assert "ports" not in policy["spec"]["ingress"][0]

    one = torchrun_flags(container(find(render(), "StatefulSet", "t1-trainer"), "trainer")["command"])[0]
    assert one["nnodes"] == "1" and one["master-addr"] == "127.0.0.1"


def test_chart_refuses_gpus_that_do_not_match_the_ranks():
    with pytest.raises(helm_python.HelmRenderError, match="ranksPerPod"):
        render({"trainer": {"ranksPerPod": 2}})  # the default limit is one GPU
    with pytest.raises(helm_python.HelmRenderError, match="tensor_parallel_size=4 x data_parallel_size=1: the engine"):
        render({"config": {"generator": {"tensor_parallel_size": 4}}})  # the default: one GPU a pod
    with pytest.raises(helm_python.HelmRenderError, match="tensor_parallel_size=2 x data_parallel_size=2"):
        render({"config": {"generator": {"tensor_parallel_size": 2, "data_parallel_size": 2}},
                "generator": {"resources": {"limits": {"nvidia.com/gpu": 2}}}})
    docs = render({"config": {"generator": {"tensor_parallel_size": 4}},
                   "generator": {"resources": {"limits": {"nvidia.com/gpu": 4}}}})
    gen = container(find(docs, "Deployment", "t1-generator"), "generator")
    assert gen["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_chart_workloads_storage_and_gpus():
    docs = render()
    gen = find(docs, "Deployment", "t1-generator")
    ver = find(docs, "Deployment", "t1-verifier")
    trainer = find(docs, "StatefulSet", "t1-trainer")
    headless = find(docs, "Service", trainer["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"

    redis = find(docs, "StatefulSet", "t1-redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    args = container(redis, "redis")["args"]
    assert arg_after(args, "--appendonly") == "yes"
    assert arg_after(args, "--requirepass") == "$(REDIS_PASSWORD)"
    secret = find(docs, "Secret", "t1-redis")
    assert "redis-password" in secret["data"]

    pvc = find(docs, "PersistentVolumeClaim", "t1-data")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = {}
    for workload, name in ((gen, "generator"), (trainer, "trainer")):
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [m for m in container(workload, name)["volumeMounts"]
                    if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == "t1-data"]
        mounts[name] = mount["mountPath"]
        assert env_of(container(workload, name))["T1__RUN_DIR"].startswith(mount["mountPath"] + "/")
        assert container(workload, name)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert mounts["generator"] == mounts["trainer"]  # weight URIs are absolute paths
    # the collective weight transport: generators reach trainer pod 0 through the headless Service
    host = env_of(container(gen, "generator"))["T1__TRAINER__BROADCAST_HOST"]
    assert host == f"{trainer['metadata']['name']}-0.{trainer['spec']['serviceName']}"
    assert find(docs, "Service", trainer["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    assert "nvidia.com/gpu" not in container(ver, "verifier")["resources"].get("limits", {})

    hpa = find(docs, "HorizontalPodAutoscaler", "t1-verifier")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "t1-verifier"}
    assert "replicas" not in ver["spec"]  # the HPA owns the count

    for workload, name in ((gen, "generator"), (ver, "verifier"), (trainer, "trainer")):
        c = container(workload, name)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
        env = env_of(c)
        assert env["T1__REDIS__URL"] == "redis://:secret@t1-redis:6379/0"
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_release_name_is_used_consistently():
    """Another release name: the Redis URL, claim and ConfigMap still point at what exists."""
    docs = render(name="prod")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for kind, name in (("Deployment", "generator"), ("Deployment", "verifier"),
                       ("StatefulSet", "trainer")):
        workload = find(docs, kind, f"prod-t1-{name}")
        url = env_of(container(workload, name))["T1__REDIS__URL"]
        assert ("Service", url.split("@")[1].split(":")[0]) in names
        for volume in workload["spec"]["template"]["spec"]["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names


def test_chart_node_pools_come_from_values():
    docs = render(example_values("multi-node"))
    for kind, name, pool in (("Deployment", "generator", "rollout"), ("Deployment", "verifier", "cpu"),
                             ("StatefulSet", "trainer", "train"), ("StatefulSet", "redis", "cpu")):
        pod = find(docs, kind, f"t1-{name}")["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"t1.example.com/pool": pool}
    gen = find(docs, "Deployment", "t1-generator")
    assert gen["spec"]["replicas"] == 8
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        gen["spec"]["template"]["spec"]["tolerations"]
    assert find(docs, "Service", "t1-verifier")["spec"]["type"] == "LoadBalancer"
    env = {e["name"]: e for e in container(find(docs, "Deployment", "t1-verifier"), "verifier")["env"]}
    assert env["T1__VERIFIER__AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "t1-verifier-token"
    assert not [d for d in docs if d["kind"] == "Job"]  # a real model: no tiny bootstrap


def test_network_policies_limit_redis_and_trainer():
    docs = render()
    redis = find(docs, "NetworkPolicy", "t1-redis")
    assert redis["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    (rule,) = redis["spec"]["ingress"]
    (peer,) = rule["from"]
    (expr,) = peer["podSelector"]["matchExpressions"]
    assert expr["key"] == "app.kubernetes.io/component" and expr["operator"] == "In"
    assert sorted(expr["values"]) == sorted(SERVICES)
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]

    trainer = find(docs, "NetworkPolicy", "t1-trainer")
    assert trainer["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "trainer"
    ranks, metrics = trainer["spec"]["ingress"]
    (rank_peer,) = ranks["from"]
    assert rank_peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "trainer"
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert metrics["from"] == [{"namespaceSelector": monitoring}]
    assert metrics["ports"] == [{"protocol": "TCP", "port": T1Config().trainer.port}]

    off = render({"networkPolicy": {"enabled": False}})
    assert not [d for d in off if d["kind"] == "NetworkPolicy"]

    # the collective weight transport: generators may then reach the trainer (any port: gloo and
    # NCCL connect on dynamic ones)
    docs = render({"config": {"trainer": {"weight_broadcast": True},
                              "generator": {"weight_transport": "collective"}}})
    ranks, generators, metrics = find(docs, "NetworkPolicy", "t1-trainer")["spec"]["ingress"]
    (gen_peer,) = generators["from"]
    assert gen_peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "generator"
    assert "ports" not in generators


def test_service_monitor_is_optional_and_matches():
    assert not [d for d in render() if d["kind"] == "ServiceMonitor"]
    docs = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    sm = find(docs, "ServiceMonitor", "t1")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    selector = sm["spec"]["selector"]["matchLabels"]
    scraped = [d for d in docs if d["kind"] == "Service"
               and selector.items() <= d["metadata"]["labels"].items()]
    assert sorted(s["metadata"]["name"] for s in scraped) == [f"t1-{s}" for s in sorted(SERVICES)]
    for svc in scraped:
        assert endpoint["port"] in [p["name"] for p in svc["spec"]["ports"]]


@pytest.mark.parametrize("example", EXAMPLES)
def test_chart_config_is_a_valid_t1_config(example, tmp_path):
    docs = render(example_values(example))
    trainer = container(find(docs, "StatefulSet", "t1-trainer"), "trainer")
    cfg = config_from_chart(docs, env_of(trainer), tmp_path)
    assert cfg.redis.url == "redis://:secret@t1-redis:6379/0"
    assert cfg.model.path == (example_values(example).get("modelPath") or "/data/model/sft")
    if example == "default":
        # The chart's default config is the tiny preset; the chart sets only the paths and Redis,
        # and leaves out the preset's core pinning (for the local stack: pods have their own cores).
        assert cfg == load_config("tiny", ['generator.cpus=""', 'trainer.cpus=""'], environ=env_of(trainer))


def test_the_multi_node_example_passes_t1_plan_with_the_pods_it_places(tmp_path):
    from services.plan import plan

    values = example_values("multi-node")
    docs = render(values)
    trainer = container(find(docs, "StatefulSet", "t1-trainer"), "trainer")
    cfg = config_from_chart(docs, env_of(trainer), tmp_path)
    p = plan(cfg)  # raises PlanError when the layout cannot work
    assert cfg.placement.trainer_ranks == values["trainer"]["replicas"] * values["trainer"]["ranksPerPod"]
    assert cfg.placement.generators == find(docs, "Deployment", "t1-generator")["spec"]["replicas"]
    assert f"trainer.ranksPerPod={values['trainer']['ranksPerPod']}" in p.deploy[0]
    assert p.generator.total <= cfg.placement.gpu_memory_gib


def test_model_bootstrap_is_the_cli_command_in_compose_and_chart():
    from services.cli import app

    assert "init-model" in {c.name for c in app.registered_commands}
    compose = load_compose(ROOT / "docker-compose.yml")
    assert compose["services"]["model-init"]["entrypoint"][:3] == ["t1", "init-model", "--config"]
    job = next(d for d in render() if d["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == ["t1", "init-model", "--config"]


# ----------------------------------------------------------------------------------------------
# Compose and Dockerfile


class Override(dict):
    """A mapping tagged !override: it replaces, rather than merges into, the base file's."""


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor(
    "!override", lambda loader, node: Override(loader.construct_mapping(node, deep=True)))
ComposeLoader.add_constructor("!reset", lambda loader, node: None)

_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(node, env: dict[str, str]):
    """Compose variable interpolation (${V}, ${V:-default}, ${V:?error}, $$)."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        value = env.get(name)
        if op and op.endswith("?") and not value:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and not value:
            return arg
        return value or ""
    if isinstance(node, str):
        return _VAR.sub(sub, node)
    if isinstance(node, dict):
        return type(node)((k, interpolate(v, env)) for k, v in node.items())
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    return node


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def merge(base, over):
    """Compose's merge of an override file: mappings merge, !override replaces, the rest replaces."""
    if isinstance(over, Override):
        return dict(over)
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return over


ENV = {"REDIS_PASSWORD": "pw123"}


def compose_config(*files: str) -> dict:
    merged = {}
    for f in files:
        merged = merge(merged, load_compose(ROOT / f))
    return interpolate(merged, ENV)


def dockerfile_targets() -> dict[str, dict]:
    """Per stage: base, the external image under it, and the instructions in effect (a stage
    inherits those of its parent stage)."""
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / "Dockerfile").read_text())
    args: dict[str, str] = {}
    stages: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and current is None and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
        elif word == "FROM":
            base, name = re.match(r"(\S+)\s+AS\s+(\S+)", rest, re.I).groups()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
            inherited = dict(stages[base]["instr"]) if base in stages else {}
            current = name
            image = stages[base]["image"] if base in stages else base
            stages[name] = {"base": base, "image": image, "instr": inherited,
                            "external": base not in stages}
        elif current is not None:
            stages[current]["instr"].setdefault(word, [])
            stages[current]["instr"][word] = stages[current]["instr"][word] + [rest]
    return stages


def test_dockerfile_targets_are_pinned_non_root_and_health_checked():
    stages = dockerfile_targets()
    for target in (*SERVICES, "generator-cpu", "trainer-cpu"):
        instr = stages[target]["instr"]
        assert instr["USER"][-1] == "t1"
        assert "/health" in instr["HEALTHCHECK"][-1]
        assert yaml.safe_load(instr["ENTRYPOINT"][-1])[0] == "t1"
    for stage in stages.values():
        if stage["external"]:
            image, _, tag = stage["base"].partition(":")
            assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), stage["base"]
        for env_line in stage["instr"].get("ENV", []):
            assert not re.search(r"PASSWORD|TOKEN|SECRET", env_line, re.I)
    for target in ("generator", "trainer"):
        assert stages[target]["image"].startswith("nvidia/cuda:")
    for target in ("verifier", "generator-cpu", "trainer-cpu"):
        assert re.match(r"python:3\.11\.\d+-slim", stages[target]["image"])
    run = " ".join(stages["cpu-install"]["instr"]["RUN"])
    assert "\".[cpu]\"" in run and "pip install ${PIP_WHEELS:+--no-index --find-links" in run
    assert "pip uninstall -y torchvision torchaudio torchcodec" in run
    assert "pip install \".[gpu]\"" in " ".join(stages["gpu-install"]["instr"]["RUN"])
    assert any("PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" in a
               for a in stages["cpu-install"]["instr"]["ARG"])
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git", "**/__pycache__"} <= set(ignored)


def test_compose_structure():
    cfg = compose_config("docker-compose.yml")
    services = cfg["services"]
    assert set(services) == {"redis", "model-init", *SERVICES}
    targets = dockerfile_targets()

    redis = services["redis"]
    assert redis["image"].startswith("redis:7.")
    command = " ".join(redis["command"])
    assert "--requirepass \"$REDIS_PASSWORD\"" in command and "--appendonly yes" in command
    assert redis["environment"]["REDIS_PASSWORD"] == ENV["REDIS_PASSWORD"]
    assert "ports" not in redis
    (volume,) = redis["volumes"]
    assert volume.split(":")[0] in cfg["volumes"] and volume.endswith(":/data")
    assert redis["healthcheck"]["test"][0] == "CMD-SHELL"

    for name in SERVICES:
        svc = services[name]
        assert svc["build"]["target"] == name and name in targets
        assert svc["environment"]["T1__REDIS__URL"] == "redis://:pw123@redis:6379/0"
        assert svc["depends_on"]["redis"] == {"condition": "service_healthy"}
    for name in ("generator", "trainer"):
        svc = services[name]
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
        assert svc["depends_on"]["model-init"] == {"condition": "service_completed_successfully"}
    assert services["generator"]["deploy"]["replicas"] >= 1
    assert services["verifier"]["deploy"]["replicas"] >= 1
    assert services["trainer"]["depends_on"]["generator"] == {"condition": "service_healthy"}
    assert services["trainer"]["depends_on"]["verifier"] == {"condition": "service_healthy"}
    assert "deploy" not in services["verifier"] or "resources" not in services["verifier"]["deploy"]

    # Every service_healthy dependency has a health check (in compose or in its image).
    for svc in services.values():
        for dep, cond in svc.get("depends_on", {}).items():
            if cond["condition"] == "service_healthy":
                target = services[dep].get("build", {}).get("target")
                assert "healthcheck" in services[dep] or "HEALTHCHECK" in targets[target]["instr"]

    # The shared volume: same path in generator, trainer and model-init; run_dir on it.
    mounts = {}
    for name in ("generator", "trainer", "model-init"):
        (vol,) = [v for v in services[name]["volumes"] if v.split(":")[0] in cfg["volumes"]]
        mounts[name] = vol.split(":")[1]
        assert services[name]["environment"]["T1__RUN_DIR"].startswith(mounts[name] + "/")
    assert len(set(mounts.values())) == 1
    assert vol.split(":")[0] != volume.split(":")[0]  # not Redis's volume
    # the collective weight transport: generators reach trainer rank 0 by its service name
    assert services["generator"]["environment"]["T1__TRAINER__BROADCAST_HOST"] in services


@pytest.mark.parametrize("files", [("docker-compose.yml",),
                                   ("docker-compose.yml", "docker-compose.cpu.yml")],
                         ids=["gpu", "cpu"])
def test_compose_services_get_a_valid_config(files):
    cfg = compose_config(*files)
    for name in (*SERVICES, "model-init"):
        svc = cfg["services"][name]
        args = svc.get("command") or svc["entrypoint"]
        config_path = args[-1] if name == "model-init" else arg_after(args, "--config")
        # ./configs is mounted read-only at /config
        assert "./configs:/config:ro" in svc["volumes"]
        host_file = PRESETS_DIR / Path(config_path).relative_to("/config")
        assert host_file.exists()
        env = {k: str(v) for k, v in svc["environment"].items()}
        t1 = load_config(str(host_file), environ=env)
        assert t1.redis.url == "redis://:pw123@redis:6379/0"
        if name != "verifier":
            assert t1.run_dir == "/data/run" and t1.model.path.startswith("/data/")


def test_compose_cpu_override_drops_gpus_and_uses_cpu_targets():
    base = compose_config("docker-compose.yml")
    cpu = compose_config("docker-compose.yml", "docker-compose.cpu.yml")
    targets = dockerfile_targets()
    for name in ("generator", "trainer", "model-init"):
        svc = cpu["services"][name]
        assert svc["build"]["target"].endswith("-cpu") and svc["build"]["target"] in targets
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"  # merged, not replaced
        assert "resources" not in svc.get("deploy", {})
        assert svc["image"] != base["services"][name]["image"]
    generator_env = cpu["services"]["generator"]["environment"]
    assert float(generator_env["T1__GENERATOR__GPU_MEMORY_UTILIZATION"]) <= 0.5
    # GPU: one trainer rank per visible GPU; CPU: a number of ranks (torchrun cannot count GPUs)
    assert torchrun_flags(base["services"]["trainer"]["entrypoint"])[0]["nproc-per-node"] == "gpu"
    assert torchrun_flags(cpu["services"]["trainer"]["entrypoint"])[0]["nproc-per-node"] == "1"
    # nothing else in the merged file asks for a GPU
    assert "capabilities" not in yaml.safe_dump(cpu)


# ----------------------------------------------------------------------------------------------
# One truth for commands and ports


def test_commands_and_ports_agree_across_cli_config_compose_dockerfile_and_chart():
    defaults = T1Config()
    ports = {name: getattr(defaults, name).port for name in SERVICES}
    assert len(set(ports.values())) == 3

    cli = typer.main.get_command(app)
    for name in SERVICES:
        opts = {o for p in cli.commands[name].params for o in p.opts}
        assert {"--host", "--port", "--config"} <= opts

    stages = dockerfile_targets()
    compose = compose_config("docker-compose.yml")
    cpu_compose = compose_config("docker-compose.yml", "docker-compose.cpu.yml")
    docs = render()
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())

    for name, port in ports.items():
        for files in (compose, cpu_compose):
            svc = files["services"][name]
            instr = stages[svc["build"]["target"]]["instr"]
            assert yaml.safe_load(instr["ENTRYPOINT"][-1]) == ["t1", name] and name in cli.commands
            if name == "trainer":  # compose launches it through torchrun
                assert torchrun_flags(svc["entrypoint"])[1] == ["t1", name]
            assert arg_after(svc["command"], "--port") == str(port)
            assert arg_after(svc["command"], "--host") == "0.0.0.0"
            assert arg_after(yaml.safe_load(instr["CMD"][-1]), "--port") == str(port)
            assert instr["EXPOSE"][-1] == str(port)
            assert f"T1_PORT={port}" in instr["ENV"][-1]
        if name == "verifier":
            assert compose["services"][name]["ports"] == [f"{port}:{port}"]

        assert chart_values[name]["port"] == port
        kind = "StatefulSet" if name == "trainer" else "Deployment"
        c = container(find(docs, kind, f"t1-{name}"), name)
        assert (torchrun_flags(c["command"])[1] if name == "trainer" else c["command"]) == ["t1", name]
        assert arg_after(c["args"], "--port") == str(port)
        assert arg_after(c["args"], "--host") == "0.0.0.0"
        assert {"name": "http", "containerPort": port} in c["ports"]
        svc = find(docs, "Service", f"t1-{name}")
        http = next(p for p in svc["spec"]["ports"] if p["name"] == "http")
        assert http["targetPort"] == "http" and http["port"] == port


def test_verifier_container_grants_exactly_what_its_sandbox_needs():
    """bubblewrap needs the runtime's seccomp/AppArmor profiles off for this container (user
    namespaces); everything else of the shared hardening stays."""
    c = container(find(render(), "Deployment", "t1-verifier"), "verifier")
    sc = c["securityContext"]
    assert sc["seccompProfile"] == {"type": "Unconfined"} and sc["appArmorProfile"] == {"type": "Unconfined"}
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert "privileged" not in sc
    for name in ("generator", "trainer"):  # the others keep the runtime's default profile
        kind = "StatefulSet" if name == "trainer" else "Deployment"
        assert "seccompProfile" not in container(find(render(), kind, f"t1-{name}"), name)["securityContext"]
    svc = compose_config("docker-compose.yml")["services"]["verifier"]
    assert sorted(svc["security_opt"]) == ["apparmor=unconfined", "seccomp=unconfined"]
    assert svc["cap_drop"] == ["ALL"] and "privileged" not in svc
    assert "bubblewrap" in " ".join(dockerfile_targets()["verifier"]["instr"]["RUN"])


def test_verifier_token_always_comes_from_a_secret():
    """Compose: a secret file read by the verifier; the chart: a generated Secret unless one is
    given; never a command-line argument."""
    svc = compose_config("docker-compose.yml")["services"]["verifier"]
    assert svc["secrets"] == ["verifier_token"]
    assert svc["environment"]["T1__VERIFIER__AUTH_TOKEN_FILE"] == "/run/secrets/verifier_token"
    assert "T1__VERIFIER__AUTH_TOKEN" not in svc["environment"]
    assert not any("auth_token" in a for a in svc["command"])
    assert compose_config("docker-compose.yml")["secrets"]["verifier_token"]["file"] == "./secrets/verifier_token"

    for values, secret, key in (({}, "t1-verifier-token", "token"),
                                ({"verifier": {"authToken": {"existingSecret": "mine", "key": "k"}}}, "mine", "k")):
        docs = render(values)
        c = container(find(docs, "Deployment", "t1-verifier"), "verifier")
        env = {e["name"]: e for e in c["env"]}
        assert env["T1__VERIFIER__AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
        assert not any("auth_token" in a for a in c["args"] + c["command"])
        generated = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "t1-verifier-token"]
        assert len(generated) == (0 if values else 1)
        if generated:
            import base64
            assert len(base64.b64decode(generated[0]["data"]["token"])) == 40
