"""The ops defined by jasco_fast/extension.py: each one is opchecked in its own test module, the ops that take and
return no tensor answer with a known value, and each op's argument rules are the same in Python and in C++."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from checkpoints import kernel_error

from jasco_fast import ops

HERE = Path(__file__).resolve().parent
# Each op and the module whose test_opcheck runs torch.library.opcheck on it (by the op's name).
OPCHECKED_IN = {
    "denorm_transpose": "test_denorm_transpose.py",
    "codes_to_latents": "test_codes_to_latents.py",
    "lstm_skip": "test_lstm_skip.py",
    "lstm_pack": "test_lstm_skip.py",
    "elu_resblock": "test_elu_resblock.py",
    "elu_conv": "test_elu_conv.py",
    "elu_conv_transpose": "test_elu_conv_transpose.py",
    "pack_int12": "test_int12.py",
    "elu_resblock_int12": "test_int12.py",
    "elu_conv_transpose_int12": "test_int12.py",
}
# Ops that take and return no tensor (opcheck compares tensors only): each checked by value instead.
QUERY_OPS = {
    "cpu_fast_path": lambda answer: answer in ("avx2+f16c", "portable"),
    "lstm_int8_matvec": lambda answer: answer in ("avx512_vnni", "avx2_u7", "float32"),
}


def registered_ops() -> list[str]:
    names = torch._C._dispatch_get_all_op_names()
    return sorted(name.split("::", 1)[1] for name in names if name.startswith("jasco_fast::"))


def test_every_op_is_opchecked():
    """Fails when an op is added to csrc/registration.cpp without an opcheck test."""
    assert registered_ops() == sorted([*OPCHECKED_IN, *QUERY_OPS])


@pytest.mark.parametrize("op", sorted(OPCHECKED_IN))
def test_opcheck_module_names_the_op(op):
    source = (HERE / OPCHECKED_IN[op]).read_text()
    assert "def test_opcheck" in source, OPCHECKED_IN[op]
    assert f'"{op}"' in source or f"jasco_fast.{op}." in source, f"{OPCHECKED_IN[op]} does not opcheck {op}"


@pytest.mark.parametrize("op", sorted(QUERY_OPS))
def test_query_ops(op):
    assert QUERY_OPS[op](getattr(torch.ops.jasco_fast, op)())


# ---------------------------------------------------------------------------------------------------
# One rule set per op: jasco_fast.ops.check_<op> (what the Python face, the fake kernel and the fallback call)
# and the C++ checks (csrc/) refuse the same arguments with the same exception type, naming the same argument.


def _lstm_args(B=1, T=4, C=3, layers=1, **changes):
    weights = [torch.randn(4 * C, C), torch.randn(4 * C, C), torch.randn(4 * C), torch.randn(4 * C)] * layers
    args = dict(
        seq=torch.randn(B, T, C),
        weights=weights,
        num_layers=layers,
        h0=None,
        c0=None,
        state_frames=None,
        recurrent_dtype=None,
        packed=None,
    )
    args.update(changes)
    return tuple(args.values())


def _tail_x(C=4, T=6, dtype=torch.float32):
    return torch.randn(1, C, 1, T, dtype=dtype)


def _resblock_args(**changes):
    args = dict(
        x=_tail_x(),
        w1=torch.randn(2, 4, 1, 3),
        b1=torch.randn(2),
        w2=torch.randn(4, 2, 1, 1),
        b2=torch.randn(4),
        dilation=1,
        pad_left=1,
        pad_right=1,
        pad_mode="reflect",
        alpha=1.0,
    )
    args.update(changes)
    return tuple(args.values())


def _conv_args(**changes):
    args = dict(
        x=_tail_x(),
        weight=torch.randn(1, 4, 1, 3),
        bias=torch.randn(1),
        dilation=1,
        pad_left=1,
        pad_right=1,
        pad_mode="constant",
        alpha=1.0,
    )
    args.update(changes)
    return tuple(args.values())


def _conv_transpose_args(**changes):
    args = dict(
        x=_tail_x(), weight=torch.randn(4, 2, 1, 4), bias=torch.randn(2), stride=2, trim_left=1, trim_right=1, alpha=1.0
    )
    args.update(changes)
    return tuple(args.values())


def _packed(shape, stride=0):
    return ops.pack_int12(torch.randn(shape), stride)


def _resblock_int12_args(**changes):
    w1, s1 = _packed((2, 4, 1, 3))
    w2, s2 = _packed((4, 2, 1, 1))
    args = dict(
        x=_tail_x(),
        w1=w1,
        s1=s1,
        b1=torch.randn(2),
        w2=w2,
        s2=s2,
        b2=torch.randn(4),
        dilation=1,
        pad_left=1,
        pad_right=1,
        pad_mode="reflect",
        alpha=1.0,
    )
    args.update(changes)
    return tuple(args.values())


def _conv_transpose_int12_args(**changes):
    w, s = _packed((4, 2, 1, 5), 2)  # N = 4 columns, 3 taps
    args = dict(
        x=_tail_x(), w=w, s=s, bias=torch.randn(2), stride=2, kernel_size=5, trim_left=1, trim_right=1, alpha=1.0
    )
    args.update(changes)
    return tuple(args.values())


_CODES, _BOOKS = torch.zeros(1, 2, 3, dtype=torch.int64), torch.randn(4, 8, 5)
_LATENTS, _STAT = torch.randn(1, 4, 5), torch.tensor(0.5)

# (op, the op's arguments, how many of them the check takes, the exception, the argument both messages name)
RULE_CASES = [
    ("denorm_transpose", (torch.randn(4, 5), _STAT, _STAT, None, False), 4, ValueError, r"latents"),
    ("denorm_transpose", (_LATENTS.int(), _STAT, _STAT, None, False), 4, TypeError, r"latents"),
    ("denorm_transpose", (torch.randn(1, 4, 0), _STAT, _STAT, None, False), 4, ValueError, r"latents"),
    ("denorm_transpose", (_LATENTS, torch.zeros(3), _STAT, None, False), 4, ValueError, r"\bmean\b"),
    ("denorm_transpose", (_LATENTS, _STAT, torch.ones(5, dtype=torch.int64), None, False), 4, TypeError, r"\bstd\b"),
    ("denorm_transpose", (_LATENTS, _STAT, _STAT, torch.int8, False), 4, TypeError, r"\bdtype\b"),
    ("codes_to_latents", (_CODES[0], _BOOKS, None, False), 3, ValueError, r"\bcodes\b"),
    ("codes_to_latents", (_CODES.float(), _BOOKS, None, False), 3, TypeError, r"\bcodes\b"),
    ("codes_to_latents", (_CODES, _BOOKS[0], None, False), 3, ValueError, r"\bcodebooks\b"),
    ("codes_to_latents", (_CODES, _BOOKS.int(), None, False), 3, TypeError, r"\bcodebooks\b"),
    ("codes_to_latents", (_CODES, torch.randn(4, 0, 5), None, False), 3, ValueError, r"\bcodebooks\b"),
    ("codes_to_latents", (torch.zeros(1, 5, 3, dtype=torch.int64), _BOOKS, None, False), 3, ValueError, r"K = 5"),
    ("codes_to_latents", (_CODES, _BOOKS, torch.int8, False), 3, TypeError, r"\bdtype\b"),
    ("lstm_skip", _lstm_args(seq=torch.randn(4, 3)), 8, ValueError, r"\bseq\b"),
    ("lstm_skip", _lstm_args(num_layers=0), 8, ValueError, r"\bnum_layers\b"),
    ("lstm_skip", _lstm_args(num_layers=2), 8, ValueError, r"\bweights\b"),
    ("lstm_skip", _lstm_args(h0=torch.zeros(1, 1, 3)), 8, ValueError, r"\bh0 and c0\b"),
    ("lstm_skip", _lstm_args(h0=torch.zeros(2, 1, 3), c0=torch.zeros(1, 1, 3)), 8, ValueError, r"\bh0\b"),
    ("lstm_skip", _lstm_args(h0=torch.zeros(1, 1, 3), c0=torch.zeros(1, 1, 3).double()), 8, TypeError, r"\bc0\b"),
    ("lstm_skip", _lstm_args(state_frames=5), 8, ValueError, r"\bstate_frames\b"),
    ("lstm_skip", _lstm_args(state_frames=-1), 8, ValueError, r"\bstate_frames\b"),
    ("lstm_skip", _lstm_args(recurrent_dtype=torch.float16), 8, TypeError, r"\brecurrent_dtype\b"),
    ("lstm_skip", _lstm_args(packed=torch.zeros(10, dtype=torch.float32)), 8, TypeError, r"\bpacked\b"),
    ("lstm_pack", ([], None), 2, ValueError, r"\bw_hh\b"),
    ("lstm_pack", ([torch.randn(4, 4)], None), 2, ValueError, r"\bw_hh\[0\]"),
    ("lstm_pack", ([torch.randn(12, 3).double()], None), 2, TypeError, r"\bw_hh\[0\]"),
    ("lstm_pack", ([torch.randn(12, 3)], torch.float16), 2, TypeError, r"\brecurrent_dtype\b"),
    ("elu_resblock", _resblock_args(w1=torch.randn(2, 4, 3)), -1, ValueError, r"\bw1\b"),
    ("elu_resblock", _resblock_args(x=torch.randn(1, 4, 6)), -1, ValueError, r"\bx\b"),
    ("elu_resblock", _resblock_args(x=_tail_x(dtype=torch.float64)), -1, TypeError, r"\bx\b"),
    ("elu_resblock", _resblock_args(x=_tail_x(C=5)), -1, ValueError, r"\bx has 5 channels"),
    ("elu_resblock", _resblock_args(x=_tail_x(T=0)), -1, ValueError, r"\bx\b"),
    ("elu_resblock", _resblock_args(b1=torch.randn(3)), -1, ValueError, r"bias of w1"),
    ("elu_resblock", _resblock_args(w1=torch.randn(2, 4, 1, 3).bfloat16()), -1, TypeError, r"\bw1\b"),
    ("elu_resblock", _resblock_args(w2=torch.randn(4, 2, 1, 3)), -1, ValueError, r"\bw2\b"),
    ("elu_resblock", _resblock_args(w2=torch.randn(4, 3, 1, 1)), -1, ValueError, r"\bw2\b"),
    ("elu_resblock", _resblock_args(dilation=0), -1, ValueError, r"\bdilation\b"),
    ("elu_resblock", _resblock_args(pad_right=0), -1, ValueError, r"\bpad_left \+ pad_right\b"),
    ("elu_resblock", _resblock_args(pad_mode="mirror"), -1, ValueError, r"\bpad_mode\b"),
    (
        "elu_resblock",
        _resblock_args(x=_tail_x(T=2), dilation=3, pad_left=3, pad_right=3, pad_mode="circular"),
        -1,
        ValueError,
        r"circular padding",
    ),
    ("elu_conv", _conv_args(weight=torch.randn(1, 4, 3)), -1, ValueError, r"\bweight\b"),
    ("elu_conv", _conv_args(bias=torch.randn(2)), -1, ValueError, r"bias of weight"),
    ("elu_conv", _conv_args(x=_tail_x(dtype=torch.bfloat16)), -1, TypeError, r"\bweight\b"),
    ("elu_conv", _conv_args(pad_left=2), -1, ValueError, r"\bpad_left \+ pad_right\b"),
    ("elu_conv_transpose", _conv_transpose_args(weight=torch.randn(4, 2, 4)), -1, ValueError, r"\bweight\b"),
    ("elu_conv_transpose", _conv_transpose_args(x=_tail_x(C=3)), -1, ValueError, r"\bx has 3 channels"),
    ("elu_conv_transpose", _conv_transpose_args(weight=torch.randn(4, 0, 1, 4)), -1, ValueError, r"\bweight\b"),
    ("elu_conv_transpose", _conv_transpose_args(bias=torch.randn(3)), -1, ValueError, r"\bbias\b"),
    ("elu_conv_transpose", _conv_transpose_args(bias=torch.randn(2).double()), -1, TypeError, r"\bbias\b"),
    ("elu_conv_transpose", _conv_transpose_args(stride=0), -1, ValueError, r"\bstride\b"),
    ("elu_conv_transpose", _conv_transpose_args(trim_left=-1), -1, ValueError, r"\btrim_left\b"),
    ("elu_conv_transpose", _conv_transpose_args(trim_left=7, trim_right=7), -1, ValueError, r"\btrim_left\b"),
    ("pack_int12", (torch.randn(4, 4, 3), 0), 2, ValueError, r"\bweight\b"),
    ("pack_int12", (torch.randn(4, 4, 1, 3).double(), 0), 2, TypeError, r"\bweight\b"),
    ("pack_int12", (torch.randn(4, 4, 1, 3), -1), 2, ValueError, r"\btransposed_stride\b"),
    ("pack_int12", (torch.randn(4, 3, 1, 3), 0), 2, ValueError, r"positive even number, got 3"),
    ("pack_int12", (torch.randn(3, 4, 1, 3), 2), 2, ValueError, r"positive even number, got 3"),
    ("pack_int12", (torch.randn(0, 4, 1, 3), 0), 2, ValueError, r"no elements"),
    ("elu_resblock_int12", _resblock_int12_args(x=torch.randn(1, 4, 6)), -1, ValueError, r"\bx\b"),
    ("elu_resblock_int12", _resblock_int12_args(x=_tail_x().bfloat16()), -1, TypeError, r"\bx must be float32"),
    ("elu_resblock_int12", _resblock_int12_args(x=_tail_x(T=0)), -1, ValueError, r"\bx\b"),
    ("elu_resblock_int12", _resblock_int12_args(b1=torch.randn(2, 1)), -1, ValueError, r"\bb1\b"),
    ("elu_resblock_int12", _resblock_int12_args(x=_tail_x(C=6)), -1, ValueError, r"\bw1 must be pack_int12's"),
    ("elu_resblock_int12", _resblock_int12_args(w1=_packed((2, 4, 1, 3))[0].float()), -1, TypeError, r"\bw1\b"),
    ("elu_resblock_int12", _resblock_int12_args(s1=torch.randn(3)), -1, ValueError, r"scales of w1"),
    (
        "elu_resblock_int12",
        _resblock_int12_args(w2=_packed((4, 6, 1, 1))[0]),
        -1,
        ValueError,
        r"\bw2 must be pack_int12's",
    ),
    ("elu_resblock_int12", _resblock_int12_args(w2=_packed((4, 2, 1, 3))[0]), -1, ValueError, r"\bw2\b.*1x1"),
    ("elu_resblock_int12", _resblock_int12_args(b1=torch.randn(2).double()), -1, TypeError, r"\bb1\b"),
    ("elu_resblock_int12", _resblock_int12_args(b2=torch.randn(5)), -1, ValueError, r"\bb2\b"),
    (
        "elu_resblock_int12",
        _resblock_int12_args(w1=_packed((2, 4, 1, 3))[0].transpose(2, 3)),
        -1,
        ValueError,
        r"\bw1\b",
    ),
    ("elu_resblock_int12", _resblock_int12_args(dilation=0), -1, ValueError, r"\bdilation\b"),
    ("elu_resblock_int12", _resblock_int12_args(pad_right=0), -1, ValueError, r"\bpad_left \+ pad_right\b"),
    ("elu_resblock_int12", _resblock_int12_args(pad_mode="mirror"), -1, ValueError, r"\bpad_mode\b"),
    (
        "elu_resblock_int12",
        _resblock_int12_args(x=_tail_x(T=1), dilation=2, pad_left=2, pad_right=2, pad_mode="circular"),
        -1,
        ValueError,
        r"circular padding",
    ),
    ("elu_conv_transpose_int12", _conv_transpose_int12_args(x=_tail_x().double()), -1, TypeError, r"\bx\b"),
    ("elu_conv_transpose_int12", _conv_transpose_int12_args(stride=0), -1, ValueError, r"\bstride\b"),
    ("elu_conv_transpose_int12", _conv_transpose_int12_args(bias=torch.randn(1, 2)), -1, ValueError, r"\bbias\b"),
    ("elu_conv_transpose_int12", _conv_transpose_int12_args(x=_tail_x(C=6)), -1, ValueError, r"\bw must be"),
    ("elu_conv_transpose_int12", _conv_transpose_int12_args(bias=torch.randn(3)), -1, ValueError, r"scales of w\b"),
    ("elu_conv_transpose_int12", _conv_transpose_int12_args(s=torch.randn(4).double()), -1, TypeError, r"\bw\b"),
    ("elu_conv_transpose_int12", _conv_transpose_int12_args(kernel_size=7), -1, ValueError, r"\bw has 3 taps"),
    (
        "elu_conv_transpose_int12",
        _conv_transpose_int12_args(bias=torch.randn(2).bfloat16()),
        -1,
        TypeError,
        r"\bbias\b",
    ),
    (
        "elu_conv_transpose_int12",
        _conv_transpose_int12_args(trim_left=9, trim_right=9),
        -1,
        ValueError,
        r"\btrim_left\b",
    ),
]


@pytest.mark.parametrize(
    "op,args,n,error,names", RULE_CASES, ids=[f"{case[0]}-{i}" for i, case in enumerate(RULE_CASES)]
)
def test_python_rules_are_the_cpp_rules(op, args, n, error, names):
    with pytest.raises(Exception) as python:
        getattr(ops, f"check_{op}")(*args[:n])
    with pytest.raises(Exception) as cpp:  # CPU tensors: the compiled kernel's own checks
        getattr(torch.ops.jasco_fast, op).default(*args)
    assert type(python.value) is error and type(cpp.value) is kernel_error(error), (python.value, cpp.value)
    assert re.search(names, str(python.value)), str(python.value)
    assert re.search(names, str(cpp.value)), str(cpp.value)


def test_the_schemas_are_defined_once_with_their_layout_tags():
    """jasco_fast/extension.py defines every op (the kernels only register for them), and inductor sees
    needs_fixed_stride_order on each op that returns a tensor of a chosen layout."""
    from jasco_fast import extension

    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("jasco_fast::")}
    assert registered == set(extension.SCHEMAS)
    fixed = {
        "denorm_transpose",
        "codes_to_latents",
        "lstm_skip",
        "elu_resblock",
        "elu_conv",
        "elu_conv_transpose",
        "elu_resblock_int12",
        "elu_conv_transpose_int12",
    }
    for name in extension.SCHEMAS:
        tags = set(getattr(torch.ops.jasco_fast, name).default.tags)
        assert tags == ({torch.Tag.needs_fixed_stride_order} if name in fixed else set()), name
