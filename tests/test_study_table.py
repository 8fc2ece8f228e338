"""scripts/study_table.py on a stored study (docs/studies/fm10_methods, the 3-seed comparison docs/race.md cites):
the table docs/race.md shows comes from its jobs, paired by seed as the race's verdict pairs (tlexp.verdict.paired)."""

from __future__ import annotations

import sys

from scipy import stats

from conftest import REPO, read_json

STUDY = REPO / "docs" / "studies" / "fm10_methods"
FULL = "data.fraction=0.1 strategy=full trainer.max_epochs=3"


def test_the_paired_table_of_a_stored_study(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import study_table

    assert study_table.main([str(STUDY), "--paired", FULL, "--md", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    acc = {}
    for job in STUDY.glob("data.fraction=0.1,seed=*"):
        record = read_json(job / "result.json")
        acc.setdefault(record["strategy"], {})[record["seed"]] = record["test_acc"]
    low, high = stats.ttest_rel([acc["bitfit"][s] for s in (0, 1, 2)], [acc["full"][s] for s in (0, 1, 2)]).confidence_interval(0.95)
    paired = {line.split(" strategy=")[1].split()[0]: line.rsplit("|", 2)[-2].strip()
              for line in text.split("| setting - ")[1].splitlines()[2:]}
    assert paired["bitfit"].endswith(f"[{low:+.3f}, {high:+.3f}]")
    cited = (REPO / "docs" / "race.md").read_text()
    for method, cell in paired.items():  # each row as docs/race.md cites it
        assert f"| `{method}` |" in cited and f"| {cell} |" in cited, (method, cell)
