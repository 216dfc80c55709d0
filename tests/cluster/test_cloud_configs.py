"""cluster/: the launcher config, the KubeRay manifests, the node image and the job upload, checked
offline with the tools that would judge them for real: Ray's own cluster-config validation (what
`ray up` runs before it talks to the cloud), the CRD schemas of a KubeRay release (vendored in
tests/cluster/kuberay/), each job's own argument parser, and Ray's own working_dir packaging.
No Ray cluster is started here."""

from __future__ import annotations

import copy
import gzip
import json
import re
import shlex
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "launcher" / "cvray-aws.yaml"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
SCHEMAS = Path(__file__).parent / "kuberay"
KUBERAY_RELEASE = "v1.7.0"
CODE_IN_IMAGE = "/home/ray/cvray"
# Every job a user can submit, with the RayJob that runs it.
JOB_SCRIPTS = {"train_cifar", "finetune", "sweep_train", "sweep_style", "stylize_folder", "predict"}


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def pinned_ray_version() -> str:
    """X.Y.Z of pyproject's `ray[...]~=X.Y.Z`: the one line that names the tested Ray."""
    text = (REPO / "pyproject.toml").read_text()
    pins = re.findall(r'"ray\[[a-z,]+\]~=(\d+\.\d+\.\d+)"', text)
    assert len(pins) == 1, "pyproject.toml must pin ray with one compatible-release range (~=X.Y.Z)"
    return pins[0]


def node_image() -> str:
    """The image the cloud configs run: the launcher's docker image (the other configs must agree)."""
    return load_yaml(LAUNCHER)["docker"]["image"]


# ----------------------------------------------------------------------------- versions and image

def test_one_ray_version_everywhere():
    version = pinned_ray_version()
    assert version == ray.__version__  # the pin is the Ray the tests ran on
    dockerfile = (CLUSTER / "image" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M)
    assert bases == [f"rayproject/ray:{version}-py311-gpu"], bases
    assert f"ray.__version__ == '{version}'" in dockerfile  # the build itself refuses another Ray
    assert node_image().endswith(f":ray{version}-py311-gpu"), node_image()
    for path in KUBERAY:
        doc = load_yaml(path)
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert spec["rayVersion"] == version, path.name
        images = {c["image"] for c in containers(spec)}
        assert images == {node_image()}, (path.name, images)


def test_dockerfile_installs_the_project_from_the_repository():
    text = (CLUSTER / "image" / "Dockerfile").read_text()
    assert f"WORKDIR {CODE_IN_IMAGE}" in text
    for copied in ("cvray", "jobs", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(copied)}\b", text, flags=re.M), copied
    assert re.search(r'^RUN pip install --no-cache-dir "\.\[optuna\]"', text, flags=re.M)


# ----------------------------------------------------------------------------- cluster launcher

