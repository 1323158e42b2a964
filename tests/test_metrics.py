import csv

import pytest
import torch

from lightning_lossval.metrics import detection_report, discovery_curve, f1, flag_low, lowest, two_means_split
from lightning_lossval.report import format_table, save_values


def brute_force_two_means(values):
    v = sorted(values)
    best = min(range(1, len(v)), key=lambda k: sum((x - sum(g) / len(g)) ** 2 for g in (v[:k], v[k:]) for x in g))
    return v[best - 1]  # largest value of the lower group


@pytest.mark.parametrize("seed", range(5))
def test_two_means_matches_brute_force(seed):
    values = torch.randn(30, generator=torch.Generator().manual_seed(seed))
    mask = two_means_split(values)
    assert values[mask].max().item() == pytest.approx(brute_force_two_means(values.tolist()))
    assert (values[mask].max() < values[~mask].min()).item()


def test_two_means_separates_two_clusters():
    values = torch.tensor([5.0, 5.1, -3.0, 4.9, -3.2, 5.2, -2.9])
    assert two_means_split(values).tolist() == [False, False, True, False, True, False, True]


def test_flag_low_cuts_the_measured_values_and_flags_nothing_when_they_do_not_differ():
    values = torch.tensor([2.0, 3.1, 1.0, 2.1, 3.0])
    measured = torch.tensor([True, True, False, True, True])
    assert flag_low(values).tolist() == [True, False, True, True, False]  # the 1.0 pulls the cut down with it
    assert flag_low(values, measured).tolist() == [True, False, False, True, False]  # unmeasured: never flagged
    ties = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])
    assert flag_low(ties).tolist() == [True, False, True, False, True]
    for same in (torch.full((5,), 0.7), torch.tensor([0.3]), torch.zeros(0)):  # 2-means would still split these
        assert not flag_low(same).any()
    assert not flag_low(values, torch.tensor([True, False, False, False, False])).any()  # one measured row
    risen = torch.tensor([0.9, 1.5, 1.02, 0.95, 1.6])  # the lower group holds a row the run raised above 1
    assert flag_low(risen).tolist() == [True, False, True, True, False]
    assert flag_low(risen, below=1.0).tolist() == [True, False, False, True, False]


def test_values_csv_says_yes_or_no_for_flagged_and_noisy(tmp_path):
    values = torch.tensor([0.9, 0.1, 1.0, 0.95, 0.15, 1.0])
    columns = {"noisy": [False, True, False, False, True, False], "visits": [2, 2, 0, 2, 2, 2]}
    with open(save_values(tmp_path, values, columns)) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["rank", "index", "noisy", "visits", "value", "flagged"]
    assert [(r["index"], r["noisy"], r["flagged"]) for r in rows] == [
        ("1", "yes", "yes"),
        ("4", "yes", "yes"),
        ("0", "no", "no"),
        ("3", "no", "no"),
        ("2", "no", "no"),  # value 1.0 never measured (visits 0): not flagged
        ("5", "no", "no"),
    ]
    with open(save_values(tmp_path, torch.ones(3), {})) as f:
        assert [r["flagged"] for r in csv.DictReader(f)] == ["no", "no", "no"]


def test_f1_and_lowest():
    noisy = torch.tensor([True, True, False, False])
    assert f1(torch.tensor([True, False, False, False]), noisy) == pytest.approx(2 / 3)
    assert f1(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)) == 0.0
    assert lowest(torch.tensor([3.0, 1.0, 2.0, 0.0]), 2).tolist() == [False, True, False, True]


def test_discovery_curve():
    values = torch.tensor([0.1, 0.9, 0.2, 0.8])
    noisy = torch.tensor([True, False, False, True])
    inspected, found = discovery_curve(values, noisy)
    assert inspected.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert found.tolist() == [0, 0.5, 0.5, 1.0, 1.0]


