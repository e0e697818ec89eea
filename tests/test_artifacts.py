"""jasco_fast.artifacts: ahead-of-time artifacts built, keyed, cached, loaded and validated; LatentDecoder's
"aot" backend (one-pass and chunk-step artifacts) against the reference. Every AOT compile costs seconds on a
small machine, so the file builds one shared cache (the one-pass entry and the three chunk steps, copied for
tests that damage it), one real background build, and two deliberately broken packages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from checkpoints import write_transformers_dir

import jasco_fast
from jasco_fast import LatentDecoder, _files, artifacts, load_decoder, reference
from jasco_fast.artifacts import Recipe
from jasco_fast.cli import main
from jasco_fast.pipeline import aot_min_frames

F32_TOL = 1e-5


def rel_err(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """Two checkpoints of one tiny architecture, different weights."""
    root = tmp_path_factory.mktemp("ckpts")
    return [load_decoder(write_transformers_dir(root / f"s{seed}", seed=seed)[0]) for seed in (0, 1)]


CHUNK = 16  # latent frames per chunk in the chunked tests (the tiny decoder's left context is a few frames)


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory, decoders):
    """A cache folder holding the artifacts of the tiny architecture (float32, scalar statistics): one-pass,
    and the three chunk steps of CHUNK-frame chunks."""
    cache = tmp_path_factory.mktemp("cache")
    for recipe in LatentDecoder(decoders[0], backend="eager", chunk_frames=CHUNK).aot_recipes():
        path = artifacts.build(recipe, cache=cache)
        assert path is not None and path.is_file()
    return cache


@pytest.fixture
def cache(tmp_path, built_cache, monkeypatch):
    """A private copy of the built cache, used by LatentDecoder through the environment."""
    copy = tmp_path / "cache"
    shutil.copytree(built_cache, copy)
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(copy))
    monkeypatch.setenv("JASCO_FAST_BACKGROUND_BUILD", "0")
    return copy


def entry_files(cache: Path, suffix: str, name: str = "latent_decoder") -> list[Path]:
    return sorted((cache / "aot").glob(f"{name}-*.{suffix}"))


def entry(cache: Path, recipe: Recipe, suffix: str) -> Path:
    return cache / "aot" / f"{recipe.key()}.{suffix}"


def one_pass_recipe(decoder) -> Recipe:
    """The recipe of the one-pass artifact for any B (LatentDecoder.aot)."""
    return LatentDecoder(decoder, backend="eager", chunk_frames=None).aot_recipe()


class Forbidden:
    """A backend whose every call fails: the aot backend's fallback, so that a passing call proves the artifacts ran."""

    def whole(self, *_):
        raise AssertionError("the eager path ran instead of the artifact")

    step = whole


def forbid_eager(fast: LatentDecoder):
    """Make the eager paths fail, so a passing call proves the artifacts ran."""

    def eager(*_):
        raise AssertionError("the eager path ran instead of the artifact")

    fast.load_artifacts()
    fast._backend.fallback = Forbidden()
    for runner in fast._backend.runners.values():
        runner.eager = eager


# --------------------------------------------------------------------------------------------------
# Correctness, dynamic shapes, one artifact per architecture


def test_artifact_matches_reference_for_every_batch_size_and_length(cache, decoders):
    fast = LatentDecoder(decoders[0], backend="aot", chunk_frames=None)
    assert fast.aot.artifact is not None, fast.aot.status
    forbid_eager(fast)
    lo = aot_min_frames(fast.decoder)
    for B, T in [(1, lo), (3, 17), (2, 64), (5, 33), (1, 200)]:
        latents = torch.randn(B, T, 8)
        assert rel_err(fast(latents), reference.decode(decoders[0], latents)) < F32_TOL, (B, T)
    # strided and half-precision latents go through it too
    latents = torch.randn(2, 8, 30).transpose(1, 2)
    assert rel_err(fast(latents), reference.decode(decoders[0], latents)) < F32_TOL
    assert rel_err(fast(latents.bfloat16()), reference.decode(decoders[0], latents.bfloat16().float())) < F32_TOL
    assert len(entry_files(cache, "pt2")) == 2  # B = 1 and any B; no new build for new shapes


