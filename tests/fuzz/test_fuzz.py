"""Fuzzing checkpoint and latent readers (issue 16), with hypothesis; the harness is in harness.py.

Every case runs in a worker subprocess under a memory cap (RLIMIT_AS) and a time cap; the property is
"a decoder that decodes (latents that read) or the documented error, never anything else".

Budget: ``JASCO_FUZZ_EXAMPLES`` cases per test (default: a short run for CI), ``JASCO_FUZZ_SEED`` (default
0, reproducible; ``random`` for a fresh search). ``make fuzz`` runs a long search. Failing cases are
written to ``tests/fuzz/corpus/`` (the smallest one per kind of failure) and replayed by every run.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections import Counter

import harness
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("JASCO_FUZZ_EXAMPLES", "50"))
SEED = os.environ.get("JASCO_FUZZ_SEED", "0")

fuzz_settings = settings(
    max_examples=EXAMPLES, deadline=None, database=None, print_blob=True, suppress_health_check=list(HealthCheck)
)


def seeded(test):
    return test if SEED == "random" else seed(int(SEED))(test)


class Session(tuple):
    """(seeds, worker, case folder root, findings, outcome counts), with a short repr for hypothesis' reports."""

    def __repr__(self):
        return "<fuzz session>"


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    """The fuzzing session; its findings are written to the corpus at the end."""
    root = tmp_path_factory.mktemp("fuzz")
    seeds = harness.make_seeds(root / "seeds")
    worker = harness.Worker()
    findings: dict[str, tuple] = {}
    outcomes: Counter = Counter()
    yield Session((seeds, worker, root, findings, outcomes))
    worker.close()
    print("\nfuzz outcomes (most common first):")
    for (outcome, what), n in outcomes.most_common(40):
        print(f"  {n:6d}  {outcome:9s} {what}")
    for kind, entry, files, problem in findings.values():
        print(f"\nfinding saved to {harness.save_finding(kind, entry, files, problem)}: {problem.splitlines()[0]}")


def run_and_check(fuzz, kind, entry, files):
    _, worker, root, findings, outcomes = fuzz
    answer, folder = harness.run(worker, root, kind, entry, files)
    # what refused it, without the file names and numbers: shows which checks the mutations reach
    what = re.sub(r"\d+", "N", answer.get("message", "").split(": ", 1)[-1])[:70]
    outcomes[(answer["outcome"], what)] += 1
    problem = harness.check(answer, kind)
    if problem is None:
        shutil.rmtree(folder, ignore_errors=True)
        return answer
    # keep the smallest case per kind of failure (hypothesis shrinks towards it)
    signature = re.sub(r"\d+", "N", problem.splitlines()[0])[:200]
    size = sum(len(v) for v in files.values())
    if signature not in findings or size < sum(len(v) for v in findings[signature][2].values()):
        findings[signature] = (kind, entry, files, problem)
    pytest.fail(f"{kind} case in {folder}: {problem}")


# --------------------------------------------------------------------------------------------------
# What mutations draw from

INTERESTING_INTS = [
    0,
    1,
    -1,
    2,
    3,
    7,
    8,
    255,
    256,
    2**15,
    2**16,
    2**31 - 1,
    2**31,
    2**32,
    2**53,
    2**63 - 1,
    2**63,
    2**64 - 1,
    10**12,
    10**100,
    -(2**63),
]
ints = st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(-10, 100_000), st.integers(-(2**70), 2**70))
json_scalars = st.one_of(
    st.none(), st.booleans(), ints, st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=40), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=60,
)
HF_KEYS = [
    "hidden_size",
    "audio_channels",
    "num_filters",
    "upsampling_ratios",
    "num_residual_layers",
    "num_lstm_layers",
    "kernel_size",
    "last_kernel_size",
    "residual_kernel_size",
    "dilation_growth_rate",
    "compress",
    "pad_mode",
    "use_causal_conv",
    "trim_right_ratio",
    "norm_type",
    "sampling_rate",
    "use_conv_shortcut",
    "model_type",
]
ratios_lists = st.lists(st.one_of(st.integers(-2, 12), st.sampled_from(INTERESTING_INTS)), max_size=40)
json_set = st.tuples(st.just("set"), st.sampled_from(HF_KEYS), st.one_of(json_values, ratios_lists, ints))
json_edits = st.lists(
    st.one_of(
        json_set,
        json_set,
        json_set,
        json_set,  # mostly field edits
        st.tuples(st.just("delete"), st.sampled_from(HF_KEYS)),
        st.tuples(st.just("replace"), json_values),
    ),
    min_size=1,
    max_size=3,
)

