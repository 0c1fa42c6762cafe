"""The text-sampling command of the issue, end to end on a seconds-long gpt run."""

from mlcanon import registry
from mlcanon.cli import main


def test_sample_prints_text_continuing_the_prompt(real_data, tmp_runs, capsys):
    algo = registry.get("gpt")
    config = algo.config_cls(**{**algo.tiny, "out_dir": str(tmp_runs), "progress": False, "device": "cpu"})
    run_dir = algo.train(config)["run_dir"]
    capsys.readouterr()
    args = ["sample", run_dir, "-n", "2", "--prompt", "ROMEO:", "--temperature", "0.8", "--top-k", "40",
            "--top-p", "0.95", "--length", "30"]
    assert main(args) == 0
    first = capsys.readouterr().out
    texts = first.split("\n\n---\n\n")
    assert len(texts) == 2 and all(t.startswith("ROMEO:") for t in texts)
    assert "samples.txt" in texts[1].splitlines()[-1]         # the CLI names the file it wrote
    assert main(args) == 0
    assert capsys.readouterr().out == first                  # --seed 0 by default: the same texts
    assert main(args + ["--seed", "1"]) == 0
    assert capsys.readouterr().out != first