def test_shapes_outside_the_bounds_run_eagerly(cache, decoders):
    fast = LatentDecoder(decoders[0], backend="aot", chunk_frames=None)
    lo = aot_min_frames(fast.decoder)
    for latents in (torch.randn(2, lo - 1, 8), torch.randn(1, 1, 8), torch.randn(2, 20, 8, dtype=torch.float64)):
        assert rel_err(fast(latents), reference.decode(decoders[0], latents.float())) < F32_TOL


def test_one_artifact_serves_every_checkpoint_of_an_architecture(cache, decoders):
    """Weights are not baked in: another checkpoint and other statistics load the same entry and give
    their own results (biases and scalars included, which Inductor would otherwise inline; the LSTM's pack,
    a buffer of each decoder, too)."""
    first = LatentDecoder(decoders[0], backend="aot", chunk_frames=None)
    manifest = json.loads(artifacts._paths(first.aot_recipe().key(), None)["json"].read_text())
    assert any(name.endswith("packed_recurrent") for name in manifest["constants"])
    other = LatentDecoder(decoders[1], mean=0.3, std=2.5, backend="aot", chunk_frames=None)
    assert other.aot_recipe().key() == first.aot_recipe().key()
    assert other.aot.artifact is not None, other.aot.status
    forbid_eager(other)
    latents = torch.randn(2, 40, 8)
    want = reference.decode(decoders[1], latents, 0.3, 2.5)
    assert rel_err(other(latents), want) < F32_TOL
    assert rel_err(first(latents), reference.decode(decoders[0], latents)) < F32_TOL


def test_cpu_default_is_the_artifacts_and_torch_compile_stays_available(decoders):
    assert LatentDecoder(decoders[0]).backend == "aot"
    assert LatentDecoder(decoders[0], backend=None).backend == "aot"
    assert LatentDecoder(decoders[0], backend="inductor").backend == "inductor"
    assert LatentDecoder(decoders[0], mode="default").backend == "inductor"  # a torch.compile mode
    assert LatentDecoder(decoders[0], backend="eager").backend == "eager"


@pytest.mark.parametrize("B", [1, 3])
def test_chunked_decode_runs_from_the_chunk_step_artifacts(cache, decoders, B):
    """Long inputs: first, middle and last chunks each from their artifact (dynamic B; dynamic length for
    the last), equal to the reference; no new build for new shapes, and the default decoder uses them."""
    fast = LatentDecoder(decoders[1], mean=0.2, std=3.0, chunk_frames=CHUNK)  # the defaults, other weights
    forbid_eager(fast)
    status = fast.artifact_status()
    assert len(status) == 8 and all(s.startswith("loaded") for s in status.values()), status
    assert fast.artifacts_loaded
    assert fast.wait_for_artifacts()  # nothing to wait for: all cached
    plan = fast._plan(CHUNK)
    for T in (plan.min_chunked_frames, plan.min_chunked_frames + 1, 2 * CHUNK + plan.right, 5 * CHUNK + 7, 97):
        latents = torch.randn(B, T, 8)
        want = reference.decode(decoders[1], latents, 0.2, 3.0)
        assert rel_err(fast(latents), want) < F32_TOL, T
        assert rel_err(torch.cat(list(fast.stream(latents)), -1), want) < F32_TOL, T
    assert len(list((cache / "aot").glob("*.pt2"))) == 8


