"""The GPU benchmark keeps working where there is no GPU: the same code on the CPU with small shapes (the
figures themselves are only meaningful on a GPU, and tests never check timings)."""

from bench import gpu


def test_gpu_benchmark_runs_and_reports_every_figure():
    results = {r.key: r for r in gpu.run(quick=True)}
    assert set(results) == {"gpu_trainable_ratio_lora", "gpu_trainable_ratio_full", "gpu_packing_4",
                            "gpu_loader_ratio"}
    assert all(r.value is not None and r.value > 0 for r in results.values())
    runs = results["gpu_packing_4"].details["runs"]
    assert [r["processes"] for r in runs] == gpu.shapes(True)["packing"]
    assert results["gpu_trainable_ratio_lora"].details["ours"]["images_per_s"] > 0
