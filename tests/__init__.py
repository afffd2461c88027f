"""The test suite, a package so that its modules and tests/reference/ import as ``tests.*``."""
