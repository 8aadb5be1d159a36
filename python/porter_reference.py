"""NLTK Porter stems of every distinct rouge_score token in some CSV files' text columns.

Tokens come from rouge_score's tokenizer without stemming; each line is `token<TAB>stem`,
sorted by token. usage: porter_reference.py CSV...
"""
import csv
import sys

from nltk.stem import PorterStemmer
from rouge_score import tokenize


def main():
    tokens = set()
    for path in sys.argv[1:]:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for col in ("dialogue", "summary", "topic"):
                    if col in row:
                        tokens.update(tokenize.tokenize(row[col], None))
    stemmer = PorterStemmer()
    for t in sorted(tokens):
        print(f"{t}\t{stemmer.stem(t)}")


if __name__ == "__main__":
    main()
