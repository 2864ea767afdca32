"""Adding a fine-tuning method is one new file: a toy method defined and registered here, in the
test file alone, runs through a whole pipeline (config validation, fingerprint, training, reload,
merge, export) and through `inspect params`, with no other file changed."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from conftest import run_pipeline_in, write_pipeline
from pydantic import Field

from compresstune.cli import main
from compresstune.config import load_config
from compresstune.methods import Method, MethodSetup, register, unregister
from compresstune.methods.groups import train_only
from compresstune.models.arch import arch_for, get_module, set_module
from compresstune.options import Section
from compresstune.pipeline import fingerprints


class DeltaHead(nn.Module):
    """The classifier plus a trainable low-rank delta, foldable into the classifier's weight."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.randn(base.in_features, rank) * 0.01)
        self.b = nn.Parameter(torch.zeros(rank, base.out_features))

    def forward(self, x):
        return self.base(x) + x @ self.a @ self.b


class ToyOptions(Section):
    toy_rank: int = Field(2, gt=0, description="toy: rank of the head delta")


class ToyDeltaHead(Method):
    name = "toy_delta_head"
    Options = ToyOptions
    structure_key = "toy_delta_head"
    merges = True
    default_lr = 1e-2

    @staticmethod
    def _path(model):
        return arch_for(model).head_modules[-1]  # the final classifier linear

    def prepare(self, model, opts, ctx):
        set_module(model, self._path(model), DeltaHead(get_module(model, self._path(model)), opts.toy_rank))
        train_only(model, set())
        head = get_module(model, self._path(model))
        for p in (head.a, head.b):
            p.requires_grad_(True)
        return MethodSetup(structure={"toy_delta_head": {"rank": opts.toy_rank}})

    def reapply(self, model, entry):
        set_module(model, self._path(model), DeltaHead(get_module(model, self._path(model)), entry["rank"]))
        return model

    def merge(self, model, entry):
        head = get_module(model, self._path(model))
        with torch.no_grad():
            head.base.weight += (head.a @ head.b).T
        set_module(model, self._path(model), head.base)
        return model, "toy delta folded into the classifier", False


@pytest.fixture
def toy_method():
    register(ToyDeltaHead)
    yield ToyDeltaHead
    unregister(ToyDeltaHead.name)


def test_a_method_registered_from_a_test_file_runs_a_whole_pipeline(toy_method, tiny_bert, glue_dir, tmp_path):
    extra = "merge: {}\n"
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir, extra, stages="[finetune, merge, export]")
    text = p.read_text().replace("finetune:\n", "finetune:\n  method: toy_delta_head\n  toy_rank: 3\n")
    p.write_text(text)
    cfg = load_config(p)
    assert cfg.stages["finetune"].toy_rank == 3
    assert fingerprints(cfg) != fingerprints(load_config(p, ["finetune.toy_rank=4"]))  # its option is fingerprinted
    # ... and only when chosen: another method's fingerprint ignores it
    full = load_config(p, ["finetune.method=full"])
    assert fingerprints(full) == fingerprints(load_config(p, ["finetune.method=full", "finetune.toy_rank=4"]))

    r = run_pipeline_in(tmp_path)
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "exported" / "t" / "manifest.json").read_text())
    ft = man["stages"]["finetune"]["summary"]
    assert ft["structure"] == {"toy_delta_head": {"rank": 3}}
    assert ft["optimizer_params"] == (32 + 2) * 3  # only a (32 x 3) and b (3 x 2) trained
    merge = man["stages"]["merge"]["summary"]
    assert merge["how"] == "toy delta folded into the classifier" and merge["max_abs_diff"] < 1e-5 and merge["plain_hf"]
    assert max(man["stages"]["export"]["summary"]["max_abs_diff"].values()) < 1e-4


def test_the_registry_reaches_config_errors_and_inspect(toy_method, tiny_bert, glue_dir, tmp_path):
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    from compresstune.errors import ConfigError

    with pytest.raises(ConfigError, match="toy_delta_head"):
        load_config(p, ["finetune.method=toy_delta_headd"])  # the message lists the registered methods
    r = CliRunner().invoke(
        main, ["inspect", "params", "--model", str(tiny_bert), "--method", "toy_delta_head", "--json"]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["trainable_params"] == (32 + 2) * 2 and rep["added_params"] == (32 + 2) * 2


def test_unregistering_removes_the_method(tiny_bert, glue_dir, tmp_path):
    p = write_pipeline(tmp_path / "p.yaml", tiny_bert, glue_dir)
    from compresstune.errors import ConfigError

    with pytest.raises(ConfigError):
        load_config(p, ["finetune.method=toy_delta_head"])
