"""compose.py: the pre-flight check of config files (before Hydra reads them), per-model variant names,
the schedule's phases, and shell-quoted commands."""

import subprocess
import sys

import pytest
from conftest import ROOT, run_config

from dynarch.compose import qualify_arch_overrides, shell_command
from dynarch.errors import ConfigError
from dynarch.preflight import check_yaml_file, preflight


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text,needles",
    [
        ("a: 1\na: 2\n", ["duplicate key 'a' (line 2)", "keep one 'a'"]),
        (
            "x: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
            ["tag tag:yaml.org,2002:python/object/apply", "cannot name Python objects"],
        ),
        ("x: !custom 3\n", ["tag !custom is not allowed"]),
        ("a: [1, 2\n", ["not valid YAML"]),
        (
            "\n".join(
                ["a: &a [1,1,1,1,1,1,1,1,1,1]"]
                + [
                    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]"
                    for p, c in zip("abcdefgh", "bcdefghi")
                ]
            )
            + "\n",
            ["too complex", "after expanding aliases", "remove the nested anchors"],
        ),
        ("a:" + " [" * 40 + "1" + "]" * 40 + "\n", ["nesting deeper than 32"]),
    ],
)
def test_config_files_are_bounded_plain_yaml(tmp_path, text, needles):
    path = write(tmp_path / "f.yaml", text)
    with pytest.raises(ConfigError) as err:
        check_yaml_file(path)
    message = str(err.value)
    assert str(path) in message and "fix:" in message
    for needle in needles:
        assert needle in message, message


def test_a_huge_file_is_refused_without_parsing(tmp_path):
    path = write(tmp_path / "big.yaml", "a: " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="config file too large"):
        check_yaml_file(path)


def evil_variant(tmp_path, body):
    outside = tmp_path / "outside.txt"
    write(tmp_path / "conf" / "arch" / "evil.yaml", "# @package _global_\n" + body.format(outside=outside))
    return outside


@pytest.mark.parametrize(
    "body,key",
    [
        (
            "hydra:\n  callbacks:\n    x:\n      _target_: numpy.savetxt\n      fname: {outside}\n      X: [1]\n",
            "hydra",
        ),
        ("hydra:\n  job_logging:\n    handlers:\n      file:\n        filename: {outside}\n", "hydra"),
        ("model:\n  blocks: {{}}\nseed: 3\n", "seed"),
        ("defaults:\n  - /model: cnn\n", "defaults"),
    ],
)
def test_a_variant_file_may_patch_model_data_trainer_optimizer_only(tmp_path, body, key):
    """Run through the real CLI with --config-dir: refused before Hydra acts, nothing written outside."""
    outside = evil_variant(tmp_path, body)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynarch",
            "--config-dir",
            str(tmp_path / "conf"),
            "+arch=evil",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"arch/evil: {key}" in proc.stderr and "a variant file may only patch" in proc.stderr
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert not outside.exists() and not (tmp_path / "run").exists()


def test_a_schedule_file_may_not_leave_its_package(tmp_path):
    path = write(
        tmp_path / "conf" / "schedule" / "evil.yaml",
        "# @package _global_\nphases: [{epochs: 1}]\nhydra: {job: {chdir: true}}\n",
    )
    with pytest.raises(ConfigError, match="may not change its package"):
        preflight(["--config-dir", str(path.parents[1]), "+schedule=evil"])


def test_short_variant_names_resolve_per_model():
    assert qualify_arch_overrides(["+arch=deep"]) == ["+arch=mlp/deep"]
    assert qualify_arch_overrides(["model=cnn", "+arch=cnn_wide"]) == ["model=cnn", "+arch=cnn/wide"]
    assert qualify_arch_overrides(["model=cnn", "+arch=no_conv1,deep"]) == ["model=cnn", "+arch=cnn/no_conv1,cnn/deep"]
    assert qualify_arch_overrides(["model=mlp,cnn", "+arch=deep"]) == ["model=mlp,cnn", "+arch=deep"]  # swept
    assert run_config(["model=cnn", "+arch=cnn_deep"]).variant == "deep"


def test_unknown_variant_is_refused_before_hydra_with_the_closest_name():
    with pytest.raises(
        ConfigError, match=r"(?s)no arch named 'wdie' for this model. Did you mean 'cnn/wide' or 'mlp/wide'"
    ):
        preflight(["+arch=wdie"])


def test_commands_are_shell_quoted():
    assert (
        shell_command(["python", "-m", "dynarch", "hydra.run.dir=/tmp/my run"])
        == "python -m dynarch 'hydra.run.dir=/tmp/my run'"
    )
