"""``train.compile``: "auto" is on for CUDA only, a bad value is a ConfigError, and a compiled
training step (SupMimModel.compile_parts: clean pass, masked pass + decoder, frozen target)
gives the eager step's losses, gradients and updated weights, with inductor on the CPU."""

from __future__ import annotations

import functools

import pytest
import torch

from supmim.config import build_config, compile_enabled
from supmim.engine.build import guarded_batches
from supmim.engine.loop import Trainer
from supmim.errors import ConfigError
from tests._fixtures import make_image_folder


def test_auto_compiles_on_cuda_only_and_true_false_are_kept():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU
    assert build_config(overrides=["mim.target=pixel"]).train.compile == "auto"  # the default
    assert compile_enabled("auto", cuda) and not compile_enabled("auto", cpu)
    assert compile_enabled(True, cpu) and not compile_enabled(False, cuda)
    for text, value in (("auto", "auto"), ("true", True), ("false", False), ("on", True),
                        ("off", False)):  # YAML 1.1 reads on/off as booleans
        cfg = build_config(overrides=["mim.target=pixel", f"train.compile={text}"])
        assert cfg.train.compile == value


@pytest.mark.parametrize("value", ["maybe", "3", "[1]", "'true'"])
def test_a_bad_compile_value_names_the_key_and_the_choices(value):
    with pytest.raises(ConfigError, match=r"train.compile.*choose one of auto, true, false"):
        build_config(overrides=["mim.target=pixel", f"train.compile={value}"])


@functools.cache
def _inductor_problem() -> str | None:
    """Why inductor cannot compile on this CPU (no C++ compiler, ...), or None."""
    try:
        fn = torch.compile(lambda x: (x * 2.0).sin().sum(), backend="inductor", fullgraph=True)
        x = torch.randn(8)
        torch.testing.assert_close(fn(x), (x * 2.0).sin().sum())
    except Exception as err:  # noqa: BLE001 - any failure means: skip, saying why
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    return None


def _one_step(data, out, compile_: bool):
    cfg = build_config(preset="tiny-test",
                       extra={"data.data": str(data), "mim.target": "pixel",
                              "data.val_fraction": 0.0},
                       overrides=["data.batch_size=8", f"train.compile={str(compile_).lower()}"])
    t = Trainer(cfg, out, progress=False)
    t.setup()
    batches = next(guarded_batches(t.loaders.train, t.run))
    stats = t.train_step(batches, epoch=0)
    model = t.parts.model
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return t, stats, grads, model.state_dict()


def test_a_compiled_step_matches_the_eager_step(tmp_path):
    problem = _inductor_problem()
    if problem is not None:
        pytest.skip(f"torch inductor cannot compile on this CPU: {problem}")
    torch._dynamo.reset()
    data = make_image_folder(tmp_path / "data", size=16)
    eager, e_stats, e_grads, e_state = _one_step(data, tmp_path / "eager", False)
    comp, c_stats, c_grads, c_state = _one_step(data, tmp_path / "compiled", True)
    assert not eager.parts.model._compiled
    assert set(comp.parts.model._compiled) == {"_clean", "mim_targets", "_masked_loss",
                                               "_one_pass_parts"}
    # what a step calls and what is saved are the plain module: no `_orig_mod.` keys
    assert comp.parts.step_model is comp.parts.model
    assert list(c_state) == list(e_state) and not any("_orig_mod" in k for k in c_state)
    assert e_stats is not None and c_stats is not None
    assert set(e_stats) == set(c_stats) >= {"loss", "loss_cls", "loss_mim"}
    for key in e_stats:
        assert c_stats[key] == pytest.approx(e_stats[key], rel=1e-4, abs=1e-5), key
    assert e_grads.keys() == c_grads.keys() and "decoder.head.weight" in c_grads
    for name in e_grads:
        torch.testing.assert_close(c_grads[name], e_grads[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, n=name: f"gradient of {n}: {m}")
    # AdamW's first update is about lr * sign(gradient): a gradient within float noise of 0
    # may flip sign, so weights agree to a fraction of lr (1e-3), not to float precision
    lr = comp.cfg.train.lr
    for name in e_state:
        torch.testing.assert_close(c_state[name], e_state[name], rtol=0, atol=2 * lr,
                                   msg=lambda m, n=name: f"weight {n}: {m}")
    near = sum(int((c_state[n] - e_state[n]).abs().gt(1e-5).sum()) for n in e_state
               if e_state[n].is_floating_point())
    total = sum(v.numel() for v in e_state.values() if v.is_floating_point())
    assert near <= max(10, total // 1000), f"{near} of {total} weights differ by > 1e-5"
