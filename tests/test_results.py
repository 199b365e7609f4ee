"""results.csv: one writer, one reader, and studies made before the rename (column ``method``) still read."""

import csv

from pitune_core.study.read.results import RESULT_FIELDS, read_results, result_row, write_results


def _run(approach, shots, seed, acc):
    return {"target": "rt_polarity", "approach": approach, "shots": shots, "seed": seed, "accuracy": acc,
            "score": acc, "metric": "accuracy", "sources": ["movie_sentiment", "amazon_sentiment"]}


def test_rows_round_trip(tmp_path):
    rows = [result_row(_run("pi-tuning", 4, 0, 0.712345)), result_row(_run("target-only", None, 1, 0.6))]
    write_results(tmp_path / "results.csv", rows)
    with open(tmp_path / "results.csv", newline="") as f:
        assert next(csv.reader(f)) == list(RESULT_FIELDS)
    back = read_results(tmp_path / "results.csv")
    assert [(r["approach"], r["shots"], r["seed"]) for r in back] == [("pi-tuning", 4, "0"), ("target-only", "full", "1")]
    assert back[0]["accuracy"] == 0.7123 and back[0]["sources"] == ["movie_sentiment", "amazon_sentiment"]


def test_legacy_method_column_reads_as_approach(tmp_path):
    p = tmp_path / "results.csv"
    p.write_text("target,method,shots,seed,accuracy,score,metric,sources\n"
                 "mnist,best-single,16,0,0.5,0.5,accuracy,a|b\nmnist,random-k,16,0,nan,,accuracy,\n")
    back = read_results(p)
    assert [r["approach"] for r in back] == ["best-single", "random-k"]
    assert back[1]["accuracy"] is None and back[1]["score"] is None and back[1]["sources"] == []
