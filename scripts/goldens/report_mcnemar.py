"""Golden p-values of McNemar's exact test for evalfleet's report (coordinator/src/report/stats.rs).

For each discordant-pair table (b, c) it writes scipy's two-sided binomial test of min(b, c)
successes in b + c trials at 1/2 (what statsmodels' `mcnemar(exact=True)` computes too), and
checks it against the exact rational value from math.comb. Run once with a Python that has scipy
(scipy 1.17.1):

    python scripts/goldens/report_mcnemar.py > coordinator/tests/fixtures/report_mcnemar.json
"""
import json
import math
from fractions import Fraction

from scipy.stats import binomtest

TABLES = [(0, 0), (0, 1), (0, 5), (1, 6), (3, 4), (2, 9), (5, 15), (12, 25), (25, 12),
          (40, 60), (100, 130), (233, 199), (1500, 1600), (4000, 4190)]


def exact(b, c):
    n, k = b + c, min(b, c)
    if n == 0:
        return Fraction(1)
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2 ** n)
    return min(Fraction(1), 2 * tail)


rows = []
for b, c in TABLES:
    p = binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    assert math.isclose(p, float(exact(b, c)), rel_tol=1e-9, abs_tol=1e-300), (b, c, p)
    rows.append({"b": b, "c": c, "p": float(p)})
print(json.dumps(rows, indent=1))