def test_build_refuses_an_artifact_that_ignores_the_weights_it_is_handed(tmp_path, monkeypatch):
    """A tensor the export bakes in (here a plain attribute, not a buffer) would keep computing with the
    build's random values whatever checkpoint is loaded: the build's check catches it, nothing is published, and a background build leaves a failure marker so later processes do not
    retry it endlessly (until `jasco-fast compile` or `cache clear`)."""
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(tmp_path))
    recipe = Recipe("baked", "test_artifacts:baked_program", {"baked": True})
    with pytest.raises(artifacts.ArtifactError, match="not the module's parameters or buffers"):
        artifacts.build(recipe)
    assert not list((tmp_path / "aot").glob("baked-*.pt2")) and not list((tmp_path / "aot").glob("baked-*.json"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    builds = artifacts.BackgroundBuilds([recipe])
    builds.request(recipe)
    assert builds.process.wait(timeout=600) == 1
    assert "not the module's parameters" in artifacts.failure(recipe)
    builds.process = None
    builds.request(recipe)
    assert builds.process is None  # not retried
    assert main(["cache", "clear"]) == 0
    assert artifacts.failure(recipe) is None and not artifacts.is_cached(recipe)


def test_build_refuses_an_artifact_with_weights_inlined_in_its_code(tmp_path, monkeypatch):
    """Without `always_keep_tensor_constants`, Inductor writes scalar buffers into the generated code: the
    artifact loads, but ignores the weights it is handed. The build runs it with perturbed weights against
    eager and refuses it; with the option (as shipped) the same program builds."""
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(tmp_path))
    recipe = Recipe("scaled", "test_artifacts:baked_program", {"baked": False})
    assert artifacts.build(recipe).is_file()
    monkeypatch.setattr(artifacts, "INDUCTOR_OPTIONS", {"aot_inductor.package_constants_in_so": False})
    with pytest.raises(artifacts.ArtifactError, match="disagrees"):
        artifacts.build(recipe, force=True)


class _Scaled(torch.nn.Module):
    def __init__(self, baked: bool):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 4))
        scale = torch.tensor(2.0)  # a scalar: what Inductor would inline into the code if allowed
        if baked:
            self.scale = scale  # a plain attribute: torch.export lifts it as a constant
        else:
            self.register_buffer("scale", scale)

    def forward(self, x):
        return (x @ self.weight) * self.scale


def baked_program(baked: bool) -> artifacts.Program:
    from torch.export import Dim

    return artifacts.Program(_Scaled(baked), (torch.randn(3, 4),), ({0: Dim("rows", min=1, max=64)},))