YAML_KEYS = [
    "sample_rate",
    "channels",
    "compression_model",
    "autoencoder",
    "causal",
    "dimension",
    "n_filters",
    "n_residual_layers",
    "ratios",
    "activation",
    "activation_params",
    "norm",
    "norm_params",
    "kernel_size",
    "residual_kernel_size",
    "last_kernel_size",
    "dilation_base",
    "pad_mode",
    "true_skip",
    "compress",
    "lstm",
    "disable_norm_outer_blocks",
    "trim_right_ratio",
    "final_activation",
    "final_activation_params",
    "seanet",
    "decoder",
    "encodec",
]
YAML_SNIPPETS = [
    "null",
    "~",
    "true",
    "no",
    "'8'",
    "8.0",
    "-4",
    "1e400",
    ".nan",
    ".inf",
    "0x10",
    "0o17",
    "[]",
    "{}",
    "[4, 2]",
    "[2, 4]",
    "[4, 2, 2]",
    "[100000, 2]",
    "[4.5, 2]",
    "{a: 1}",
    "${channels}",
    "${nowhere}",
    "${seanet.ratios}",
    "${.n_filters}",
    "${oc.env:HOME}",
    "${${channels}}",
    "*undefined",
    "&a [*a]",
    "!!python/object/apply:os.system ['touch EXECUTED']",
    "!!python/name:os.system",
    "Tanh",
    "Transformer",
    "PReLU",
    "Module",
    "Identity",
    "reflect",
    "circular",
    "time_group_norm",
    "spectral_norm",
    "{alpha: x}",
    "{num_parameters: 3}",
    "{eps: -1}",
    "{affine: false}",
    "'" + "x" * 300 + "'",
    "[" * 300,
    "|\n    text",
]
# references to references: aliases, and ${...} interpolations of strings and of lists
YAML_BOMBS = [
    "\nz0: &z0 [x, x, x, x, x, x, x, x]\n"
    + "".join(f"z{i}: &z{i} [{', '.join([f'*z{i - 1}'] * 8)}]\n" for i in range(1, 9)),
    "\nz0: xxxxxxxx\n" + "".join(f"z{i}: '{('${z%d}' % (i - 1)) * 8}'\n" for i in range(1, 10)),
    "\nz0: [x, x, x, x, x, x, x, x]\n"
    + "".join(f"z{i}: [{', '.join([repr('${z%d}' % (i - 1))] * 8)}]\n" for i in range(1, 10)),
]
yaml_edits = st.lists(
    st.one_of(
        st.tuples(
            st.just("value"),
            st.sampled_from(YAML_KEYS),
            st.one_of(st.sampled_from(YAML_SNIPPETS), st.text(max_size=20), ints.map(str)),
        ),
        st.tuples(
            st.just("text"),
            st.integers(0, 4000),
            st.integers(0, 40),
            st.one_of(
                st.text(max_size=20),
                st.sampled_from(["\n", ": ", "- ", "&x ", "*x", "${", "}", "\t"]),
                st.sampled_from(YAML_BOMBS),
            ),
        ),
    ),
    min_size=1,
    max_size=4,
)

