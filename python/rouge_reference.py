"""Reference ROUGE F-measures from Python rouge_score 0.1.2 for every (reference, prediction)
pair of a CSV: one JSON line per prediction column and row, in order.

usage: rouge_reference.py CSV REFERENCE_COLUMN PREDICTION_COLUMN...
"""
import csv
import json
import sys

from rouge_score import rouge_scorer

TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


def main():
    path, ref_col, pred_cols = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    scorer = rouge_scorer.RougeScorer(TYPES, use_stemmer=True)
    for col in pred_cols:
        for i, row in enumerate(rows):
            s = scorer.score(row[ref_col], row[col])
            print(json.dumps({"model": col, "row": i, **{t: s[t].fmeasure for t in TYPES}}))


if __name__ == "__main__":
    main()
