"""The verified tuner (resnet_fused.tuning): a wrong candidate is never chosen, whatever its
speed.

Unit tests drive ``tuning.choose`` with hand-made candidates; the op-level test puts a genuinely
wrong Triton launch (the real kernel with a shifted padding) into the Triton backend's candidate
list under the interpreter and checks that the op drops it, reports it, and returns the right
result.
"""

from __future__ import annotations

import json

import pytest
import torch

from resnet_fused import ops, tuning
from resnet_fused.reference import conv_bn_act_reference
from resnet_fused.testing import random_bn_params, relative_error, tolerance

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_tuning(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNET_FUSED_CACHE_DIR", str(tmp_path / "cache"))
    tuning.clear()
    yield
    tuning.clear()


class Problem:
    """y = 2 * x; candidates are named callables that may be wrong, slow, or crash."""

    def __init__(self, generator):
        self.x = torch.randn(1000, generator=generator, dtype=torch.float64)
        self.runs: dict[str, int] = {}

    def reference(self):
        return 2 * self.x

    def run(self, cand):
        self.runs[cand] = self.runs.get(cand, 0) + 1
        self.last = cand
        if cand == "wrong":
            return 2 * self.x + 1e-3 * self.x.abs().max()
        if cand == "unwritten":
            out = 2 * self.x
            out[17] = float("nan")  # as a poisoned element a kernel skipped would be
            return out
        if cand == "crashes":
            raise RuntimeError("out of shared memory")
        if cand == "bad_tile":  # 4 of 1000 elements off by 5 RMS: small in L2, not elementwise
            out = 2 * self.x
            out[100:104] += 5 * (2 * self.x).square().mean().sqrt()
            return out
        if cand == "racy":  # right to the bound, but not the same twice
            return 2 * self.x + self.runs[cand] * 1e-12 * self.x.abs().max()
        return 2 * self.x


def _choose(problem, candidates, timer, **kw):
    return tuning.choose("test", ("k", 1), candidates, run=problem.run,
                         reference=problem.reference, bound=1e-6, device=CPU, name=str,
                         timer=timer, **kw)


def test_a_wrong_candidate_is_never_chosen_even_if_fastest(generator):
    problem = Problem(generator)
    speed = {"wrong": 1e-6, "good_slow": 3e-3, "good_fast": 1e-3}

    def timer(fn):
        fn()
        return speed[problem.last]

    with pytest.warns(UserWarning, match="wrong failed verification"):
        chosen = _choose(problem, ["wrong", "good_slow", "good_fast"], timer=timer)
    assert chosen == "good_fast"
    assert [(r.candidate, r.namespace) for r in tuning.REJECTED] == [("wrong", "test")]
    assert "relative error" in tuning.REJECTED[0].reason


@pytest.mark.parametrize("bad", ["unwritten", "crashes"])
def test_unwritten_elements_and_crashes_are_rejected(bad, generator):
    problem = Problem(generator)
    with pytest.warns(UserWarning, match=f"{bad} failed verification"):
        chosen = _choose(problem, [bad, "good"], timer=lambda fn: 1.0)
    assert chosen == "good"
    assert tuning.REJECTED[0].candidate == bad
    assert ("raised RuntimeError" if bad == "crashes" else "inf") in tuning.REJECTED[0].reason


def test_no_safe_candidate_is_an_error(generator):
    problem = Problem(generator)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="every test candidate"):
        _choose(problem, ["wrong", "crashes"], timer=lambda fn: 1.0)


def test_single_candidate_is_verified_but_not_timed(generator):
    problem = Problem(generator)

    def no_timing(fn):
        raise AssertionError("a single candidate must not be timed")

    assert _choose(problem, ["good"], timer=no_timing) == "good"
    with pytest.warns(UserWarning), pytest.raises(RuntimeError):
        tuning.choose("test", ("other",), ["wrong"], run=problem.run,
                      reference=problem.reference, bound=1e-6, device=CPU, name=str)


def test_choice_is_cached_in_process_and_on_disk(generator):
    problem = Problem(generator)
    _choose(problem, ["good_a", "good_b"], timer=lambda fn: 1.0, persist=True)
    runs = dict(problem.runs)
    assert _choose(problem, ["good_a", "good_b"], timer=lambda fn: 1.0, persist=True) == "good_a"
    assert problem.runs == runs  # the second call ran nothing

    tuning.clear()  # a new process: only the disk cache is left
    (entry, choice), = json.loads(open(tuning.cache_path()).read()).items()
    assert choice == "good_a" and "test|cpu|" in entry and "('k', 1)" in entry
    assert _choose(problem, ["good_a", "good_b"], timer=lambda fn: 1.0, persist=True) == "good_a"
    assert problem.runs == runs
    # Another fingerprint (kernel source changed) is another entry: verified again.
    _choose(problem, ["good_a", "good_b"], timer=lambda fn: 1.0, persist=True,
            fingerprint="v2")
    assert problem.runs["good_a"] > runs["good_a"]


