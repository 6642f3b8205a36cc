"""The test suite (a regular package: a wheel that ships a top-level `tests` package,
as torchstain 1.4.1 does, would otherwise shadow `tests.her2st_small` and friends)."""
