"""The vendored flax files are run from tests/frontends/test_flax_suites.py, not collected here."""

collect_ignore = ["linen_test.py", "nnx_normalization_test.py"]
