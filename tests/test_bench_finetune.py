import pytest

from compresstune.bench.study import parse_method, summarize, to_markdown
from compresstune.config.results import StageRecord, result_of
from compresstune.errors import UserError


def test_parse_method_labels():
    assert parse_method("learner64-p2").settings == {"rank": 64, "priming_epochs": 2.0}
    assert parse_method("learner8-p0.5").settings["priming_epochs"] == 0.5
    assert parse_method("far10").settings == {"far_retention": 0.1}
    assert parse_method("lora8").settings["rank"] == 8
    assert parse_method("bitfit").method == "bitfit"
    with pytest.raises(UserError, match="not a method"):
        parse_method("learner")


def _run(best, curve, t, rss, merge=None, gpu=None):
    hist = [{"train_time_s": tt, "epoch": e, "dev_main": d, "train_loss": 0.5} for tt, e, d in curve]
    ft = {
        "method": "full",
        "best_dev_metric": best,
        "final_dev_metric": curve[-1][2],
        "trainable_params": 10,
        "total_params": 100,
        "train_time_s": t,
        "epochs": 2.0,
        "history": hist,
        "metric": "mcc",
        "resources": {"peak_rss_mb": rss, "peak_rss_increase_mb": rss / 2},
    }
    if gpu is not None:
        ft["resources"]["cuda_peak_allocated_mb"] = gpu
    st = {"finetune": StageRecord(name="finetune", type="finetune", result=result_of("finetune", ft))}
    if merge is not None:
        mg = result_of("merge", {"how": "folded", "max_abs_diff": merge})
        st["merge"] = StageRecord(name="merge", type="merge", result=mg)
    return st


def test_summary_time_to_99_and_relative_table():
    specs = [parse_method("full"), parse_method("learner64-p2")]
    runs = {
        "full": [
            _run(50.0, [(10, 1, 40.0), (20, 2, 50.0)], 20, 1000),
            _run(52.0, [(10, 1, 52.0), (20, 2, 51.0)], 20, 1000),
        ],
        "learner64-p2": [
            _run(50.0, [(5, 1, 45.0), (12, 2, 50.0)], 12, 600, 1e-6),
            _run(49.0, [(5, 1, 49.0), (12, 2, 48.0)], 12, 600, 2e-6),
        ],
    }
    res = summarize(specs, runs, {"full": 1e-4, "learner64-p2": 1e-3}, {})
    full, lrn = res["rows"]["full"], res["rows"]["learner64-p2"]
    assert res["full_best_mean"] == pytest.approx(51.0)
    # target 0.99 * 51 = 50.49: full seed 1 peaks at 50.0 and never reaches it, seed 2 does at 10 s
    assert full["reached_99"] == 1 and full["time_to_99_s"] == (None, None)
    assert lrn["reached_99"] == 0
    assert full["best"][0] == pytest.approx(51.0) and full["best"][1] == pytest.approx(1.41421, rel=1e-4)
    assert lrn["merge_max_abs_diff"] == 2e-6 and lrn["epoch_time_s"][0] == pytest.approx(6.0)
    res.update(task="cola", model="m", seeds=[1, 2], epochs=2, batch_size=32, train_examples=100)
    md = to_markdown(res)
    assert "| learner64-p2 | 0.001 | 10 | 49.50 ± 0.71 |" in md
    assert "| learner64-p2 | -1.50 | -40.0% | -40.0% |" in md
    assert "| reached by 1/2 seeds: -, 10 |" in md and "| reached by 0/2 seeds |" in md
    assert "GPU" not in md and "peak RSS, host (MB)" in md  # a CPU run: host memory only, and said so


def test_study_on_cuda_reports_gpu_memory_beside_host_rss():
    """On a CUDA run RSS is host memory, not the training state: torch's peak CUDA allocation gets its own column."""
    specs = [parse_method("full"), parse_method("bitfit")]
    curve = [(10, 1, 40.0), (20, 2, 50.0)]
    runs = {
        "full": [_run(50.0, curve, 20, 3000, gpu=900.0), _run(50.0, curve, 20, 3000, gpu=1100.0)],
        "bitfit": [_run(45.0, curve, 12, 2900, gpu=300.0), _run(45.0, curve, 12, 2900, gpu=300.0)],
    }
    res = summarize(specs, runs, {"full": 1e-4, "bitfit": 1e-3}, {})
    assert res["rows"]["full"]["cuda_peak_allocated_mb"] == pytest.approx((1000.0, 141.42), rel=1e-4)
    res.update(task="cola", model="m", seeds=[1, 2], epochs=2, batch_size=32, train_examples=100)
    md = to_markdown(res)
    header = next(ln for ln in md.splitlines() if ln.startswith("| method | lr"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[8:11] == ["peak RSS, host (MB)", "RSS increase, host (MB)", "GPU peak allocated (MB)"]
    row = next(ln for ln in md.splitlines() if ln.startswith("| bitfit | 0.001"))
    assert [c.strip() for c in row.strip("|").split("|")][10] == "300"


def test_speed_and_memory_bench_on_tiny_model(tiny_bert, glue_dir):
    from compresstune.bench.training import memory_bench, memory_markdown, speed_bench, speed_markdown

    rows = speed_bench(
        "sst2",
        ["full", "learner4-p1"],
        str(tiny_bert),
        batch_size=8,
        steps=5,
        rounds=2,
        glue_dir=str(glue_dir),
        log=lambda s: None,
    )
    assert [r["method"] for r in rows] == ["full", "learner4-p1 (priming)", "learner4-p1 (after priming)"]
    assert all(len(r["rounds_ms"]) == 2 and r["ms_per_step"] > 0 for r in rows)
    assert "| full |" in speed_markdown(rows, "sst2", 8, 5, 2)
    mem = memory_bench(
        "sst2",
        ["full", "bitfit"],
        str(tiny_bert),
        batch_size=8,
        n_batches=1,
        glue_dir=str(glue_dir),
        log=lambda s: None,
    )
    full, bitfit = mem
    assert (
        full["grads_mb"] == full["params_mb"]
        and bitfit["grads_mb"] < 0.1
        and bitfit["peak_tensor_mb"] < full["peak_tensor_mb"]
    )
    assert "| bitfit |" in memory_markdown(mem, "sst2", 8, 1)