def test_detection_report_perfect_and_reversed():
    noisy = torch.tensor([True] * 3 + [False] * 7)
    perfect = detection_report(torch.where(noisy, -1.0, 1.0) + torch.linspace(0, 0.1, 10), noisy)
    assert perfect == pytest.approx(
        {"detection_f1": 1.0, "f1_at_noise_rate": 1.0, "auroc": 1.0, "average_precision": 1.0}
    )
    reversed_ = detection_report(torch.where(noisy, 1.0, -1.0), noisy)
    assert reversed_["auroc"] == 0.0 and reversed_["f1_at_noise_rate"] == 0.0
    assert set(detection_report(torch.randn(5), torch.zeros(5, dtype=torch.bool))) == {
        "detection_f1",
        "f1_at_noise_rate",
    }


def test_random_values_score_near_the_documented_baseline():
    # REFERENCE: random valuations score about .29 2-means F1 at a 20% noise rate
    scores = []
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        noisy = torch.zeros(1000, dtype=torch.bool)
        noisy[torch.randperm(1000, generator=g)[:200]] = True
        scores.append(detection_report(torch.rand(1000, generator=g), noisy)["detection_f1"])
    assert sum(scores) / len(scores) == pytest.approx(0.29, abs=0.03)


def test_the_printed_table_keeps_the_digits_of_large_and_small_targets():
    rows = [
        {"row": 3, "target": 733555.72, "prediction": "754362", "value": 0.41234567},
        {"row": 9, "target": 0.000676, "prediction": "0.00071", "value": 0.5},
    ]
    lines = format_table(rows).splitlines()
    assert lines[1].split() == ["3", "733555.7", "754362", "0.4123"]  # not 733555.7200 next to 7.544e+05
    assert lines[2].split() == ["9", "0.000676", "0.00071", "0.5000"]  # not 0.0007
    tiny = format_table([{"row": 1, "value": -7e-8}, {"row": 2, "value": -0.00012}]).splitlines()
    assert tiny[1].split() == ["1", "0.0000"] and tiny[2].split() == ["2", "-0.0001"]  # no negative zero


def test_a_label_with_a_line_break_or_a_bar_stays_on_its_row_of_the_printed_table():
    rows = [{"row": 3, "target": 'a "quoted"\nlabel', "value": 0.25}, {"row": 9, "target": "x|y", "value": 0.5}]
    lines = format_table(rows).splitlines()
    assert len(lines) == 3 and lines[1].endswith("0.2500") and 'a "quoted"\\nlabel' in lines[1], lines
    assert format_table(rows, markdown=True).splitlines()[3] == "| 9 | x\\|y | 0.5000 |"


def test_the_cut_line_says_when_it_flags_most_rows():
    from lightning_lossval.report import flagged_rows
    from lightning_lossval.run_report import _cut_line

    def cut_line(values):
        return _cut_line(values, flagged_rows(values, {"visits": [1] * 6}), 0, None)

    values = torch.tensor([0.90, 0.91, 0.92, 0.93, 0.94, 1.2])  # a short run: most rows a little below the start
    line = cut_line(values)
    assert "flags 5 of 6 rows (value <= 0.9400); that is most of them: the values barely separate yet" in line
    assert "most of them" not in cut_line(torch.tensor([0.5, 0.6, 1.0, 1.1, 1.2, 1.3]))


def test_a_class_the_cut_takes_whole_is_named():
    from lightning_lossval.report import flagged_rows
    from lightning_lossval.run_report import _whole_classes

    values = torch.tensor([0.2, 0.25, 0.3, 0.28, 1.1, 1.0, 1.2, 1.05, 0.99, 1.1, 1.15, 0.3])
    targets = ["rare"] * 3 + ["common"] * 9  # the common class's one low row is not its whole class
    flagged, measured = flagged_rows(values, {"visits": [2] * 12}), torch.ones(12, dtype=torch.bool)
    lines = _whole_classes(flagged, measured, {"target": targets})
    assert lines == [
        "the cut flags 3 of the 3 rows of class 'rare': a rare or hard class can land low as a whole without its "
        "rows being wrong; look at them before dropping any"
    ]
    assert _whole_classes(flagged, measured, {"target": [float(i) for i in range(12)]}) == []  # regression