def test_key_covers_what_changes_the_generated_code(decoders, monkeypatch):
    base = LatentDecoder(decoders[0], backend="eager")
    key = base.aot_recipe().key()
    assert LatentDecoder(decoders[1], mean=1.0, backend="eager").aot_recipe().key() == key  # weights, values: same
    others = [
        LatentDecoder(decoders[0], backend="eager", dtype=torch.bfloat16).aot_recipe().key(),
        LatentDecoder(decoders[0], backend="eager", channels_last=False).aot_recipe().key(),
        LatentDecoder(decoders[0], mean=torch.zeros(8), backend="eager").aot_recipe().key(),
        Recipe(
            "latent_decoder",
            base.aot_recipe().factory,
            {**base.aot_recipe().params, "config": {**base.aot_recipe().params["config"], "n_filters": 8}},
        ).key(),
    ]
    assert len(set(others + [key])) == len(others) + 1
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "OTHER_ISA")
    assert base.aot_recipe().key() != key
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert base.aot_recipe().key() != key


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(tmp_path / "x"))
    assert artifacts.cache_location() == (tmp_path / "x", "JASCO_FAST_CACHE_DIR")
    assert artifacts.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("JASCO_FAST_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert artifacts.cache_location() == (tmp_path / "xdg" / "jasco_fast", "XDG_CACHE_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert artifacts.cache_location() == (Path.home() / ".cache" / "jasco_fast", "default")
    assert artifacts.cache_dir() == Path.home() / ".cache" / "jasco_fast"


# --------------------------------------------------------------------------------------------------
# Cache safety: damaged, stale, foreign and wrong entries are never run, and are rebuilt


class Finished:
    """What build_in_background returns, a process; here one that has exited."""

    def poll(self):
        return 0


class Running:
    """What build_in_background returns, a process; here one that is still running."""

    def poll(self):
        return None


@pytest.fixture
def rebuilds(monkeypatch):
    """Records background builds instead of starting them."""
    started = []
    monkeypatch.setattr(
        artifacts, "build_in_background", lambda recipes, cache=None: started.extend(recipes) or Finished()
    )
    return started


def test_a_background_build_starts_after_the_call_not_during_it(tmp_path, decoders, monkeypatch):
    """Empty cache, a long input: every chunk runs eagerly, and only then does one builder start (a
    starting interpreter would compete with the call), for every artifact, the chunks it missed first."""
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("JASCO_FAST_BACKGROUND_BUILD", "1")
    events = []

    def label(recipe):
        return recipe.params.get("position", "one pass") + (" B=1" if recipe.params["single"] else "")

    monkeypatch.setattr(
        artifacts,
        "build_in_background",
        lambda recipes, cache=None: events.append(["build"] + [label(r) for r in recipes]) or Running(),
    )
    fast = LatentDecoder(decoders[0], chunk_frames=CHUNK)
    assert set(fast.load_artifacts().values()) == {"no entry"} and events == [] and not fast.artifacts_loaded
    for (_, position, _), runner in ((k, r) for k, r in fast._backend.runners.items() if k[1] is not None):
        runner.eager = (lambda eager, p: lambda *a: events.append(["chunk", p]) or eager(*a))(runner.eager, position)
    latents = torch.randn(2, 3 * CHUNK + 5, 8)
    assert rel_err(fast(latents), reference.decode(decoders[0], latents)) < F32_TOL
    assert events == [
        ["chunk", "first"],
        ["chunk", "middle"],
        ["chunk", "middle"],
        ["chunk", "last"],
        ["build", "first", "middle", "last", "one pass B=1", "one pass", "first B=1", "last B=1", "middle B=1"],
    ]
    fast(latents)
    assert events[-1] == ["chunk", "last"]  # the builder still runs and has the set: no second one


def test_start_artifact_build_starts_a_deferred_build_when_asked(tmp_path, decoders, monkeypatch):
    """background_build=False: misses build nothing; start_artifact_build() then starts one builder for every
    artifact, the ones the calls missed first, and not a second while it runs."""
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("JASCO_FAST_BACKGROUND_BUILD", "1")
    builds = []
    monkeypatch.setattr(
        artifacts, "build_in_background", lambda recipes, cache=None: builds.append(recipes) or Running()
    )
    fast = LatentDecoder(decoders[0], chunk_frames=CHUNK, background_build=False)
    latents = torch.randn(1, 12, 8)  # one pass, B = 1
    for _ in range(2):
        assert rel_err(fast(latents), reference.decode(decoders[0], latents)) < F32_TOL
    assert builds == [] and not fast.artifacts_loaded
    process = fast.start_artifact_build()
    assert isinstance(process, Running) and len(builds) == 1
    assert builds[0][0] == fast.aot_recipe(single=True) and len(builds[0]) == len(fast.aot_recipes())
    assert fast.start_artifact_build() is process and len(builds) == 1
    assert LatentDecoder(decoders[0], backend="eager").start_artifact_build() is None


def test_a_background_build_is_announced_once_per_process(tmp_path, decoders, monkeypatch):
    """The first build a miss starts warns (BackgroundBuildWarning), naming the cache and how to turn it off;
    later builds, of this decoder or another, say nothing more."""
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("JASCO_FAST_BACKGROUND_BUILD", "1")
    monkeypatch.setattr(artifacts, "_announced", False)
    builds = []
    monkeypatch.setattr(
        artifacts, "build_in_background", lambda recipes, cache=None: builds.append(recipes) or Finished()
    )
    latents = torch.randn(1, 12, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for decoder in decoders:
            fast = LatentDecoder(decoder, chunk_frames=None)
            fast(latents)
            fast(torch.randn(2, 12, 8))
    announced = [w for w in caught if issubclass(w.category, artifacts.BackgroundBuildWarning)]
    assert len(builds) >= 2 and len(announced) == 1, (len(builds), [str(w.message) for w in caught])
    message = str(announced[0].message)
    assert announced[0].filename == __file__  # names the caller's line, not jasco_fast's
    assert str(tmp_path / "aot") in message
    assert "background_build=False" in message and "JASCO_FAST_BACKGROUND_BUILD=0" in message


@pytest.mark.parametrize("off", ["argument", "environment"])
def test_background_builds_turn_off(tmp_path, decoders, monkeypatch, off):
    """background_build=False, or JASCO_FAST_BACKGROUND_BUILD=0 in the environment: a miss builds nothing and
    announces nothing; the calls run eagerly."""
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("JASCO_FAST_BACKGROUND_BUILD", "0" if off == "environment" else "1")
    monkeypatch.setattr(artifacts, "_announced", False)
    builds = []
    monkeypatch.setattr(
        artifacts, "build_in_background", lambda recipes, cache=None: builds.append(recipes) or Finished()
    )
    fast = LatentDecoder(decoders[0], chunk_frames=CHUNK, **({"background_build": False} if off == "argument" else {}))
    assert fast.backend == "aot"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for T in (12, 3 * CHUNK + 5):
            latents = torch.randn(1, T, 8)
            assert rel_err(fast(latents), reference.decode(decoders[0], latents)) < F32_TOL
    assert builds == [] and not artifacts._announced
    assert not [w for w in caught if issubclass(w.category, artifacts.BackgroundBuildWarning)]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_package", "garbage_manifest"])
def test_damaged_entry_is_not_loaded_but_rebuilt(cache, decoders, rebuilds, monkeypatch, damage):
    recipe = one_pass_recipe(decoders[0])
    package, manifest = entry(cache, recipe, "pt2"), entry(cache, recipe, "json")
    data = package.read_bytes()
    if damage == "truncate":
        package.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        package.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    elif damage == "delete_package":
        package.unlink()
    else:
        manifest.write_text("{not json")
    monkeypatch.setenv("JASCO_FAST_BACKGROUND_BUILD", "1")
    fast = LatentDecoder(decoders[0], backend="aot", chunk_frames=None)
    assert fast.aot.artifact is None and "rejected" in fast.aot.status
    assert not manifest.exists()  # discarded
    latents = torch.randn(2, 30, 8)
    assert rel_err(fast(latents), reference.decode(decoders[0], latents)) < F32_TOL  # served eagerly
    assert [r.key() for r in rebuilds] == [fast.aot_recipe().key()]  # and rebuilt


def test_stale_entry_is_not_loaded(cache, decoders):
    """A manifest made under another torch (or machine, or source) at the same path is stale."""
    manifest_path = entry(cache, one_pass_recipe(decoders[0]), "json")
    manifest = json.loads(manifest_path.read_text())
    manifest["material"]["torch"] = "2.0.0"
    manifest_path.write_text(json.dumps(manifest))
    artifact, why = artifacts.load(
        LatentDecoder(decoders[0], backend="eager").aot_recipe(), LatentDecoder(decoders[0], backend="eager")
    )
    assert artifact is None and "stale" in why


def test_another_cpu_or_torch_misses_the_entry(cache, decoders, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "NO AVX")
    fast = LatentDecoder(decoders[0], backend="aot", chunk_frames=None)
    assert fast.aot.artifact is None and fast.aot.status == "no entry"
    assert len(entry_files(cache, "json")) == 2  # the other machine's entries are left alone


def test_entry_that_disagrees_with_eager_is_never_run(cache, built_cache, decoders, rebuilds):
    """A package that loads but computes something else (here: the oracle disagrees) is discarded,
    rebuilt once, and after a second failure the process stays eager with a warning."""
    owner = LatentDecoder(decoders[0], backend="eager")
    recipe = owner.aot_recipe()
    probe = (torch.randn(2, 10, 8),)
    wrong = lambda x: owner._decode(x) * 1.5  # noqa: E731
    runner = artifacts.ArtifactRunner(recipe, owner, wrong, probe, 1e-4, cache=cache)
    assert runner.artifact is None and "validation" in runner.status
    assert not entry(cache, recipe, "json").exists()
    latents = torch.randn(1, 12, 8)
    assert torch.equal(runner(latents), wrong(latents))  # served eagerly, and a rebuild was asked for
    assert len(rebuilds) == 1
    shutil.copytree(built_cache, cache, dirs_exist_ok=True)  # "the rebuild" lands: wrong again
    with pytest.warns(RuntimeWarning, match="rejected twice"):
        assert torch.equal(runner(latents), wrong(latents))
    assert runner.artifact is None and not runner.background


# --------------------------------------------------------------------------------------------------
# Concurrent builders: one builds, the others wait (or step aside), nobody clobbers


def test_a_builder_waits_for_the_lock_and_then_reuses_the_entry(cache, decoders):
    recipe = LatentDecoder(decoders[0], backend="eager").aot_recipe()
    package = entry(cache, recipe, "pt2")
    before = package.stat().st_mtime_ns
    lock = cache / "aot" / f"{recipe.key()}.lock"
    result = {}
    with _files.locked(lock, blocking=True):
        assert artifacts.build(recipe, cache=cache, blocking=False) is None  # someone else builds: step aside
        waiter = threading.Thread(target=lambda: result.setdefault("path", artifacts.build(recipe, cache=cache)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()  # blocked on the lock
    waiter.join(timeout=60)
    assert result["path"] == package and package.stat().st_mtime_ns == before  # found it valid: no rebuild


# The jasco_fast under test (a source tree, or an installed wheel as in make test-wheels): subprocesses
# run from its folder, since `-m` puts the working directory first on sys.path.
HOME = str(Path(jasco_fast.__file__).resolve().parent.parent)


def _env(cache: Path) -> dict:
    return {
        **os.environ,
        "JASCO_FAST_CACHE_DIR": str(cache),
        "PYTHONPATH": os.pathsep.join([HOME, os.environ.get("PYTHONPATH", "")]),
    }


def test_background_build_with_a_concurrent_builder(tmp_path, decoders, monkeypatch):
    """Empty cache: the first call runs eagerly and starts a detached build; a second process (as another
    torchrun rank would) builds the same entry at the same time. One entry results, intact, and the
    decoder switches to it without being rebuilt."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(cache))
    monkeypatch.setenv("JASCO_FAST_BACKGROUND_BUILD", "1")
    fast = LatentDecoder(decoders[1], backend="aot", chunk_frames=None)
    assert fast.aot.artifact is None and fast.aot.status == "no entry"
    rival = subprocess.Popen(
        [sys.executable, "-m", "jasco_fast.artifacts", "build", fast.aot_recipe().to_json()],
        env=_env(cache),
        cwd=HOME,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    latents = torch.randn(2, 16, 8)
    want = reference.decode(decoders[1], latents)
    assert rel_err(fast(latents), want) < F32_TOL  # eager
    assert fast.aot.builder is not None
    assert fast.aot.builder.wait(timeout=900) == 0
    rival_output = rival.communicate(timeout=900)[0]
    assert rival.returncode == 0, rival_output
    assert len(entry_files(cache, "pt2")) == 2 and len(entry_files(cache, "json")) == 2  # B = 1 and any B
    assert not list((cache / "aot").glob(".*"))  # no temporary files left behind
    assert rel_err(fast(latents), want) < F32_TOL
    assert fast.aot.artifact is not None, fast.aot.status
    forbid_eager(fast)
    assert rel_err(fast(latents), want) < F32_TOL


# --------------------------------------------------------------------------------------------------
# The command line: compile, cache


def test_cli_compile_finds_the_entry_and_cache_lists_and_clears_it(cache, decoders, tmp_path, capsys):
    ckpt, _ = write_transformers_dir(tmp_path / "ckpt", seed=3)
    assert main(["compile", "--checkpoint", str(ckpt), "--chunk-frames", str(CHUNK)]) == 0  # same architecture
    out = capsys.readouterr().out
    assert "ready in" in out and "8 artifacts" in out
    assert len(list((cache / "aot").glob("*.pt2"))) == 8  # found, not rebuilt
    assert main(["cache", "list"]) == 0
    assert "8 artifacts" in capsys.readouterr().out
    assert main(["cache", "dir"]) == 0
    assert capsys.readouterr().out.strip() == str(cache)
    assert main(["cache", "clear"]) == 0
    assert entry_files(cache, "pt2") == [] and entry_files(cache, "json") == []


def test_unwritable_cache_folder_keeps_decoding_eagerly(tmp_path, decoders, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    fast = LatentDecoder(decoders[0], background_build=True, backend="aot", chunk_frames=None)
    latents = torch.randn(1, 20, 8)
    with pytest.warns(RuntimeWarning, match="cannot build"):
        assert rel_err(fast(latents), reference.decode(decoders[0], latents)) < F32_TOL
    assert rel_err(fast(latents), reference.decode(decoders[0], latents)) < F32_TOL
