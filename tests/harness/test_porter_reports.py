"""What a porter sees when a port fails: errors with the port's own traceback, counterexample files that
replay, the false conjunct explained, honest verdicts for what did not run, attachable reports, a broken
registered backend failing the run, the speed options, and running the check from a port's own folder.

The ports live in a scratch "port repository" (``portrepo/myport/``), outside this checkout, as a
porter's would; every run is a real subprocess of ``python -m spec`` or ``python -m pytest``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from .support import REPO, Run, assert_no_traceback, environment, run, run_all

PORTS = {
    "__init__.py": "",
    "raising.py": '''\
"""A port whose gradient raises two frames deep in its own code."""
from backends.numpy_backend import NumpyBackend


def _scale(grad, factor):
    return grad.scaled(factor)  # numpy arrays have no .scaled: AttributeError


class RaisingPort(NumpyBackend):
    name = "raising"
    dtypes = ("float64",)

    def kd_logit_gradient(self, *args, **kwargs):
        return _scale(super().kd_logit_gradient(*args, **kwargs), 1.0)


BACKEND = RaisingPort()
''',
    "f32.py": '''\
"""A correct port that computes in float32 only."""
from backends.numpy_backend import NumpyBackend


class Float32Only(NumpyBackend):
    name = "f32only"
    dtypes = ("float32",)


BACKEND = Float32Only()
''',
    "counting.py": '''\
"""A correct port that counts its gradient calls in the file named by $COUNT_FILE."""
import os

from backends.numpy_backend import NumpyBackend


class Counting(NumpyBackend):
    name = "counting"
    dtypes = ("float64",)

    def kd_logit_gradient(self, *args, **kwargs):
        with open(os.environ["COUNT_FILE"], "a") as fh:
            fh.write("x")
        return super().kd_logit_gradient(*args, **kwargs)


BACKEND = Counting()
''',
    "caps.py": '''\
"""Two correct ports, one declaring the optional member reverse_kl, one declaring none."""
from backends.numpy_backend import NumpyBackend


class WithReverse(NumpyBackend):
    name = "with-reverse"
    capabilities = frozenset({"reverse_kl"})


class WithoutReverse(NumpyBackend):
    name = "without-reverse"
    capabilities = frozenset()


WITH = WithReverse()
WITHOUT = WithoutReverse()
''',
}


def _env(**extra: str) -> dict[str, str]:
    return environment(**extra)


@pytest.fixture(scope="module")
def portrepo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("portrepo")
    (root / "myport").mkdir()
    for name, text in PORTS.items():
        (root / "myport" / name).write_text(text, "utf-8")
    return root


def spec_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    return run(["-m", "spec", *args], cwd=cwd, env=env or _env())


# -- errors, counterexample files, replay, reports --------------------------------------------------------


@pytest.fixture(scope="module")
def raising_run(portrepo: Path) -> tuple[Run, Path]:
    report = portrepo / "reports" / "raising.json"
    result = spec_in(portrepo, "check", "--backend", "myport.raising:BACKEND", "-k", "F-KD-GRAD-001",
                     "--max-examples", "5", "--report", str(report))
    return result, report


def test_a_port_that_raises_is_an_error_with_its_own_file_and_line(raising_run: tuple[Run, Path],
                                                                    portrepo: Path) -> None:
    result, _ = raising_run
    assert result.returncode == 1, str(result)
    out = result.stdout
    assert "F-KD-GRAD-001 ERROR on raising (float64): let analytic raised AttributeError" in out, str(result)
    assert "F-KD-GRAD-001 falsified" not in out  # an exception is not a verdict on the prediction
    port = portrepo / "myport" / "raising.py"
    assert f'File "{port}", line 6, in _scale' in out, out
    assert f'File "{port}", line 14, in kd_logit_gradient' in out, out
    assert "prediction: kd_logit_gradient equals central finite differences" in out
    assert "spec/runtime.py" not in out  # the harness's own frames are not the porter's business
    assert re.search(r"^kd-loss-v1\s+1 ERROR, 0/1 passed, 1 not run$", out, re.MULTILINE), out  # float32: not run
    assert "Conformance: FAIL (1 errors; 0 passed; 1 not run" in out


def test_a_failure_saves_a_full_precision_counterexample_that_replays(raising_run: tuple[Run, Path],
                                                                       portrepo: Path) -> None:
    result, _ = raising_run
    m = re.search(r"^  counterexample file: (\S+)$", result.stdout, re.MULTILINE)
    assert m, str(result)
    saved = portrepo / m[1]
    assert saved.is_file() and saved.parent == portrepo / ".kd-contracts" / "failures"
    assert f"  reproduce:  python -m spec replay {m[1]}" in result.stdout
    with np.load(saved) as data:
        assert {"b.student", "b.teacher", "b.labels", "b.temperature", "r", "__meta__"} <= set(data.files)
        assert data["b.student"].dtype == np.float64 and data["b.labels"].dtype == np.int64
        meta = json.loads(str(data["__meta__"]))
    assert meta["falsifier"] == "F-KD-GRAD-001" and meta["backend"] == "myport.raising:BACKEND"
    again, against_numpy = run_all([
        (["-m", "spec", "replay", m[1]], portrepo),
        (["-m", "spec", "replay", m[1], "--backend", "numpy"], portrepo),
    ])
    assert again.returncode == 1, str(again)
    assert "F-KD-GRAD-001 ERROR on raising (float64)" in again.stdout
    assert "F-KD-GRAD-001 still fails on the saved counterexample" in again.stdout
    # the counterexample it ran is the saved one, value for value
    shown = re.findall(r"^    b = .*$", result.stdout, re.MULTILINE)
    assert shown and shown[0] in again.stdout, again.stdout
    assert against_numpy.returncode == 0, str(against_numpy)
    assert "F-KD-GRAD-001 passes on the saved counterexample" in against_numpy.stdout


def test_the_report_carries_what_a_pull_request_needs(raising_run: tuple[Run, Path], portrepo: Path) -> None:
    result, path = raising_run
    assert f"report written to {path}" in result.stdout
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not the 0600 of a temporary file
    report = json.loads(path.read_text("utf-8"))
    assert report["ok"] is False and report["verdict"].startswith("Conformance: FAIL")
    [failure] = report["failures"]
    assert failure["falsifier"] == "F-KD-GRAD-001" and failure["outcome"] == "error"
    assert failure["subject"] == "raising" and failure["reproduce"].startswith("python -m spec replay ")
    assert (portrepo / failure["counterexample_file"]).is_file()
    assert "AttributeError" in failure["details"] and "raising.py" in failure["details"]
    facts = report["run"]
    assert facts["profile"] == "ci" and facts["seed"] == "derandomized" and facts["max_examples"] == 5
    identity = facts["backend_identity"]["raising"]
    assert identity["module"] == "myport.raising" and identity["file"] == str(portrepo / "myport" / "raising.py")
    assert identity["version"]
    for name, info in facts["contracts"].items():
        contract = REPO / "contracts" / f"{name}.yaml"
        assert info["sha256"] == hashlib.sha256(contract.read_bytes()).hexdigest(), name


def test_the_markdown_report_lists_each_failure_with_its_replay(portrepo: Path) -> None:
    path = portrepo / "reports" / "bug.md"
    result = spec_in(portrepo, "check", "--backend", "tests.ports.bug_missing_t_squared:BACKEND",
                     "-k", "F-KD-GRAD-001", "--max-examples", "10", "--report", str(path))
    assert result.returncode == 1, str(result)
    text = path.read_text("utf-8")
    assert "## Failures" in text and "### F-KD-GRAD-001 on bug-missing-t-squared: falsified" in text
    assert re.search(r"^Reproduce: `python -m spec replay \S+F-KD-GRAD-001\.bug-missing-t-squared\.npz`$", text,
                     re.MULTILINE), text
    assert "| profile | `ci` |" in text and "sha256 `" in text
    assert "module `tests.ports.bug_missing_t_squared`" in text
    # the diagnosis: the false comparison, the values on each side and the factor between them
    assert "why:        the expectation is false: `close_scaled(analytic, numeric, tol)`" in text
    assert re.search(r"actual = \S+ x expected everywhere: the factor is T\^2", text), text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- honest verdicts ----------------------------------------------------------------------------------------


def test_a_float32_only_port_shows_what_did_not_run(portrepo: Path) -> None:
    path = portrepo / "reports" / "f32.json"
    result = spec_in(portrepo, "check", "--backend", "myport.f32:BACKEND", "-k", "kd_loss_v1",
                     "--max-examples", "3", "--report", str(path))
    assert result.returncode == 0, str(result)
    row = re.search(r"^kd-loss-v1\s+(\d+)/(\d+) passed, (\d+) not run$", result.stdout, re.MULTILINE)
    assert row, str(result)
    passed, ran, not_run = map(int, row.groups())
    assert passed == ran and not_run > passed  # most of kd-loss-v1 is float64: it did not run here
    assert "not run: f32only does not compute in float64 (it declares float32)" in result.stdout
    verdict = result.stdout.strip().splitlines()[-2]
    assert verdict == (f"Conformance: PASS ({passed} passed; {not_run} not run, 0 not implemented: the verdict "
                       "covers only what ran, see 'Did not run')"), verdict
    report = json.loads(path.read_text("utf-8"))
    assert report["contracts"]["kd-loss-v1"]["f32only"]["not_run"] == not_run
    reasons = {d["reason"]: d["count"] for d in report["did_not_run"]}
    assert reasons["not run: f32only does not compute in float64 (it declares float32)"] > 0


REQUIRES_CONTRACT = """\
metadata:
  version: "1.0.0"
  description: "A falsifier that needs an optional backend member"
  references: ["none: a fixture of the harness tests"]
  binding: bindings.kd
