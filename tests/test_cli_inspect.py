import json

from click.testing import CliRunner

from compresstune.cli import main


def test_inspect_params_distilbert_learner64_json():
    r = CliRunner().invoke(
        main, ["inspect", "params", "--model", "config:distilbert", "--method", "learner", "--rank", "64", "--json"]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert (
        rep["base_params"] == 66_955_010 and rep["added_params"] == 5_308_416 and rep["trainable_params"] == 5_961_986
    )
    assert rep["groups"]["learners"]["trainable"] == 5_308_416


def test_inspect_params_table_bitfit_and_far():
    r = CliRunner().invoke(main, ["inspect", "params", "--model", "config:distilbert", "--method", "bitfit"])
    assert r.exit_code == 0 and "trainable 643,586" in r.output
    r = CliRunner().invoke(main, ["inspect", "params", "--model", "config:distilbert", "--method", "far", "--json"])
    rep = json.loads(r.output)
    # FAR10 keeps 10% of FFN nodes trainable; embeddings train (the paper's 41.45M)
    assert abs(rep["trainable_params"] - 41.45e6) / 41.45e6 < 0.01