def test_outside_tracing_gives_real_tensors_under_fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode, is_fake

    with FakeTensorMode():
        assert is_fake(torch.empty(3))
        with tuning.outside_tracing():
            real = torch.randn(3)
            assert not is_fake(real) and torch.isfinite(real).all()
        assert is_fake(torch.empty(3))


@pytest.mark.interpreter
def test_triton_op_drops_a_miscompiled_candidate(monkeypatch, generator):
    """A candidate whose launch computes the wrong conv (the real kernel, padding shifted by one,
    as a miscompile would) is listed first, i.e. as the default: the op must still be right."""
    pytest.importorskip("triton")
    from resnet_fused.triton import configs
    from resnet_fused.triton import conv_bn_act as rt

    if not configs.interpreting():
        pytest.skip("the interpreter tier (TRITON_INTERPRET=1) only")
    broken = configs.ConvConfig(16, 16, 16, 4, 1, GROUP_M=1)
    good = configs.ConvConfig(32, 32, 16, 4, 1, GROUP_M=2)
    real_launch = rt.conv_bn_act_launch

    def launch(input, weight, scale, shift, residual, stride, padding, relu, out, config,
               force_int64=False):
        if config == broken:
            padding = [padding[0] + 1, padding[1]]  # reads the wrong input rows
        real_launch(input, weight, scale, shift, residual, stride, padding, relu, out, config,
                    force_int64)

    monkeypatch.setattr(rt, "conv_bn_act_launch", launch)
    monkeypatch.setattr(rt, "_candidates", lambda input, weight, out_sizes: (broken, good))
    x = torch.randn(2, 8, 9, 7, generator=generator).contiguous(memory_format=torch.channels_last)
    w = torch.randn(12, 8, 3, 3, generator=generator) / 8
    scale, shift = random_bn_params(12, generator)
    with pytest.warns(UserWarning, match="triton.conv_bn_act candidate 16x16x16"):
        y = ops.conv_bn_act(x, w, scale, shift, None, 1, 1, True, backend="triton")
    ref = conv_bn_act_reference(x.double(), w.double(), scale, shift, None, [1, 1], [1, 1], True)
    assert relative_error(y, ref) <= tolerance(torch.float32, "op")
    assert [r.candidate for r in tuning.REJECTED] == [rt._config_name(broken)]
    # Later calls of the shape reuse the verified choice: no new rejection, still right.
    y2 = ops.conv_bn_act(x, w, scale, shift, None, 1, 1, True, backend="triton")
    assert torch.equal(y, y2) and len(tuning.REJECTED) == 1


def test_a_corrupted_tile_is_rejected_though_the_l2_error_passes(generator):
    problem = Problem(generator)
    reference = problem.reference()
    bad = problem.run("bad_tile")
    assert relative_error(bad, reference) <= 0.5  # a loose global bound alone would pass it
    with pytest.warns(UserWarning, match="bad_tile failed verification"):
        chosen = tuning.choose("test", ("k", 2), ["bad_tile", "good"], run=problem.run,
                               reference=problem.reference, bound=0.5, device=CPU, name=str,
                               timer=lambda fn: (fn(), 1.0)[1])
    assert chosen == "good"
    assert "worst element" in tuning.REJECTED[0].reason


def test_a_candidate_that_differs_between_runs_is_rejected(generator):
    problem = Problem(generator)
    with pytest.warns(UserWarning, match="racy failed verification"):
        chosen = _choose(problem, ["racy", "good"], timer=lambda fn: (fn(), 1.0)[1])
    assert chosen == "good"
    assert "two runs on the same data differ" in tuning.REJECTED[0].reason


def test_first_passing_falls_through_and_runs_no_more(generator):
    """Tuning off: the default, or the next candidate that passes where it fails; the ones after
    it are not run, and nothing is timed."""
    problem = Problem(generator)

    def no_timing(fn):
        raise AssertionError("nothing may be timed with first_passing")

    with pytest.warns(UserWarning, match="wrong failed verification"):
        chosen = _choose(problem, ["wrong", "good", "good_other"], timer=no_timing,
                         first_passing=True)
    assert chosen == "good"
    assert "good_other" not in problem.runs
    assert _choose(Problem(generator), ["good", "wrong"], timer=no_timing,
                   first_passing=True) == "good"


@pytest.mark.parametrize("offset", [0, 1, 3])
def test_verification_data_keeps_the_calls_alignment(offset, generator):
    """Triton specializes on 16-byte alignment: the verified data must share the call's."""
    base = torch.randn(4 * 5 * 6 * 7 + 8, generator=generator)
    call = base[offset:offset + 4 * 5 * 6 * 7].view(4, 5, 6, 7)
    like = tuning._like(call, torch.Generator().manual_seed(0))
    assert like.shape == call.shape and like.stride() == call.stride()
    assert like.data_ptr() % 16 == call.data_ptr() % 16
    assert torch.isfinite(like).all() and like.std() > 0.5