def validate_launcher(config: dict) -> dict:
    """What `ray up` does before it contacts the cloud: merge Ray's provider defaults, then check
    the result against Ray's ray-schema.json and its cross-field rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_config_passes_rays_validation():
    config = validate_launcher(load_yaml(LAUNCHER))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    gpu_groups = [t for name, t in types.items() if name != config["head_node_type"]]
    assert "GPU" not in head["resources"] and head["max_workers"] == 0  # a CPU head
    assert len(gpu_groups) == 1
    group = gpu_groups[0]
    assert group["resources"]["GPU"] >= 1 and group["min_workers"] == 0 and group["max_workers"] >= 1
    assert config["provider"]["type"] == "aws"
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in starts  # the job API only through `ray dashboard`'s tunnel
    assert starts.count("RAY_AUTH_MODE=token ray start") == 2  # token auth on head and workers
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}  # one token everywhere


@pytest.mark.parametrize("breakage", ["misspelled key", "unknown head type", "bad type"])
def test_broken_launcher_config_is_rejected(breakage):
    config = load_yaml(LAUNCHER)
    if breakage == "misspelled key":
        config["available_node_types"]["gpu_worker"]["min_worker"] = 0
    elif breakage == "unknown head type":
        config["head_node_type"] = "no_such_type"
    else:
        config["max_workers"] = "four"
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_launcher(config)


# ----------------------------------------------------------------------------- KubeRay

def crd_schema(kind: str) -> dict:
    """The vendored v1 openAPIV3Schema, made strict: Kubernetes' API server rejects unknown fields
    under `kubectl apply` (strict field validation), while plain JSON Schema would allow them."""
    name = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}[kind]
    with gzip.open(SCHEMAS / f"ray.io_{name}.v1.schema.json.gz", "rt") as f:
        return strict(json.load(f))


def strict(node):
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def check_manifest(doc: dict) -> None:
    assert doc["apiVersion"] == "ray.io/v1"
    jsonschema.Draft7Validator(crd_schema(doc["kind"])).validate(doc)


def test_vendored_schemas_name_their_source():
    source = (SCHEMAS / "SOURCE.md").read_text()
    for needed in ("github.com/ray-project/kuberay", KUBERAY_RELEASE, "Apache License 2.0",
                   "ray-operator/config/crd/bases/ray.io_rayjobs.yaml"):
        assert needed in source


def test_every_manifest_matches_the_kuberay_crd():
    kinds = [load_yaml(p)["kind"] for p in KUBERAY]
    assert kinds.count("RayCluster") == 1 and kinds.count("RayJob") == len(JOB_SCRIPTS)
    for path in KUBERAY:
        doc = load_yaml(path)
        check_manifest(doc)
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert spec["authOptions"] == {"mode": "token"}, path.name
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"]["limits"], path.name
        for group in spec["workerGroupSpecs"]:
            gpu = group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
            assert gpu and int(gpu) >= 1, path.name


@pytest.mark.parametrize("breakage", ["misspelled field", "wrong type", "missing required"])
def test_broken_manifest_fails_the_crd_schema(breakage):
    doc = load_yaml(CLUSTER / "kuberay" / "rayjob-train-cifar.yaml")
    group = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    if breakage == "misspelled field":
        doc["spec"]["entrypiont"] = doc["spec"].pop("entrypoint")
    elif breakage == "wrong type":
        group["maxReplicas"] = "two"
    else:
        del group["groupName"]
    with pytest.raises(jsonschema.ValidationError):
        check_manifest(doc)


def rayjob_entrypoints() -> dict[str, list[str]]:
    """{job script name: its argv} from every RayJob's entrypoint, split as a shell would."""
    found = {}
    for path in KUBERAY:
        doc = load_yaml(path)
        if doc["kind"] != "RayJob":
            continue
        python, script, *argv = shlex.split(doc["spec"]["entrypoint"])
        assert python == "python" and script.startswith(f"{CODE_IN_IMAGE}/jobs/"), (path.name, script)
        name = Path(script).stem
        assert (REPO / "jobs" / f"{name}.py").is_file() and name not in found, path.name
        found[name] = argv
    return found


def parse_like_main(name: str, argv: list[str]) -> None:
    """Parse `argv` the way jobs/<name>.py's main() does, up to the point where Ray is needed."""
    import importlib

    module = importlib.import_module(name)
    if name == "sweep_train":
        args, job_argv = module.build_parser().parse_known_args(argv)
        module.make_sweep(args, job_argv)  # the swept job's parser, its config, every --param
    elif name == "sweep_style":
        from cvray.params import parse_param

        args, style_argv = module.build_parser().parse_known_args(argv)
        style_args = module.style_parser().parse_args(style_argv)
        config = module._style_args.style_config_from_args(style_args)
        for text in args.param or [module.DEFAULT_PARAM]:
            parse_param(text, type(config), module.SWEEPABLE)
    else:
        args = module.build_parser().parse_args(argv)
        if hasattr(module, "config_from_args"):
            module.config_from_args(args)