equations:
  softmax:
    formula: "softmax(z)_v = exp(z_v) / sum_u exp(z_u)"
falsification_tests:
  - id: F-REQ-001
    rule: "Softmax matches the reference"
    prediction: "kd.softmax(z) = ref.softmax(z)"
    if_fails: "the softmax is wrong"
    requires: [reverse_kl]
    check:
      given:
        b: kd_batch
      expect: close(kd.softmax(b.student), ref.softmax(b.student), 1.0e-12)
qa_gate: {id: F-REQ-GATE, name: "Requires"}
"""


def test_a_missing_optional_member_is_not_implemented_never_passed(portrepo: Path, tmp_path: Path) -> None:
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "requires-v1.yaml").write_text(REQUIRES_CONTRACT, "utf-8")
    generated = spec_in(tmp_path, "generate")
    assert generated.returncode == 0, str(generated)
    assert "requires=('reverse_kl',)" in (tmp_path / "falsifiers" / "test_requires_v1.py").read_text("utf-8")
    path = tmp_path / "report.json"
    env = _env(PYTHONPATH=os.pathsep.join([str(REPO), str(portrepo)]))
    result = spec_in(tmp_path, "check", "--backend", "myport.caps:WITH,myport.caps:WITHOUT",
                     "--max-examples", "3", "--report", str(path), env=env)
    assert result.returncode == 0, str(result)
    assert re.search(r"^requires-v1\s+1/1 passed\s+0/0 passed, 1 not implemented$", result.stdout, re.MULTILINE), (
        str(result))
    assert "not implemented: without-reverse does not implement reverse_kl" in result.stdout
    assert "1 not implemented: the verdict covers only what ran" in result.stdout
    cells = json.loads(path.read_text("utf-8"))["contracts"]["requires-v1"]
    assert cells["with-reverse"]["passed"] == 1
    assert cells["without-reverse"] == {"passed": 0, "failed": 0, "errors": 0, "not_run": 0, "not_implemented": 1}


# -- broken registered backends ----------------------------------------------------------------------------


def _site_with(tmp_path: Path, name: str, module_source: str) -> Path:
    """A folder holding a module and the installed metadata that registers it as a backend."""
    site = tmp_path / f"site-{name}"
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", "utf-8")
    (dist / "entry_points.txt").write_text(f"[kd_contracts.backends]\n{name} = {name}_mod:BACKEND\n", "utf-8")
    (site / f"{name}_mod.py").write_text(module_source, "utf-8")
    return site


def test_a_broken_registered_backend_fails_all_and_a_missing_library_is_left_out(tmp_path: Path) -> None:
    broken = _site_with(tmp_path, "brokenport", "raise RuntimeError('the port does not even import')\n")
    optional = _site_with(tmp_path, "jaxport", "import jax_that_is_not_installed_here\n")
    jobs = []
    for site in (broken, optional):
        env = _env(PYTHONPATH=os.pathsep.join([str(REPO), str(site)]))
        jobs.append(run(["-m", "pytest", "-p", "no:cacheprovider", "falsifiers", "--backend", "all", "--co"],
                        cwd=REPO, env=env))
    broken_run, optional_run = jobs
    assert_no_traceback(broken_run)
    assert broken_run.returncode not in (0, 5), str(broken_run)
    assert "registered backend(s) are broken" in broken_run.output
    assert "backend 'brokenport': module 'brokenport_mod' cannot be imported: RuntimeError: the port does not even " \
           "import" in broken_run.output
    assert optional_run.returncode == 0, str(optional_run)
    assert ("backend left out: jaxport (backend 'jaxport': module 'jaxport_mod' needs "
            "'jax_that_is_not_installed_here', which is not installed here)") in optional_run.output


# -- speed: -k, -x, --max-examples, once-scope ---------------------------------------------------------------


def test_max_examples_caps_the_examples_and_k_takes_a_falsifier_id(portrepo: Path, tmp_path: Path) -> None:
    count = tmp_path / "count"
    env = _env(PYTHONPATH=os.pathsep.join([str(REPO), str(portrepo)]), COUNT_FILE=str(count))
    result = spec_in(portrepo, "check", "--backend", "myport.counting:BACKEND", "-k", "F-KD-GRAD-001",
                     "--max-examples", "3", env=env)
    assert result.returncode == 0, str(result)
    assert re.search(r"^kd-loss-v1\s+1/1 passed, 1 not run$", result.stdout, re.MULTILINE), str(result)
    assert 1 <= len(count.read_text()) <= 3  # one gradient per example
    bad = spec_in(portrepo, "check", "--max-examples", "0")
    assert bad.returncode == 2 and "--max-examples: 0 is not a positive number" in bad.stderr, str(bad)


def test_exitfirst_stops_at_the_first_failure(portrepo: Path) -> None:
    result = spec_in(portrepo, "check", "--backend", "tests.ports.bug_wrong_kl_direction:BACKEND", "-x",
                     "--max-examples", "5", "-k", "kd_loss_v1")
    assert result.returncode == 1, str(result)
    assert len(re.findall(r"^FAILED ", result.stdout, re.MULTILINE)) == 1, str(result)
    assert "stopping after 1 failures" in result.stdout


# -- the check from a port's own repository, with the project installed by pip -----------------------------


def test_check_runs_from_a_ports_own_folder_with_the_project_installed(portrepo: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".hypothesis", "__pycache__", "build",
                                                                 "*.egg-info", ".kd-contracts"))
    site = tmp_path / "site"
    install = run(["-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site),
                   str(source)], cwd=tmp_path, timeout=300)
    assert install.returncode == 0, str(install)
    assert (site / "contracts" / "kd-loss-v1.yaml").is_file() and (site / "falsifiers" / "conftest.py").is_file()
    env = {k: v for k, v in _env().items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)  # the installed project only: not this checkout
    result = spec_in(portrepo, "check", "--backend", "myport.f32:BACKEND", "-k",
                     "F-KD-STEP-001 or F-DISTILL-PIPELINE-001", "--once", "--max-examples", "3", env=env)
    assert result.returncode == 0, str(result)
    assert f"== validate {site / 'contracts'}" in result.stdout
    assert f"== run the falsifiers in {site / 'falsifiers'}" in result.stdout
    assert re.search(r"^kd-step-v1\s+1/1 passed", result.stdout, re.MULTILINE), str(result)
    # a falsifier whose check is one of the project's own tests says it did not run, and why
    assert "1 x not run: tests/test_pipeline.py is not in this installation" in result.stdout, str(result)
    missing = spec_in(portrepo, "check", "--backend", "notmyport.mod:BACKEND", env=env)
    assert missing.returncode == 2, str(missing)
    assert "install your port (`pip install -e .`), or add its folder to PYTHONPATH" in missing.output



class _HalfAPort:
    """Registered, importable, but not a backend: it lacks most protocol members."""

    name = "half"


class _RaisingProbe:
    """A numpy backend whose availability probe raises."""

    def __new__(cls):  # the factory form: the registry calls the class
        from backends.numpy_backend import NumpyBackend

        class Probe(NumpyBackend):
            name = "raising-probe"

            def available(self):
                raise RuntimeError("probe exploded")

        return Probe()


HALF = _HalfAPort()


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("tests.harness.test_porter_reports:HALF", "does not satisfy the backend protocol"),
        ("tests.harness.test_porter_reports:_RaisingProbe", "available() raised RuntimeError: probe exploded"),
    ],
)
def test_all_fails_on_a_registered_backend_that_is_not_usable(monkeypatch: pytest.MonkeyPatch, target: str,
                                                               said: str) -> None:
    from backends import registry

    registered = {**registry._registered(), "plugged": target}
    monkeypatch.setattr(registry, "_registered", lambda: registered)
    registry.clear_cache()
    try:
        with pytest.raises(registry.BackendError) as error:
            registry.select("all")
    finally:
        registry.clear_cache()
    assert "1 registered backend(s) are broken" in str(error.value) and said in str(error.value)
    assert "backend 'plugged'" in str(error.value)