byte_ops = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(0, 7)),
        st.tuples(st.just("truncate"), st.integers(0, 2**20)),
        st.tuples(st.just("overwrite"), st.integers(0, 2**20), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), st.integers(0, 2**20), st.integers(1, 64)),
        st.tuples(st.just("u64"), st.integers(0, 2**20), st.sampled_from(INTERESTING_INTS)),
    ),
    min_size=1,
    max_size=6,
)
header_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("field"),
            st.integers(0, 100),
            st.sampled_from(["dtype", "shape", "data_offsets"]),
            st.one_of(
                json_values,
                st.sampled_from(["F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "F128"]),
                st.lists(st.sampled_from(INTERESTING_INTS + [4, 16, 64]), max_size=4),
            ),
        ),
        st.tuples(st.just("drop"), st.integers(0, 100)),
        st.tuples(st.just("add"), st.text(max_size=30), json_values),
        st.tuples(st.just("length"), st.sampled_from(INTERESTING_INTS)),
    ),
    min_size=1,
    max_size=4,
)
REPLACEMENTS = [
    "int",
    "half",
    "bfloat16",
    "float64",
    "complex",
    "sparse",
    "scalar",
    "transpose",
    "flatten",
    "grow",
    "nan",
    "empty",
    "meta",
]
state_values = st.one_of(
    st.sampled_from(REPLACEMENTS),
    st.none(),
    ints,
    st.text(max_size=10),
    st.lists(ints, max_size=5),
    st.dictionaries(st.text(max_size=5), ints, max_size=3),
)
state_ops = st.lists(
    st.one_of(
        st.tuples(st.just("value"), st.integers(0, 1000), state_values),
        st.tuples(st.just("delete"), st.integers(0, 1000)),
        st.tuples(
            st.just("add"),
            st.one_of(
                st.text(max_size=40),
                st.sampled_from(["decoder.layers.99.conv.bias", "decoder.model.99.conv.conv.bias"]),
            ),
            st.one_of(st.just("tensor"), state_values),
        ),
    ),
    min_size=1,
    max_size=4,
)


def _state_value(op):
    import torch

    return ("add", op[1], torch.ones(3)) if op[0] == "add" and op[2] == "tensor" else op


# --------------------------------------------------------------------------------------------------
# Checkpoints

CHECKPOINT_SEEDS = ["hf_safetensors", "hf_bin", "hf_bin_legacy", "audiocraft", "audiocraft_legacy", "pointer"]
WEIGHT_FILES = {
    "hf_safetensors": "model.safetensors",
    "hf_bin": "pytorch_model.bin",
    "hf_bin_legacy": "pytorch_model.bin",
    "audiocraft": "compression_state_dict.bin",
    "audiocraft_legacy": "compression_state_dict.bin",
    "pointer": "compression_state_dict.bin",
}
POINTER_WEIGHTS = "hub/models--facebook--encodec_32khz/snapshots/0123abcd/model.safetensors"
POINTER_CONFIG = "hub/models--facebook--encodec_32khz/snapshots/0123abcd/config.json"


def legacy_seed(name: str) -> bool:
    return name.endswith("legacy")


@st.composite
def checkpoint_cases(draw, seeds):
    import torch

    name = draw(st.sampled_from(CHECKPOINT_SEEDS))
    kind, entry, files = seeds[name]
    files = dict(files)
    weights = WEIGHT_FILES[name]
    legacy = legacy_seed(name)
    families = ["bytes", "code"]
    if name.startswith("hf") or name == "pointer":
        families += ["json", "header" if name in ("hf_safetensors", "pointer") else "state"]
    if name.startswith("audiocraft"):
        families += ["yaml", "state"]
    if weights.endswith(".bin") and not legacy:
        families += ["deflate"]
    family = draw(st.sampled_from(families))
    if family == "bytes":
        target = draw(st.sampled_from(sorted(files)))
        files[target] = harness.mutate_bytes(files[target], draw(byte_ops))
    elif family == "json":
        target = POINTER_CONFIG if name == "pointer" else "config.json"
        files[target] = harness.mutate_json(files[target], draw(json_edits))
    elif family == "header":
        target = POINTER_WEIGHTS if name == "pointer" else weights
        files[target] = harness.mutate_safetensors_header(files[target], draw(header_ops))
    elif family == "state":
        files[weights] = harness.mutate_state(files[weights], [_state_value(op) for op in draw(state_ops)], legacy)
    elif family == "yaml":
        text = torch.load(io.BytesIO(files[weights]), weights_only=True)["xp.cfg"]
        files[weights] = harness.mutate_state(
            files[weights], [("xp.cfg", harness.mutate_yaml(text, draw(yaml_edits)))], legacy
        )
    elif family == "deflate":  # re-packed with compression: a legitimate file, or a zip bomb
        files[weights] = harness.deflate_zip(files[weights], draw(st.sampled_from([0, 1 << 20, 64 << 20])))
    else:  # a pickle that carries code, in the place of the checkpoint's pickle
        target = weights
        if weights.endswith(".safetensors"):  # the folder's weights become a pickle
            del files[weights]
            target = "pytorch_model.bin"
        files[target] = harness.code_pickle(
            draw(st.sampled_from(["open", "system", "exec", "subprocess"])), as_torch=draw(st.booleans())
        )
    return kind, entry, files


