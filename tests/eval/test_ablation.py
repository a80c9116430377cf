import numpy as np
import pytest

from maple.eval.ablation import aggregate, fine_grained_accuracy, markdown_table
from maple.eval.plots import plot_type_accuracy


def test_aggregate_gives_mean_and_sample_std_over_seeds():
    out = aggregate({"a": [{"x": 0.2}, {"x": 0.4}, {"x": 0.6}], "b": [{"x": 0.5}]})
    assert out["a"]["x"][0] == pytest.approx(0.4)
    assert out["a"]["x"][1] == pytest.approx(np.std([0.2, 0.4, 0.6], ddof=1))
    assert out["a"]["x"][2] == 3 and out["b"]["x"] == (0.5, 0.0, 1)


def test_aggregate_ignores_nan_values():
    out = aggregate({"a": [{"x": float("nan")}, {"x": 1.0}]})
    assert out["a"]["x"] == (1.0, 0.0, 1)


def test_fine_grained_accuracy_averages_swap_and_replace_types_only():
    m = {"comp_held_out_replace_attribute_accuracy": 1.0, "comp_held_out_swap_attributes_accuracy": 0.5,
         "comp_held_out_replace_relation_accuracy": 0.0, "comp_held_out_swap_relation_order_accuracy": 0.5,
         "comp_held_out_add_object_accuracy": 0.0}
    assert fine_grained_accuracy(m) == pytest.approx(0.5)


def test_markdown_table_has_a_row_per_variant_in_percent(tmp_path):
    summary = aggregate({"infonce": [{"t2i_r@1": 0.25, "comp_held_out_swap_attributes_accuracy": 0.5}],
                         "full": [{"t2i_r@1": 0.5, "comp_held_out_swap_attributes_accuracy": 0.75}]})
    table = markdown_table(summary, ["swap_attributes"])
    assert "| infonce | 1 | 25.0 ± 0.0 |" in table and "| full | 1 | 50.0 ± 0.0 |" in table
    assert "75.0 ± 0.0" in table
    plot_type_accuracy(summary, ["swap_attributes"], tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000