def test_rayjob_entrypoints_parse_with_the_jobs_own_parsers(capsys):
    entrypoints = rayjob_entrypoints()
    assert set(entrypoints) == JOB_SCRIPTS
    for name, argv in entrypoints.items():
        try:
            parse_like_main(name, argv)
        except SystemExit as exc:  # argparse's verdict, with its one line on stderr
            pytest.fail(f"{name}: {capsys.readouterr().err.strip()} (exit {exc.code})")
        uris = [a for a in argv if "://" in a]
        assert uris and all(u.startswith("s3://") for u in uris), (name, argv)  # data and storage on S3
        assert "--gpu" in argv, name  # a GPU cluster: ask for GPUs, so a missing one is an error, not CPU


def test_a_wrong_flag_in_an_entrypoint_would_be_caught(capsys):
    argv = rayjob_entrypoints()["train_cifar"] + ["--epohcs", "3"]
    with pytest.raises(SystemExit) as info:
        parse_like_main("train_cifar", argv)
    assert info.value.code == 2 and "--epohcs" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the job upload

def pack_working_dir(folder: Path, out: Path, *, include_gitignore: bool) -> list[str]:
    """What `ray job submit --working-dir FOLDER` would upload: Ray's own path from a runtime env
    to the zip (its default excludes, .rayignore, .gitignore), written to `out` instead of the GCS."""
    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    def upload(path, excludes=None, is_file=False):
        assert not is_file
        create_package(path, out, include_gitignore=include_gitignore, excludes=excludes)

    upload_working_dir_if_needed({"working_dir": str(folder)}, include_gitignore=include_gitignore, upload_fn=upload)
    with zipfile.ZipFile(out) as z:
        return z.namelist()


def test_rayignore_alone_keeps_data_results_and_tests_out(tmp_path):
    """A repository with every kind of clutter, packed with .gitignore switched off: .rayignore is
    the one place, so it must be enough on its own."""
    repo = tmp_path / "repo"
    files = ["cvray/__init__.py", "cvray/data/__init__.py", "jobs/train_cifar.py", "pyproject.toml",
             "cluster/kuberay/rayjob-predict.yaml",
             "data/cifar10/train.parquet", "results/run/model.pt", "tests/test_x.py", "docs/img/a.png",
             ".git/HEAD", ".venv/bin/python", "cvray/__pycache__/x.cpython-311.pyc", "cvray.egg-info/PKG-INFO",
             "jobs/__pycache__/y.pyc", "psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.whl", "cifar-10-python.tar.gz"]
    for name in files:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(b"x")
    (repo / ".rayignore").write_bytes((REPO / ".rayignore").read_bytes())
    packed = set(pack_working_dir(repo, tmp_path / "pkg.zip", include_gitignore=False))
    travels = {"cvray/__init__.py", "cvray/data/__init__.py", "jobs/train_cifar.py", "pyproject.toml",
               "cluster/kuberay/rayjob-predict.yaml", ".rayignore"}
    assert packed == travels, sorted(packed ^ travels)


def test_repository_upload_holds_the_code_and_stays_small(tmp_path):
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    zip_path = tmp_path / "pkg.zip"
    names = pack_working_dir(REPO, zip_path, include_gitignore=True)
    tops = {n.split("/")[0] for n in names}
    assert {"cvray", "jobs", "pyproject.toml"} <= tops
    assert not tops & {".git", "tests", "docs", "data", "results", ".venv"}, tops
    assert "jobs/train_cifar.py" in names and "cvray/__init__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    size = zip_path.stat().st_size
    # Ray refuses a package at GCS_STORAGE_MAX_SIZE (512 MiB in 2.60, lower on some setups) and
    # warns at half; code alone is well under a megabyte or two, so 20 MiB flags data sneaking in.
    assert size < min(GCS_STORAGE_MAX_SIZE // 2, 20 * 2**20), size


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