@pytest.fixture(scope="module")
def checkpoint_strategy(fuzz):
    return checkpoint_cases(fuzz[0])


def test_seeds_load(fuzz):
    """The unmutated seeds give a decoder (or latents): the mutations start from valid files."""
    seeds = fuzz[0]
    for name, (kind, entry, files) in seeds.items():
        answer = run_and_check(fuzz, kind, entry, files)
        assert answer["outcome"] in ("decoder", "latents"), (name, answer)


@seeded
@fuzz_settings
@given(data=st.data())
def test_fuzz_checkpoints(fuzz, checkpoint_strategy, data):
    kind, entry, files = data.draw(checkpoint_strategy)
    run_and_check(fuzz, kind, entry, files)


# --------------------------------------------------------------------------------------------------
# Latent files (jasco_fast.io.read_latents)

LATENT_SEEDS = [
    "latents_npy",
    "latents_pt",
    "latents_pt_legacy",
    "latents_safetensors",
    "codes_npy",
    "codes_pt",
    "codes_safetensors",
]


@st.composite
def latent_cases(draw, seeds):
    name = draw(st.sampled_from(LATENT_SEEDS))
    kind, entry, files = seeds[name]
    data = files[entry]
    families = (
        ["bytes", "code"]
        + (["header"] if entry.endswith(".safetensors") else [])
        + (["state"] if entry.endswith(".pt") else [])
        + (["deflate"] if name in ("latents_pt", "codes_pt") else [])
    )
    family = draw(st.sampled_from(families))
    if family == "bytes":
        data = harness.mutate_bytes(data, draw(byte_ops))
    elif family == "header":
        data = harness.mutate_safetensors_header(data, draw(header_ops))
    elif family == "state":
        data = harness.mutate_state(data, [_state_value(op) for op in draw(state_ops)], legacy_seed(name))
    elif family == "deflate":
        data = harness.deflate_zip(data, draw(st.sampled_from([0, 1 << 20, 64 << 20])))
    else:
        data = harness.code_pickle(
            draw(st.sampled_from(["open", "system", "exec", "subprocess"])),
            as_torch=entry.endswith(".pt") and draw(st.booleans()),
        )
    return kind, entry, {entry: data}


@pytest.fixture(scope="module")
def latent_strategy(fuzz):
    return latent_cases(fuzz[0])


@seeded
@fuzz_settings
@given(data=st.data())
def test_fuzz_latents(fuzz, latent_strategy, data):
    kind, entry, files = data.draw(latent_strategy)
    run_and_check(fuzz, kind, entry, files)


def test_worker_caps(fuzz):
    """The caps the property relies on are in force, and each way of breaking them is reported."""
    worker = fuzz[1]
    small = worker.run({"kind": "selftest", "action": "allocate", "bytes": 1 << 20})
    assert small["outcome"] == "selftest done"
    over = worker.run({"kind": "selftest", "action": "allocate", "bytes": (harness.MEMORY_MB + 256) << 20})
    assert over["outcome"] == "unexpected" and over["type"] == "MemoryError"
    assert harness.check(over, "checkpoint").startswith("unexpected: MemoryError")
    slow = worker.run({"kind": "selftest", "action": "sleep", "seconds_to_sleep": 30, "seconds": 1})
    assert slow["outcome"] == "timeout" and harness.check(slow, "latents").startswith("timeout")
    crash = worker.run({"kind": "selftest", "action": "abort"})
    assert crash["outcome"] == "crash" and harness.check(crash, "checkpoint").startswith("crash")
    assert harness.check({"outcome": "decoder", "code_ran": True}, "checkpoint") == "a pickle's code ran"
    assert harness.check({"outcome": "refused", "type": "KeyError"}, "checkpoint").startswith("refused with KeyError")


# --------------------------------------------------------------------------------------------------
# Findings of earlier runs


@pytest.mark.parametrize("case", harness.load_corpus(), ids=lambda c: c[0])
def test_corpus(fuzz, case):
    _, kind, entry, files = case
    run_and_check(fuzz, kind, entry, files)
