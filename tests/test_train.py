import math

import pytest
import torch

from compresstune.data.batching import collate, encode, epoch_batches
from compresstune.data.glue import load_glue
from compresstune.errors import CheckFailed
from compresstune.train.loop import linear_schedule, train
from compresstune.train.options import TrainOptions


def TrainSpec(**kw):
    return TrainOptions(**kw)


def test_epoch_batches_cover_all_once_and_are_deterministic():
    lengths = [((i * 7919) % 50) + 1 for i in range(1000)]
    b1 = epoch_batches(lengths, 32, seed=3, epoch=0)
    assert sorted(i for b in b1 for i in b) == list(range(1000))
    assert len(b1) == math.ceil(1000 / 32)
    assert b1 == epoch_batches(lengths, 32, seed=3, epoch=0)
    assert b1 != epoch_batches(lengths, 32, seed=3, epoch=1)

    # grouping makes batches much more uniform in length than random batches
    def spread(bs):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bs) / len(bs)

    assert spread(b1) < 0.3 * spread(epoch_batches(lengths, 32, 3, 0, group_by_length=False))


def test_schedule_warmup_then_linear_decay():
    f = linear_schedule(100, 10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == 0.0


def test_collate_pads_dynamically(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    from compresstune.data.task import Split

    enc = encode(tok, Split([("a b c d e",), ("hi",)], [0, 1]), 128)
    b = collate(enc, tok.pad_token_id)
    assert b["input_ids"].shape == (2, 7) and b["attention_mask"].sum().item() == 7 + 3


def _setup(tiny_bert, glue_dir, n=64):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    task = load_glue("sst2", "local", str(glue_dir))
    task.train, task.dev = task.train.subset(n, 0), task.dev.subset(32, 0)
    return (
        AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2),
        AutoTokenizer.from_pretrained(tiny_bert),
        task,
    )


def test_training_reduces_loss_and_keeps_best(tiny_bert, glue_dir, tmp_path):
    model, tok, task = _setup(tiny_bert, glue_dir)
    spec = TrainSpec(epochs=6, lr=3e-3, batch_size=16, warmup_ratio=0.1, seed=1)
    res = train(model, task, tok, spec, tmp_path / "ck", max_length=32, progress=False, log=lambda s: None)
    losses = [h["train_loss"] for h in res.history]
    assert res.steps == 24 and len(res.history) == 6
    assert losses[-1] < losses[0]
    assert res.best_metric == max(h["dev_main"] for h in res.history)
    assert (tmp_path / "ck" / "last.pt").is_file() and (tmp_path / "ck" / "best.pt").is_file()


def test_resume_in_process_matches_unbroken_run(tiny_bert, glue_dir, tmp_path):
    spec = TrainSpec(epochs=2, lr=1e-3, batch_size=16, seed=5, select="last", checkpoint_every_steps=3)
    m1, tok, task = _setup(tiny_bert, glue_dir)
    train(m1, task, tok, spec, tmp_path / "a", max_length=32, progress=False, log=lambda s: None)
    # emulate a run stopped right after its step-3 checkpoint: keep that checkpoint, train again from it
    # (the SIGKILL version of this runs through the CLI in test_pipeline.py)
    m2, _, _ = _setup(tiny_bert, glue_dir)
    ck = tmp_path / "b"
    spec_b = spec.model_copy()
    import compresstune.train.loop as T

    saved = {}
    orig = T.atomic_save

    def spy(obj, path):
        orig(obj, path)
        if path.name == "last.pt" and obj["step"] == 3:
            saved["ck"] = path.read_bytes()

    T.atomic_save = spy
    try:
        train(m2, task, tok, spec_b, ck, max_length=32, progress=False, log=lambda s: None)
    finally:
        T.atomic_save = orig
    (ck / "last.pt").write_bytes(saved["ck"])
    m3, _, _ = _setup(tiny_bert, glue_dir)
    res = train(m3, task, tok, spec_b, ck, max_length=32, progress=False, log=lambda s: None)
    assert res.resumed_from_step == 3
    for (n, p1), p3 in zip(m1.named_parameters(), m3.parameters()):
        assert torch.equal(p1, p3), n


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
)
def test_optimizer_is_fused_and_stays_fused_after_resuming_an_older_checkpoint(
    device, tiny_bert, glue_dir, tmp_path, monkeypatch
):
    import compresstune.train.loop as T

    spec = TrainSpec(epochs=2, lr=1e-3, batch_size=16, seed=5, select="last", checkpoint_every_steps=3)
    m1, tok, task = _setup(tiny_bert, glue_dir)
    train(m1, task, tok, spec, tmp_path / "a", max_length=32, device=device, progress=False, log=lambda s: None)
    # a checkpoint written by a version that used the default (unfused) kernel: resuming it must use this
    # machine's kernel, so the result equals the unbroken fused run
    saved = {}
    orig = T.atomic_save

    def spy(obj, path):
        orig(obj, path)
        if path.name == "last.pt" and obj["step"] == 3:
            saved["ck"] = torch.load(path, weights_only=False)

    monkeypatch.setattr(T, "atomic_save", spy)
    m2, _, _ = _setup(tiny_bert, glue_dir)
    train(m2, task, tok, spec, tmp_path / "b", max_length=32, device=device, progress=False, log=lambda s: None)
    old = saved["ck"]
    assert all(g["fused"] for g in old["optimizer"]["param_groups"])
    for g in old["optimizer"]["param_groups"]:
        g["fused"] = None
    monkeypatch.setattr(T, "atomic_save", orig)
    torch.save(old, tmp_path / "b" / "last.pt")
    kernels = []
    real = T.Trainer._train_steps

    def train_steps(self):  # what the optimizer is when training goes on
        fused = [g["fused"] for g in self.opt.param_groups]
        # the old kernel kept `step` on the CPU; the fused one needs it beside its parameter (CUDA)
        beside = {s["step"].device == p.device for p, s in self.opt.state.items()}
        kernels.append((fused, beside))
        return real(self)

    monkeypatch.setattr(T.Trainer, "_train_steps", train_steps)
    m3, _, _ = _setup(tiny_bert, glue_dir)
    res = train(m3, task, tok, spec, tmp_path / "b", max_length=32, device=device, progress=False, log=lambda s: None)
    assert res.resumed_from_step == 3 and kernels == [([True, True], {True})]
    for (n, p1), p3 in zip(m1.named_parameters(), m3.parameters()):
        assert torch.equal(p1, p3), n


