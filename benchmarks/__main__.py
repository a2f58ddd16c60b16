"""`python -m benchmarks`: every speed benchmark in turn with its defaults (about 15 minutes on 2 cores)."""

from benchmarks import noop, predict, split, train, weights

if __name__ == "__main__":
    tables = [module.main([]) for module in (train, weights, predict, split, noop)]
    print("\n| section | measurement | result |\n|---|---|---|")
    for table in tables:
        print("\n".join(table.markdown().splitlines()[2:]))
