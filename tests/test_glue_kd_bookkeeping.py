"""benchmarks/glue_kd.py's bookkeeping: cached models and rows of another schedule are refused before any work, and
the table never pools seeds trained to different schedules."""
import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("glue_kd", Path(__file__).parents[1] / "benchmarks" / "glue_kd.py")
glue_kd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(glue_kd)


def _row(task, seed, epochs, teacher, student, ablation=None):
    students = {"full": {"dev": {"accuracy": student}}}
    if ablation is not None:
        students["no bounds"] = {"dev": {"accuracy": ablation}}
    row = {"task": task, "seed": seed, "metric": "accuracy", "teacher": {"dev": {"accuracy": teacher}},
           "students": students}
    if epochs is not None:
        row["student_epochs"] = epochs
    return row


def _line(table, task, epochs):
    return next(line for line in table.splitlines() if line.startswith(f"| {task} |") and f"| {epochs} |" in line)


def test_table_keeps_schedules_apart_and_pairs_ablations_with_their_own_seed():
    results = {"recipe": "demo", "rows": [
        _row("mrpc", 0, 3.0, 0.80, 0.70),
        _row("mrpc", 1, 6.0, 0.80, 0.78),
        _row("mrpc", 2, 6.0, 0.70, 0.66, ablation=0.60),  # only this seed ran the ablation
    ]}
    table = glue_kd.table(results)
    old, new = _line(table, "mrpc", "3").split("|"), _line(table, "mrpc", "6").split("|")
    assert [c.strip() for c in old[4:9]] == ["1", "3", "80.00", "70.00", "-10.00"]
    # seeds 1 and 2 only: medians 75.00 (teacher), 72.00 (student), deltas −2 and −4 → −3.00
    assert [c.strip() for c in new[4:9]] == ["2", "6", "75.00", "72.00", "-3.00 [-4.00, -2.00]"]
    assert new[9].strip() == "no bounds -10.00"  # 60 against seed 2's own teacher (70), not seed 1's (80)


def _summary(path, epochs):
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"settings": {"epochs": epochs}}))


def test_other_schedules_are_refused_before_any_work(tmp_path):
    _summary(tmp_path / "mrpc" / "seed0" / "teacher", 3.0)
    _summary(tmp_path / "mrpc" / "seed0" / "full", 6.0)
    empty = {"rows": []}
    glue_kd._refuse_other_schedules(tmp_path, empty, "mrpc", 0, 3.0, 6.0)  # the same schedule: reused
    with pytest.raises(SystemExit, match="student trained for 6 epochs, this run trains 12"):
        glue_kd._refuse_other_schedules(tmp_path, empty, "mrpc", 0, 3.0, 12.0)
    with pytest.raises(SystemExit, match="teacher trained for 3 epochs, this run trains 2"):
        glue_kd._refuse_other_schedules(tmp_path, empty, "mrpc", 0, 2.0, 6.0)
    # no cached models left, but a row it would replace: refused too
    rows = {"rows": [_row("mrpc", 1, 6.0, 0.8, 0.7)]}
    with pytest.raises(SystemExit, match="mrpc seed 1 with 6 student epochs, this run trains 12"):
        glue_kd._refuse_other_schedules(tmp_path, rows, "mrpc", 1, 3.0, 12.0)
    glue_kd._refuse_other_schedules(tmp_path, rows, "mrpc", 1, 3.0, 6.0)


def test_rows_from_before_epochs_were_recorded_get_them_from_their_student(tmp_path):
    _summary(tmp_path / "stsb" / "seed0" / "full", 8.0)
    results = {"rows": [_row("stsb", 0, None, 0.8, 0.78), _row("stsb", 1, None, 0.8, 0.78)],
               "student_epochs_scale": 2.0}
    glue_kd._fill_student_epochs(tmp_path, results)
    assert [r.get("student_epochs") for r in results["rows"]] == [8.0, None]  # seed 1's student is not kept
    assert "student_epochs_scale" not in results


def test_seeds_by_count_list_or_the_tables_default():
    assert glue_kd.task_seeds("mrpc") == [0, 1, 2]
    assert glue_kd.task_seeds("sst2") == [0]
    assert glue_kd.task_seeds("stsb", count=2) == [0, 1]
    assert glue_kd.task_seeds("stsb", listed=[2, 1, 2]) == [2, 1]


def test_each_recipe_trains_its_full_student_and_only_the_ablations_it_lacks():
    def trained(name, ablations=True):
        return {variant: (recipe.general_steps, recipe.unlabelled_passages, recipe.joined_fraction, recipe.length_steps,
                          use_general)
                for variant, recipe, use_general in glue_kd.student_variants(glue_kd.base_recipe(name, 1000), ablations)}

    paper, general, demo = trained("paper"), trained("general"), trained("demo")
    assert list(paper) == ["full", "no general KD", "no augmentation", "no length calibration"]
    assert paper["full"][:3] == (1000, 1600, 0.25) and paper["full"][4]
    assert paper["no general KD"][0] == 0 and not paper["no general KD"][4]
    assert paper["no augmentation"][1:3] == (0, 0.0) and paper["no augmentation"][4]
    assert paper["no length calibration"][3] == 0 < paper["full"][3]
    # the general recipe is the paper's without augmentation: its full student is the paper's "no augmentation"
    assert list(general) == ["full", "no general KD", "no length calibration"]
    assert general["full"] == paper["no augmentation"]
    assert list(demo) == ["full", "no length calibration"] and not demo["full"][4]
    assert list(trained("general", ablations=False)) == ["full"]