def test_adamw_uses_the_default_kernel_where_there_is_no_fused_one(monkeypatch):
    import torch.utils._foreach_utils as F

    import compresstune.train.optim as T

    cpu = torch.nn.Parameter(torch.ones(3))
    assert T.adamw([{"params": [cpu], "weight_decay": 0.0}], 0.1).param_groups[0]["fused"] is True
    # a device PyTorch has no fused kernel for: AdamW itself would accept it and fail at the first step
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    assert not T.adamw([{"params": [cpu]}, {"params": [meta]}], 0.1).param_groups[0]["fused"]
    monkeypatch.setattr(F, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    opt = T.adamw([{"params": [cpu], "weight_decay": 0.0}], 0.1)
    assert not opt.param_groups[0]["fused"]
    cpu.grad = torch.ones(3)
    opt.step()  # the default kernel steps where the fused one is not offered
    assert torch.allclose(cpu.detach(), torch.full((3,), 0.9))


def test_nan_loss_stops_with_clear_message(tiny_bert, glue_dir, tmp_path):
    model, tok, task = _setup(tiny_bert, glue_dir)
    spec = TrainSpec(epochs=3, lr=1e-3, batch_size=16, seed=1, checkpoint_every_steps=2)
    calls = {"n": 0}
    orig_forward = model.forward

    def forward(*a, **kw):
        out = orig_forward(*a, **kw)
        calls["n"] += 1
        if calls["n"] == 7:  # a training step after the step-2/4 checkpoints (evals run in no_grad but count too)
            out.loss = out.loss * float("nan")
        return out

    model.forward = forward
    with pytest.raises(CheckFailed, match="loss is nan") as ei:
        train(model, task, tok, spec, tmp_path / "ck", max_length=32, progress=False, log=lambda s: None)
    assert "last good checkpoint" in str(ei.value)
    ck = torch.load(tmp_path / "ck" / "last.pt", weights_only=False)
    assert ck["step"] >= 2 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_infinite_gradient_with_finite_loss_is_caught(tiny_bert, glue_dir, tmp_path):
    model, tok, task = _setup(tiny_bert, glue_dir)
    spec = TrainSpec(epochs=2, lr=1e-3, batch_size=16, seed=1, checkpoint_every_steps=2)
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 3 else grad

    model.classifier.weight.register_hook(poison)
    with pytest.raises(CheckFailed, match="gradient norm is") as ei:
        train(model, task, tok, spec, tmp_path / "ck", max_length=32, progress=False, log=lambda s: None)
    assert "step 2" in str(ei.value) and "finetune.lr=" in str(ei.value)
    ck = torch.load(tmp_path / "ck" / "last.pt", weights_only=False)
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("select", ["best", "last"])
def test_select_best_outputs_the_weights_of_the_best_step(select, tmp_path, tiny_bert, glue_dir, monkeypatch):
    """A dev metric that peaks in the middle of training: with ``select: best`` the finetune stage saves the
    weights as they were at that evaluation (not the last ones); with ``select: last``, the last ones."""
    from conftest import write_pipeline
    from safetensors.torch import load_file

    import compresstune.train.loop as loop
    from compresstune.config import load_config
    from compresstune.pipeline import run_pipeline

    scripted = iter([40.0, 90.0, 60.0, 70.0])  # one evaluation per epoch; the best is the second
    at_eval = []
    real = loop.evaluate

    def scripted_evaluate(model, task, *a, **kw):
        metrics = real(model, task, *a, **kw)
        at_eval.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {**metrics, "main": next(scripted)}

    monkeypatch.setattr(loop, "evaluate", scripted_evaluate)
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir, stages="[finetune]")
    cfg = load_config(p, ["finetune.epochs=4", f"finetune.select={select}"])
    man = run_pipeline(cfg, output_dir=str(tmp_path / "out"), log=lambda s: None, progress=False)
    s = man.stages["finetune"]["summary"]
    assert (s["best_dev_metric"], s["best_step"], s["final_dev_metric"]) == (90.0, 12, 70.0)
    assert s["dev_metric"] == (90.0 if select == "best" else 70.0)
    saved = load_file(tmp_path / "out" / "t" / "01_finetune" / "model" / "model.safetensors")
    want, other = (at_eval[1], at_eval[3]) if select == "best" else (at_eval[3], at_eval[1])
    assert len(at_eval) == 4 and saved.keys() <= want.keys()
    assert all(torch.equal(saved[k], want[k]) for k in saved)
    assert not all(torch.equal(saved[k], other[k]) for k in saved)
