"""The kernel benchmark runs end to end here (CPU variants, small shapes) and writes its CSV and table."""

import csv

from rankmix.kernels.bench import main


def test_bench_quick_run_writes_its_tables(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "kernels-cpu.csv")))
    assert {r["variant"] for r in rows} >= {"eager_dense", "naive_gather", "for_loop", "lora_r", "lora_k"}
    assert all(float(r["fwd_us"]) > 0 and float(r["bwd_us"]) > 0 for r in rows)
    assert "No GPU was present" in (tmp_path / "kernels-cpu.md").read_text()
    assert "no GPU present" in capsys.readouterr().out
