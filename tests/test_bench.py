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


def test_end_to_end_bench_times_the_first_token_of_each_backend(tmp_path, capsys):
    from rankmix.kernels import bench_e2e

    assert bench_e2e.main(["--n", "2", "--warmup", "1", "--out", str(tmp_path / "bench"),
                           f"paths.cache_dir={tmp_path / 'cache'}"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "bench" / "e2e-cpu.csv")))
    assert [r["variant"] for r in rows] == ["lora_64", "smora_dense_masked", "smora_gather"]
    assert all(r["n"] == "2" and float(r["ttft_ms_mean"]) > 0 and r["peak_mb_mean"] == "" for r in rows)
    assert "| smora_gather |" in (tmp_path / "bench" / "e2e-cpu.md").read_text()
    assert "without peak memory" in capsys.readouterr().out


def test_end_to_end_bench_refuses_a_method_without_a_sparse_path():
    import pytest

    from rankmix.kernels import bench_e2e

    with pytest.raises(SystemExit, match="pick a SMoRA one"):
        bench_e2e.main(["--experiment", "smora-1/lora_64", "--n", "1"])
